"""Input records → examples ready to lay out: where they come from, and what each one says.

Inputs are a JSONL file, a JSON array file (the paper's released sample is one array in a file
named ``.jsonl``), a folder of ``*.jsonl`` files, an ``s3://`` URI of any of these, or the records
a user's ``--data_loader_path`` module yields. Every record is checked here, so a bad one stops the
run with ``file:line: field: reason`` before anything is published.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS
from ptr.errors import InputError, PtrError
from ptr.jsonl import iter_jsonl

QUERY_KEYS = ("q", "question", "query", "prompt", "instruction")
ANSWER_KEYS = ("a", "answer", "output", "response")
ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One document to encode: chat ``messages`` with a segment code per message, or raw ``text``."""

    where: str  # "file:line" (or the loader record), for error messages
    messages: list[dict] | None = None
    codes: list[int] | None = None
    text: str | None = None


class Drop(str):
    """A record skipped on purpose; the string is the reason counted in summary.json."""


# -- reading --------------------------------------------------------------------------------------


def _iter_json_array(path: Path) -> Iterator[tuple[int, object]]:
    """Items of a file holding one JSON array, each with the line it starts on."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not valid UTF-8 ({err.reason})") from None
    decoder = json.JSONDecoder()
    pos, line, counted = text.index("[") + 1, 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    def skip(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        pos = skip(pos)
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise InputError(path, line_at(err.pos), f"invalid JSON ({err.msg})") from None
        yield line_at(pos), item
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            if skip(pos + 1) != len(text):
                raise InputError(path, line_at(pos + 1), "extra data after the JSON array")
            return
        raise InputError(path, line_at(pos), "invalid JSON array (expected ',' or ']')")


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


def iter_file(path: Path) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for every record of a JSONL or JSON-array file."""
    if not path.is_file():
        raise InputError(path, None, "no such file")
    if _first_char(path) == "[":
        for line, item in _iter_json_array(path):
            if not isinstance(item, dict):
                raise InputError(path, line, f"expected a JSON object, got {type(item).__name__}")
            yield f"{path}:{line}", item
        return
    for line, record in iter_jsonl(path):
        yield f"{path}:{line}", record


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(".jsonl"))
        if not files:
            raise PtrError(f"--input {path}: a folder with no *.jsonl files")
        return files
    if not path.exists():
        raise PtrError(f"--input {path}: no such file or folder")
    return [path]


def iter_input(path: Path) -> Iterator[tuple[str, dict]]:
    for file in input_files(path):
        yield from iter_file(file)


