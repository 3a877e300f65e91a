"""The one reader of input records, and the one list of fields that hold a query.

Every stage that takes user data (queries, generate's prompt files, encode, the thought-data import)
reads it here, so they accept the same inputs and name a bad record the same way:

* a JSONL file, plain or ``.gz`` (records located as ``file:line``);
* a file holding one JSON array, whatever its name (the paper's released sample is an array in a
  file named ``.jsonl``; items located as ``file[index]``);
* a folder of ``*.jsonl`` / ``*.jsonl.gz`` files, read in name order (``.json`` files beside them are
  summaries, not records);
* ``s3://`` — an object or a prefix of any of these, downloaded first;
* ``hf:name`` (or a bare ``org/name`` that is not a local path) — a Hugging Face dataset split
  (records located as ``hf:name:split[row]``).

Errors are :class:`~ptr.errors.InputError`\\ s built from a record's :class:`Where`, so they always say
``file:line: field: reason``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ptr import storage
from ptr.errors import InputError, PtrError

try:  # a dependency of our dependencies; about 3x faster on the lines stages read by the million
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = None

# Fields that hold a record's query, tried in this order when no field is named. ``messages`` gives
# its first user turn; ``instruction`` is joined with a non-empty ``input`` (the Alpaca layout).
QUERY_FIELDS = ("query", "question", "instruction", "prompt", "q", "messages")
# Suffixes read from a folder.
RECORD_FILES = (".jsonl", ".jsonl.gz")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True, slots=True)
class Where:
    """Where a record is: a file and 1-based line, a file and array index, or a label alone."""

    path: str
    line: int | None = None
    index: int | None = None

    @property
    def position(self) -> str:
        """``:line``, ``[index]`` or nothing: what follows the file name."""
        if self.line is not None:
            return f":{self.line}"
        return "" if self.index is None else f"[{self.index}]"

    def __str__(self) -> str:
        return self.path + self.position

    def error(self, reason: str, field: str | None = None) -> InputError:
        return InputError(self.path, self.line, reason, field, index=self.index)


# -- JSON lines -----------------------------------------------------------------------------------


def loads(data: str | bytes):
    """``json.loads``, through orjson when it is there. orjson is stricter (NaN, integers past 64 bits):
    what it refuses, the standard parser decides, so results and error messages stay the standard ones."""
    if _fast_loads is not None:
        try:
            return _fast_loads(data)
        except ValueError:
            pass
    if isinstance(data, bytes):
        data = data.decode("utf-8")  # strict: a caller that reads bytes reports UnicodeDecodeError
    return json.loads(data)


def _parse(data: bytes, name: str, line: int | None):
    """One JSON value from bytes; errors name the line (the value's own, or the one inside it)."""
    try:
        return loads(data)
    except UnicodeDecodeError as err:
        at = line or data.count(b"\n", 0, err.start) + 1
        raise InputError(name, at, f"not valid UTF-8 ({err.reason})") from None
    except json.JSONDecodeError as err:
        at, col = (line, err.colno) if line else (err.lineno, err.colno)
        raise InputError(name, at, f"invalid JSON ({err.msg} at column {col})") from None


def _jsonl(f: IO[bytes], name: str) -> Iterator[tuple[int, dict]]:
    # Bytes, not text: a decoding error is found on its own line, and orjson parses bytes directly.
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        record = _parse(line, name, lineno)
        if not isinstance(record, dict):
            raise InputError(name, lineno, f"expected a JSON object, got {type(record).__name__}")
        yield lineno, record


@contextlib.contextmanager
def _readable(name: str):
    """A file that cannot be read (a broken ``.gz``) is the user's to fix: say so in one line."""
    try:
        yield
    except (OSError, EOFError) as err:
        raise InputError(name, None, f"cannot read: {err}") from None


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def iter_jsonl(
    path, *, required: tuple[str, ...] = (), any_of: tuple[str, ...] = (), name: str | None = None
) -> Iterator[tuple[int, dict]]:
    """``(line, record)`` for each line of a JSONL file (``.gz`` too), every line a JSON object.

    ``required`` fields must be present on every line; at least one of ``any_of`` must be present.
    Blank lines are skipped. ``name`` is what errors call the file (default: its path).
    """
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise InputError(name, None, "no such file")
    with _open(path) as f, _readable(name):
        for lineno, record in _jsonl(f, name):
            for key in required:
                if key not in record:
                    raise InputError(name, lineno, "missing required field", field=key)
            if any_of and not any(k in record for k in any_of):
                raise InputError(name, lineno, f"needs one of the fields {', '.join(any_of)}")
            yield lineno, record


def read_jsonl(path, *, required: tuple[str, ...] = (), any_of: tuple[str, ...] = ()) -> list[dict]:
    """:func:`iter_jsonl`'s records, as a list."""
    return [record for _, record in iter_jsonl(path, required=required, any_of=any_of)]


# -- files, folders, datasets ---------------------------------------------------------------------


def _first_char(path: Path) -> bytes:
    try:
        with _open(path) as f:
            while chunk := f.read(4096):
                if stripped := chunk.lstrip():
                    return stripped[:1]
    except OSError:
        return b""  # a bad .gz: the line reader says so
    return b""


def _json_array(path: Path, name: str) -> Iterator[tuple[Where, dict]]:
    with _open(path) as f, _readable(name):
        items = _parse(f.read(), name, None)
    if not isinstance(items, list):
        raise InputError(name, None, f"expected a JSON array or JSON lines, got a {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(name, None, f"expected a JSON object, got {type(item).__name__}", index=index)
        yield Where(name, index=index), item


def iter_file(path, name: str | None = None) -> Iterator[tuple[Where, dict]]:
    """Records of one JSONL or JSON-array file (``.gz`` either way), told apart by the first character.
    ``name`` is what errors call the file (the ``s3://`` URI it was downloaded from)."""
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise InputError(name, None, "no such file")
    if _first_char(path) == b"[":
        yield from _json_array(path, name)
        return
    for line, record in iter_jsonl(path, name=name):
        yield Where(name, line), record


def _dataset(name: str, split: str) -> Iterator[tuple[Where, dict]]:
    try:
        import datasets  # heavy (pyarrow, pandas): only for hf: inputs
    except ImportError:
        raise PtrError(f"reading the Hugging Face dataset {name!r} needs the `datasets` package") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # hub unreachable, unknown name or split: all the user's to fix
        raise PtrError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): {err}") from None
    label = f"hf:{name}:{split}"
    for index, row in enumerate(rows):
        yield Where(label, index=index), dict(row)


def files(path) -> list[Path]:
    """The record files of a local file or folder; a missing one or an empty folder is an error."""
    path = Path(path)
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.is_file() and p.name.endswith(RECORD_FILES) and p.name[0] != "."
        )
        if not found:
            raise PtrError(f"{path}: a folder with no {' or '.join('*' + s for s in RECORD_FILES)} files")
        return found
    if not path.exists():
        raise InputError(path, None, "no such file or folder")
    return [path]


