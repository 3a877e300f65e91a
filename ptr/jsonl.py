"""JSONL outputs shared by every stage: written whole (through :mod:`ptr.files`), or appended as
whole lines that a crash cannot interleave, with a torn last line repaired on resume.

Reading records is :mod:`ptr.records`' job (one reader for every stage); a single JSON file is
written by :func:`ptr.files.write_json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ptr.errors import InputError
from ptr.files import atomic_path


def write_jsonl(path, records: Iterable[dict]) -> int:
    """Write records atomically; returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path, records: list[dict]) -> None:
    """Append a batch as one write followed by fsync, so a crash leaves whole lines or a torn last line
    that :func:`repair_jsonl` removes; never an interleaved record."""
    if not records:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_jsonl(path) -> int:
    """Drop a torn (unterminated or unparsable) last line left by a crash. Returns bytes removed.

    Only the last line may be torn: a bad line in the middle is corruption and raises InputError.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except ValueError:
            keep = last_start
    body = data[:keep]
    for lineno, line in enumerate(body.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                raise InputError(path, lineno, "corrupt line in the middle of the file") from None
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - keep
