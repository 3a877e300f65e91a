"""Input records → examples ready to lay out: what each record says.

Records come from :func:`ptr.records.read_records` (files, folders, ``s3://``, ``hf:``) or from a user's
``--data_loader_path`` module. Every record is checked here, so a bad one stops the run with
``file:line: field: reason`` before anything is published.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS
from ptr.errors import PtrError
from ptr.prompts import REFINE_PROMPT
from ptr.records import Where, is_paper_record, paper_outputs, query_text

ANSWER_KEYS = ("a", "answer", "output", "response")
ROLES = ("system", "user", "assistant")


@dataclass(slots=True)
class Example:
    """One document to encode: chat ``messages`` with a segment code per message, or raw ``text``.

    ``open_ends`` are the messages that were cut (a thought generated up to its token limit): their
    end-of-turn token gets no weight, so the model never learns to stop where a cut happened."""

    where: Where  # for error messages
    messages: list[dict] | None = None
    codes: list[int] | None = None
    text: str | None = None
    open_ends: tuple[int, ...] = ()


class Drop(str):
    """A record skipped on purpose; the string is the reason counted in summary.json."""


# -- reading (a user's loader; files are ptr.records' job) -----------------------------------


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


def iter_loader(loader_path, input_path: str | None) -> Iterator[tuple[Where, dict]]:
    load = load_loader(loader_path)
    try:
        records = load(input_path)
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
        where = Where(f"{loader_path} (load() record {index})")
        if not isinstance(record, dict):
            raise where.error(f"expected a dict, got {type(record).__name__}")
        yield where, record


# -- records → examples ---------------------------------------------------------------------------


def _text(value, where: Where, field: str):
    """A stripped string, or None for an empty one (the record is then dropped, not an error)."""
    return _turn(value, where, field)[0]


def _turn(value, where: Where, field: str) -> tuple[str | None, bool]:
    """``(stripped text or None, cut)``: a string, or an object ``{text, finish_reason}`` as ``ptr
    thoughts`` writes it; ``cut`` when generation stopped at its token limit (finish_reason length)."""
    cut = False
    if isinstance(value, dict):
        if "text" not in value:
            raise where.error("expected a string or an object with 'text'", field)
        reason = value.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise where.error(f"must be a string, got {type(reason).__name__}", f"{field}.finish_reason")
        value, field, cut = value["text"], f"{field}.text", reason == "length"
    if not isinstance(value, str):
        raise where.error(f"must be a string, got {type(value).__name__}", field)
    return value.strip() or None, cut


def _kept(record: dict, where: Where) -> bool:
    kept = record.get("kept", True)
    if not isinstance(kept, bool):
        raise where.error(f"must be true or false, got {kept!r}", "kept")
    return kept


def _pick(record: dict, keys: tuple[str, ...], where: Where, what: str):
    for key in keys:
        if key in record:
            return key, record[key]
    raise where.error(f"needs {what}: one of the fields {', '.join(keys)}")


def _query(record: dict, where: Where) -> str | None:
    return query_text(record, where)[1].strip() or None


class RefinePrompt:
    """The refine turn every PTR example is laid out with: ``--refine_prompt`` when given, else the one
    the records name (``ptr thoughts`` writes the prompt its weak models answered), else the paper's.
    One corpus has one: a record that names another stops the run at ``file:line: refine_prompt``."""

    def __init__(self, explicit: str | None = None):
        self.value = explicit
        self.source = "--refine_prompt" if explicit is not None else ""

    def for_record(self, record: dict, where: Where) -> str:
        named = record.get("refine_prompt")
        if named is None:
            if self.value is None:
                self.value, self.source = REFINE_PROMPT, f"the default, as {where} names none"
            return self.value
        if not isinstance(named, str) or not named.strip():
            raise where.error("must be a non-empty string", "refine_prompt")
        if self.value is None:
            self.value, self.source = named, f"as {where} names it"
        elif named != self.value:
            raise where.error(
                f"{named!r} differs from the prompt this corpus is laid out with, {self.value!r} "
                f"({self.source}); encode records of one refine prompt together",
                "refine_prompt",
            )
        return named


def _ptr_parts(record: dict, where: Where):
    """``(query, [(thought text, cut)], (answer text, cut))``, texts stripped (None where empty)."""
    if is_paper_record(record):  # the paper's released sample: output1..outputN, the last is the answer
        outputs = [(text.strip() or None, False) for text in paper_outputs(record, where)]
        return _query(record, where), outputs[:-1], outputs[-1]
    if "thoughts" not in record and "answer" not in record:
        raise where.error(
            "needs thoughts and answer (as `ptr thoughts` writes) or output1..outputN (the paper's sample)",
        )
    for key in ("thoughts", "answer"):
        if key not in record:
            raise where.error("missing required field", key)
    query = _query(record, where)
    thoughts = record["thoughts"]
    if not isinstance(thoughts, list):
        raise where.error(f"must be a list, got {type(thoughts).__name__}", "thoughts")
    rounds = [t.get("round") if isinstance(t, dict) else None for t in thoughts]
    if all(isinstance(r, int) and not isinstance(r, bool) for r in rounds) and rounds:
        if len(set(rounds)) != len(rounds):
            raise where.error(f"repeated rounds {rounds}", "thoughts")
        thoughts = [t for _, t in sorted(zip(rounds, thoughts, strict=True), key=lambda p: p[0])]
    turns = [_turn(t, where, f"thoughts[{i}]") for i, t in enumerate(thoughts)]
    return query, turns, _turn(record["answer"], where, "answer")


def ptr_example(record: dict, where: Where, refine: RefinePrompt) -> Example | Drop:
    """query; thought 1; refine; thought 2; …; refine; final answer — codes t for thought t.

    A cut thought keeps its place but its end-of-turn gets no weight; a cut final answer drops the
    record (``answer_truncated``): the model must never learn to end an answer where a limit cut it."""
    if not _kept(record, where):
        return Drop("not_kept")
    query, thoughts, (answer, answer_cut) = _ptr_parts(record, where)
    if len(thoughts) > MAX_THOUGHTS:
        raise where.error(
            f"{len(thoughts)} thoughts; at most {MAX_THOUGHTS} fit the segment codes", "thoughts"
        )
    if query is None or answer is None or any(text is None for text, _ in thoughts):
        return Drop("empty_text")
    if answer_cut:
        return Drop("answer_truncated")
    refine_prompt = refine.for_record(record, where)
    messages, codes, open_ends = [{"role": "user", "content": query}], [IGNORE], []
    for t, (thought, cut) in enumerate(thoughts, 1):
        if cut:
            open_ends.append(len(messages))
        messages += [{"role": "assistant", "content": thought}, {"role": "user", "content": refine_prompt}]
        codes += [t, IGNORE]
    messages.append({"role": "assistant", "content": answer})
    codes.append(ANSWER)
    return Example(where, messages=messages, codes=codes, open_ends=tuple(open_ends))


def qa_example(record: dict, where: Where) -> Example | Drop:
    """``{q, a}`` (or question/answer, prompt/response, …) or chat ``messages``: loss on assistant turns."""
    if not _kept(record, where):
        return Drop("not_kept")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise where.error("must be a non-empty list of {role, content}", "messages")
        out = []
        for i, msg in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(msg, dict) or msg.get("role") not in ROLES:
                raise where.error(f"needs a role, one of {', '.join(ROLES)}", f"{field}.role")
            if not isinstance(msg.get("content"), str):
                raise where.error("must be a string", f"{field}.content")
            out.append({"role": msg["role"], "content": msg["content"].strip()})
        if not any(m["role"] == "assistant" for m in out):
            raise where.error("has no assistant message to learn from", "messages")
        if any(not m["content"] for m in out if m["role"] != "system"):
            return Drop("empty_text")
        codes = [ANSWER if m["role"] == "assistant" else IGNORE for m in out]
        return Example(where, messages=out, codes=codes)
    query = _query(record, where)
    akey, answer = _pick(record, ANSWER_KEYS, where, "an answer")
    answer, cut = _turn(answer, where, akey)
    if query is None or answer is None:
        return Drop("empty_text")
    if cut:
        return Drop("answer_truncated")
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    codes = [IGNORE, ANSWER]
    if record.get("system") is not None:
        system = _text(record["system"], where, "system")
        if system:
            messages.insert(0, {"role": "system", "content": system})
            codes.insert(0, IGNORE)
    return Example(where, messages=messages, codes=codes)


def pretrain_example(record: dict, where: Where) -> Example | Drop:
    if "text" not in record:
        raise where.error("missing required field", "text")
    text = record["text"]
    if not isinstance(text, str):
        raise where.error(f"must be a string, got {type(text).__name__}", "text")
    return Example(where, text=text) if text.strip() else Drop("empty_text")


def to_example(record: dict, where: Where, encode_type: str, refine: RefinePrompt) -> Example | Drop:
    if encode_type == "ptr":
        return ptr_example(record, where, refine)
    if encode_type == "qa":
        return qa_example(record, where)
    return pretrain_example(record, where)