def locate(spec) -> list[tuple[Path, str]] | str:
    """``[(local file, the name errors give it)]`` for a file, folder or ``s3://`` input (downloaded
    first), or ``"hf:name"`` for a dataset. A missing input fails here, before any work starts."""
    spec = str(spec)
    if spec.startswith("hf:"):
        return spec
    if storage.is_remote(spec):
        local = storage.fetch(spec)
        if local.is_dir():
            prefix = spec.rstrip("/")
            return [(f, f"{prefix}/{f.relative_to(local).as_posix()}") for f in files(local)]
        return [(local, spec)]
    path = Path(spec).expanduser()
    if not path.exists() and _HUB_ID.match(spec) and not spec.endswith((".json", *RECORD_FILES)):
        return f"hf:{spec}"
    return [(f, str(f)) for f in files(path)]


def read_records(spec, *, split: str = "train") -> Iterator[tuple[Where, dict]]:
    """``(where, record)`` for every record of an input (see the module docstring for what it may be).
    The input is found (and downloaded) on the call, so a missing one fails before any work starts."""
    found = locate(spec)
    if isinstance(found, str):
        return _dataset(found[3:], split)
    return (item for file, name in found for item in iter_file(file, name))


# -- what a record says ---------------------------------------------------------------------------


def query_text(record: dict, where: Where, field: str | None = None) -> tuple[str, str]:
    """``(field used, text)`` of a record's query, the text as it is (callers strip). With no
    ``field`` the first of :data:`QUERY_FIELDS` present is used."""
    if field is None:
        field = next((f for f in QUERY_FIELDS if f in record), None)
        if field is None:
            raise where.error(f"needs a query: one of the fields {', '.join(QUERY_FIELDS)}")
    if field not in record:
        raise where.error("missing required field", field)
    value = record[field]
    if field == "messages":
        if not isinstance(value, list):
            raise where.error("expected a list of chat messages", field)
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
                raise where.error("a message needs a string 'content'", f"messages[{i}]")
        user = next((m["content"] for m in value if m.get("role") == "user"), None)
        if user is None:
            raise where.error("no user message", field)
        return field, user
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type(value).__name__}", field)
    extra = record.get("input")
    if field == "instruction" and isinstance(extra, str) and extra.strip():
        value = f"{value.rstrip()}\n\n{extra.strip()}"
    return field, value


def is_paper_record(record: dict) -> bool:
    """The paper's released thought data: ``{question, output1, …, outputN}``."""
    return "output1" in record


def paper_outputs(record: dict, where: Where) -> list[str]:
    """``[output1, …, outputN]`` of a paper record: the thoughts, then the final answer (the last)."""
    outputs, n = [], 1
    while (key := f"output{n}") in record:
        value = record[key]
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {type(value).__name__}", key)
        outputs.append(value)
        n += 1
    if len(outputs) < 2:
        raise where.error("needs output1 (the thought) and output2 (the final answer)", "output2")
    return outputs
