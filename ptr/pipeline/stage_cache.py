"""Finished stages reused on one machine: a cache keyed by everything a stage's output depends on.

A stage's key is the SHA-256 of its name, its stage config with paths left out, the content of its
inputs (a file or folder's digest; a model by the digest of its files), the source code it runs
(the packages named in :data:`STAGE_CODE`) and :data:`FORMAT`. A finished stage's outputs are kept
under ``<PTR_LOCAL_DIR or .ptr>/stage-cache/<stage>/<key>/`` with the value the stage returned
(``record.json``); a later stage with the same key gets them linked into its artifact folder
instead of running. An entry is built under a temporary name and renamed into place when complete
(``ptr.cache.cached_dir``), so a stage that was stopped leaves nothing behind and simply runs again:
a long sequence of pipeline runs can be stopped and continued, and a rerun after it finished takes
minutes. The base model's evaluation is one such stage: every run that evaluates the same base model
on the same tasks with the same settings shares one evaluation.

Only runs on one machine use it (``run.runtime: local``); ``PTR_STAGE_CACHE=off`` turns it off, and
deleting the folder (or one stage's folder) forgets it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from ptr.cache import cached_dir
from ptr.files import write_json
from ptr.tracking import local_dir

FORMAT = 1
RECORD = "record.json"
_PTR = Path(__file__).resolve().parents[1]  # the ptr package's source folder
# The source a stage's output depends on, relative to the ptr package.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "thoughts": ("data", "inference", "models", "records.py", "prompts.py", "chat.py"),
    "encode": ("encode", "records.py", "chat.py", "prompts.py", "objective.py", "models"),
    "train": ("train", "encode/shards.py", "objective.py", "models"),
    "evaluate": ("evaluate", "inference", "serve", "models", "prompts.py", "chat.py"),
}
_MEMO = "digests.json"  # file digests by (path, size, mtime): a model is hashed once, not per run


def enabled(runtime: str) -> bool:
    return runtime == "local" and os.environ.get("PTR_STAGE_CACHE", "").strip().lower() not in (
        "off",
        "0",
        "false",
        "no",
    )


def root() -> Path:
    return local_dir() / "stage-cache"


# -- digests --------------------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


class _Memo:
    """File digests remembered across processes by path, size and modification time."""

    def __init__(self):
        self.path = root() / _MEMO
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in self.known:
            h = hashlib.sha256()
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self.known[key] = h.hexdigest()
            self.changed = True
        return self.known[key]

    def save(self) -> None:
        if self.changed:
            with contextlib.suppress(OSError):
                write_json(self.path, self.known)


def digest(paths: Iterable[str | Path]) -> str:
    """The content digest of files and folders (names relative to each, and every byte)."""
    memo = _Memo()
    h = hashlib.sha256()
    for path in map(Path, paths):
        if not path.exists():
            h.update(f"missing:{path.name}\n".encode())
            continue
        for file in _files(path):
            name = file.relative_to(path).as_posix() if file != path else file.name
            h.update(f"{name}:{memo.digest(file)}\n".encode())
    memo.save()
    return h.hexdigest()


def code_digest(stage: str) -> str:
    return digest(_PTR / part for part in STAGE_CODE[stage])


def stage_key(stage: str, config: dict, inputs: dict[str, str]) -> str:
    """``config``: the stage's settings, JSON-able, without paths that change from run to run;
    ``inputs``: name → content digest of what the stage reads."""
    text = json.dumps(
        {"format": FORMAT, "stage": stage, "code": code_digest(stage), "config": config, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- entries --------------------------------------------------------------------------------------


def _link_tree(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """``source``'s files into ``target`` as hard links (copies across file systems)."""

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        source, target, copy_function=link, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip, RECORD)
    )


class Stage:
    """One stage's place in the cache: :meth:`reuse` before running it, :meth:`keep` after."""

    def __init__(self, stage: str, key: str, *, active: bool = True):
        self.stage, self.key, self.active = stage, key, active
        self.entry = root() / stage / key

    def reuse(self, out_dir: str | Path) -> dict | None:
        """On a hit: the stored outputs linked into ``out_dir`` and the value the stage returned."""
        if not self.active or not (self.entry / RECORD).is_file():
            return None
        _link_tree(self.entry, Path(out_dir))
        record = json.loads((self.entry / RECORD).read_text())
        print(f"ptr {self.stage}: reused (stage cache {self.entry})", file=sys.stderr, flush=True)
        return record

    def keep(self, out_dir: str | Path, record: dict, *, skip: tuple[str, ...] = ()) -> None:
        """Store a finished stage's outputs (``skip``: names left out, such as checkpoints)."""
        if not self.active:
            return

        def build(tmp: Path) -> None:
            _link_tree(Path(out_dir), tmp, skip)
            write_json(tmp / RECORD, record)

        self.entry.parent.mkdir(parents=True, exist_ok=True)
        cached_dir(self.key, build, root=self.entry.parent)