def load_loader(loader_path) -> callable:
    """The ``load(path)`` function of a user's data loader file."""
    loader_path = Path(loader_path)
    if not loader_path.is_file():
        raise PtrError(f"--data_loader_path {loader_path}: no such file")
    spec = importlib.util.spec_from_file_location(f"ptr_user_loader_{loader_path.stem}", loader_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report it as their error, not a crash of ours
        raise PtrError(
            f"--data_loader_path {loader_path}: importing it failed: {type(err).__name__}: {err}"
        ) from None
    load = getattr(module, "load", None)
    if not callable(load):
        raise PtrError(
            f"--data_loader_path {loader_path}: defines no function load(path) -> iterable of dicts"
        )
    return load


def iter_loader(loader_path, input_path: Path | None) -> Iterator[tuple[str, dict]]:
    load = load_loader(loader_path)
    try:
        records = load(None if input_path is None else str(input_path))
        iterator = iter(records)
    except TypeError as err:
        raise PtrError(
            f"--data_loader_path {loader_path}: load() must return an iterable of dicts ({err})"
        ) from None
    except Exception as err:
        raise PtrError(
            f"--data_loader_path {loader_path}: load() raised {type(err).__name__}: {err}"
        ) from None
    index = 0
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except Exception as err:
            raise PtrError(
                f"--data_loader_path {loader_path}: load() raised {type(err).__name__} after "
                f"{index} records: {err}"
            ) from None
        index += 1
        where = f"{loader_path} (load() record {index})"
        if not isinstance(record, dict):
            raise PtrError(f"{where}: expected a dict, got {type(record).__name__}")
        yield where, record


# -- records → examples ---------------------------------------------------------------------------


def _bad(where: str, reason: str, field: str | None = None) -> InputError:
    path, _, line = where.rpartition(":")
    if path and line.isdigit():
        return InputError(path, int(line), reason, field)
    return InputError(where, None, reason, field)


def _text(value, where: str, field: str):
    """A stripped string, or None for an empty one (the record is then dropped, not an error)."""
    if isinstance(value, dict):
        if "text" not in value:
            raise _bad(where, "expected a string or an object with 'text'", field)
        value, field = value["text"], f"{field}.text"
    if not isinstance(value, str):
        raise _bad(where, f"must be a string, got {type(value).__name__}", field)
    return value.strip() or None


def _kept(record: dict, where: str) -> bool:
    kept = record.get("kept", True)
    if not isinstance(kept, bool):
        raise _bad(where, f"must be true or false, got {kept!r}", "kept")
    return kept


def _pick(record: dict, keys: tuple[str, ...], where: str, what: str):
    for key in keys:
        if key in record:
            return key, record[key]
    raise _bad(where, f"needs {what}: one of the fields {', '.join(keys)}")


def _ptr_parts(record: dict, where: str):
    """``(query, [thought texts], answer)``, each stripped (None where empty)."""
    if "output1" in record:  # the paper's released sample: output1..outputN, the last is the answer
        query = _text(_pick(record, QUERY_KEYS, where, "a query")[1], where, "question")
        outputs, n = [], 1
        while f"output{n}" in record:
            outputs.append(_text(record[f"output{n}"], where, f"output{n}"))
            n += 1
        if len(outputs) < 2:
            raise _bad(where, "needs output1 (the thought) and output2 (the final answer)", "output2")
        return query, outputs[:-1], outputs[-1]
    if "thoughts" not in record and "answer" not in record:
        raise _bad(
            where,
            "needs thoughts and answer (as `ptr thoughts` writes) or output1..outputN (the paper's sample)",
        )
    for key in ("thoughts", "answer"):
        if key not in record:
            raise _bad(where, "missing required field", key)
    key, query = _pick(record, ("query", "question"), where, "a query")
    query = _text(query, where, key)
    thoughts = record["thoughts"]
    if not isinstance(thoughts, list):
        raise _bad(where, f"must be a list, got {type(thoughts).__name__}", "thoughts")
    rounds = [t.get("round") if isinstance(t, dict) else None for t in thoughts]
    if all(isinstance(r, int) and not isinstance(r, bool) for r in rounds) and rounds:
        if len(set(rounds)) != len(rounds):
            raise _bad(where, f"repeated rounds {rounds}", "thoughts")
        thoughts = [t for _, t in sorted(zip(rounds, thoughts, strict=True), key=lambda p: p[0])]
    texts = [_text(t, where, f"thoughts[{i}]") for i, t in enumerate(thoughts)]
    return query, texts, _text(record["answer"], where, "answer")


def ptr_example(record: dict, where: str, refine_prompt: str) -> Example | Drop:
    """query; thought 1; refine; thought 2; …; refine; final answer — codes t for thought t."""
    if not _kept(record, where):
        return Drop("not_kept")
    query, thoughts, answer = _ptr_parts(record, where)
    if len(thoughts) > MAX_THOUGHTS:
        raise _bad(
            where, f"{len(thoughts)} thoughts; at most {MAX_THOUGHTS} fit the segment codes", "thoughts"
        )
    if query is None or answer is None or any(t is None for t in thoughts):
        return Drop("empty_text")
    messages, codes = [{"role": "user", "content": query}], [IGNORE]
    for t, thought in enumerate(thoughts, 1):
        messages += [{"role": "assistant", "content": thought}, {"role": "user", "content": refine_prompt}]
        codes += [t, IGNORE]
    messages.append({"role": "assistant", "content": answer})
    codes.append(ANSWER)
    return Example(where, messages=messages, codes=codes)


def qa_example(record: dict, where: str) -> Example | Drop:
    """``{q, a}`` (or question/answer, prompt/response, …) or chat ``messages``: loss on assistant turns."""
    if not _kept(record, where):
        return Drop("not_kept")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise _bad(where, "must be a non-empty list of {role, content}", "messages")
        out = []
        for i, msg in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(msg, dict) or msg.get("role") not in ROLES:
                raise _bad(where, f"needs a role, one of {', '.join(ROLES)}", f"{field}.role")
            if not isinstance(msg.get("content"), str):
                raise _bad(where, "must be a string", f"{field}.content")
            out.append({"role": msg["role"], "content": msg["content"].strip()})
        if not any(m["role"] == "assistant" for m in out):
            raise _bad(where, "has no assistant message to learn from", "messages")
        if any(not m["content"] for m in out if m["role"] != "system"):
            return Drop("empty_text")
        codes = [ANSWER if m["role"] == "assistant" else IGNORE for m in out]
        return Example(where, messages=out, codes=codes)
    qkey, query = _pick(record, QUERY_KEYS, where, "a question")
    akey, answer = _pick(record, ANSWER_KEYS, where, "an answer")
    query, answer = _text(query, where, qkey), _text(answer, where, akey)
    if query is None or answer is None:
        return Drop("empty_text")
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    codes = [IGNORE, ANSWER]
    if record.get("system") is not None:
        system = _text(record["system"], where, "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
            codes.insert(0, IGNORE)
    return Example(where, messages=messages, codes=codes)


def pretrain_example(record: dict, where: str) -> Example | Drop:
    if "text" not in record:
        raise _bad(where, "missing required field", "text")
    text = record["text"]
    if not isinstance(text, str):
        raise _bad(where, f"must be a string, got {type(text).__name__}", "text")
    return Example(where, text=text) if text.strip() else Drop("empty_text")


def to_example(record: dict, where: str, encode_type: str, refine_prompt: str) -> Example | Drop:
    if encode_type == "ptr":
        return ptr_example(record, where, refine_prompt)
    if encode_type == "qa":
        return qa_example(record, where)
    return pretrain_example(record, where)
