"""Where queries come from: JSONL or JSON files, ``s3://`` objects, a Hugging Face dataset, or the
project's own built-in set. Each source yields :class:`RawQuery` items located by file and line."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ptr import storage
from ptr.errors import InputError, PtrError
from ptr.jsonl import iter_jsonl

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).with_name("builtin_queries.jsonl")
# Fields tried, in order, when no field is named.
TEXT_FIELDS = ("query", "question", "instruction", "prompt", "messages")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RawQuery:
    text: str
    source: str  # "name:line" (or "name:item" for JSON arrays and datasets)


def query_text(record: dict, field: str | None = None) -> tuple[str, str]:
    """``(field used, text)`` of one record; raises ValueError naming the field when it is unusable.

    ``instruction`` records with a non-empty ``input`` (the Alpaca layout) join the two; chat
    ``messages`` give their first user turn.
    """
    if field is None:
        field = next((f for f in TEXT_FIELDS if f in record), None)
        if field is None:
            raise ValueError(f"needs one of the fields {', '.join(TEXT_FIELDS)}")
    if field not in record:
        raise ValueError(f"{field}: missing required field")
    value = record[field]
    if field == "messages":
        if not isinstance(value, list):
            raise ValueError("messages: expected a list of chat messages")
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
                raise ValueError(f"messages: messages[{i}]: a message needs a string 'content'")
        user = next((m["content"] for m in value if m.get("role") == "user"), None)
        if user is None:
            raise ValueError("messages: no user message")
        return field, user
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    extra = record.get("input")
    if field == "instruction" and isinstance(extra, str) and extra.strip():
        value = f"{value.rstrip()}\n\n{extra.strip()}"
    return field, value


# (where it is: file or dataset name, 1-based line or None, short tag for `source`, the record)
Located = tuple[str, int | None, str, dict]


def text_at(record: dict, path, line: int | None, field: str | None = None, tag: str = "") -> str:
    """:func:`query_text` with errors as :class:`InputError` naming the file, line and field."""
    try:
        return query_text(record, field)[1]
    except ValueError as err:
        fld, reason = None, str(err)
        if ": " in reason and reason.split(": ", 1)[0] in (*TEXT_FIELDS, field):
            fld, reason = reason.split(": ", 1)
        if line is None:  # no line to name: say which item, then the field
            reason, fld = f"{tag}: {fld + ': ' if fld else ''}{reason}", None
        raise InputError(path, line, reason, field=fld) from None


def _records_of_file(path: Path) -> Iterator[Located]:
    """Records of a .jsonl, .jsonl.gz or .json (array) file."""
    name = path.name
    if name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(path, getattr(err, "lineno", None), f"invalid JSON ({err})") from None
        if not isinstance(data, list):
            raise InputError(path, None, "a .json input must hold one array of objects")
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise InputError(path, None, f"item {i}: expected a JSON object")
            yield str(path), None, f"item {i}", record
        return
    if name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise InputError(path, lineno, f"invalid JSON ({err.msg})") from None
                    if not isinstance(record, dict):
                        raise InputError(path, lineno, "expected a JSON object")
                    yield str(path), lineno, str(lineno), record
        return
    for lineno, record in iter_jsonl(path):
        yield str(path), lineno, str(lineno), record


def _records_of_dataset(name: str, split: str) -> Iterator[Located]:
    try:
        import datasets
    except ImportError:
        raise PtrError(f"reading the Hugging Face dataset {name!r} needs the `datasets` package") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # hub unreachable, unknown name or split: all the user's to fix
        raise PtrError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {err}") from None
    for i, row in enumerate(rows):
        yield f"{name}[{split}]", None, f"row {i}", dict(row)


def _locate(spec: str) -> tuple[str, Path | str]:
    """``("file", path)`` or ``("dataset", name)`` for an input spec."""
    if spec == BUILTIN:
        return "file", BUILTIN_PATH
    if spec.startswith("s3://"):
        return "file", storage.fetch(spec)
    if spec.startswith("hf:"):
        return "dataset", spec[3:]
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            raise PtrError(f"{spec}: is a directory, expected a JSONL or JSON file")
        return "file", path
    if _HUB_ID.match(spec) and not spec.endswith((".jsonl", ".json", ".gz")):
        return "dataset", spec
    raise InputError(spec, None, "no such file")


def read_queries(spec: str, *, field: str | None = None, split: str = "train") -> list[RawQuery]:
    """All queries of one input, validated before anything is written.

    ``spec`` is ``builtin``, a local file, ``s3://bucket/key``, or a dataset (``hf:name`` or a hub id
    such as ``tatsu-lab/alpaca``). Records whose field is missing or of the wrong type raise
    :class:`InputError` with the file and line; empty texts are returned as they are (the queries
    stage counts and drops them).
    """
    kind, where = _locate(spec)
    records = _records_of_file(Path(where)) if kind == "file" else _records_of_dataset(str(where), split)
    label = "builtin" if spec == BUILTIN else os.path.basename(str(spec).rstrip("/")) or str(spec)
    out = []
    for path, line, tag, record in records:
        out.append(RawQuery(text_at(record, path, line, field, tag), f"{label}:{tag}"))
    return out
