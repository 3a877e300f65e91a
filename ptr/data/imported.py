"""Bring your own thought data: records made elsewhere, checked and written as ``ptr thoughts`` writes them.

``thoughts_input`` is read instead of generating anything. It may hold

* what ``ptr thoughts`` writes — ``{id, query, thoughts: [{text, …}], answer: {text, …}, kept, reason}``
  (records already dropped, ``kept: false``, are carried over as they are, with their reason);
* the paper's released sample — ``{question, output1, …, outputN}``: the outputs are the attempts in
  order, and the LAST one is the final answer (so N ≥ 2);

as a JSONL file (``.gz`` too), a file holding one JSON array, an ``s3://`` object, or a Hugging Face
dataset (``hf:name``). Without generation metadata only the filters that read the texts apply:
``empty`` and ``repeated`` (thoughts and answer), ``meta_answer``, and — where a record says how its
generation ended — ``truncated`` thoughts and ``answer_truncated``. Records without a ``refine_prompt``
get the configured one (by default the paper's, which its released data was made with). Bad input
stops the run before anything is written, naming ``file:line`` (or ``file[index]``) and the field.
"""

from __future__ import annotations

from collections import Counter

from ptr.data import filters
from ptr.data.cleaning import clean_generated
from ptr.data.queries import query_id
from ptr.data.thoughts_config import ThoughtsConfig
from ptr.records import Where, is_paper_record, paper_outputs, query_text, read_records

IMPORT_FILTERS = ("truncated", "answer_truncated", "empty", "repeated", "meta_answer")


def _text(value, where: Where, field: str) -> str:
    if not isinstance(value, str):
        raise where.error(f"must be a string, got {type(value).__name__}", field)
    return clean_generated(value)


def _step(value, where: Where, field: str, round: int | None = None) -> dict:
    """One thought (``round`` t) or the answer: ``{model, text, finish_reason, tokens}``, unknown
    parts None."""
    if isinstance(value, str):
        value, text_field = {"text": value}, field
    elif isinstance(value, dict) and "text" in value:
        text_field = f"{field}.text"
    else:
        raise where.error("expected a string or an object with 'text'", field)
    return {
        **({"round": round} if round is not None else {}),
        "model": value.get("model"),
        "text": _text(value["text"], where, text_field),
        "finish_reason": value.get("finish_reason"),
        "tokens": value.get("tokens"),
    }


def _paper_chain(record: dict, where: Where) -> tuple[str, list[dict], dict]:
    *thoughts, answer = paper_outputs(record, where)
    thoughts = [_step(text, where, f"output{t}", t) for t, text in enumerate(thoughts, 1)]
    return _query(record, where), thoughts, _step(answer, where, f"output{len(thoughts) + 1}")


def _ptr_chain(record: dict, where: Where) -> tuple[str, list[dict], dict | None]:
    for key in ("thoughts", "answer"):
        if key not in record:
            raise where.error("missing required field (or give the paper's output1..outputN)", key)
    if not isinstance(record["thoughts"], list):
        raise where.error(f"must be a list, got {type(record['thoughts']).__name__}", "thoughts")
    thoughts = [_step(t, where, f"thoughts[{i}]", i + 1) for i, t in enumerate(record["thoughts"])]
    answer = None if record["answer"] is None else _step(record["answer"], where, "answer")
    return _query(record, where), thoughts, answer


def _query(record: dict, where: Where) -> str:
    """The query, from the project's one list of query fields; an empty one drops its record
    ("empty"), as one of the paper's sample does."""
    return clean_generated(query_text(record, where)[1])


def import_record(record: dict, where: Where, config: ThoughtsConfig) -> dict:
    """One input record as a thoughts.jsonl record, with the text filters' decision."""
    query, thoughts, answer = (_paper_chain if is_paper_record(record) else _ptr_chain)(record, where)
    kept = record.get("kept", True)
    if not isinstance(kept, bool):
        raise where.error(f"must be true or false, got {kept!r}", "kept")
    refine_prompt = record.get("refine_prompt", config.refine_prompt)
    if not isinstance(refine_prompt, str) or not refine_prompt.strip():
        raise where.error("must be a non-empty string", "refine_prompt")
    qid = record.get("id")
    if qid is not None and (not isinstance(qid, str | int) or isinstance(qid, bool) or str(qid) == ""):
        raise where.error("must be a non-empty string", "id")
    reason = (
        record.get("reason") or "not_kept" if not kept else _reason(query, thoughts, answer, where, config)
    )
    for t, step in enumerate(thoughts, 1):
        step["round"] = t
    return {
        "id": None if qid is None else str(qid),
        "query": query,
        "refine_prompt": refine_prompt,
        "thoughts": thoughts,
        "answer": answer,
        "scores": record.get("scores") or {},
        "kept": reason is None,
        "reason": reason,
    }


def _reason(query: str, thoughts: list[dict], answer: dict | None, where: Where, config) -> str | None:
    """The text filters along the chain, as generation applies them (first failure wins)."""
    if not query:
        return "empty"
    if not thoughts:
        raise where.error("a kept record needs at least one thought before its answer", "thoughts")
    if answer is None:
        raise where.error("a kept record needs a final answer", "answer")
    previous = None
    for step in thoughts:
        if reason := filters.thought_reason(step["text"], step["finish_reason"], previous, config.filters):
            return reason
        previous = step["text"]
    return filters.answer_reason(answer["text"], answer["finish_reason"], previous, query, config.filters)


def load(config: ThoughtsConfig) -> list[dict]:
    """Every record of ``config.thoughts_input`` (the first ``data_len``), all checked before the caller
    writes anything. A record without an id gets its query's content hash (``-2``, ``-3`` … for more
    chains of one query); ids the input gives must be unique."""
    records, given, made = [], {}, Counter()
    for where, raw in read_records(config.thoughts_input):
        record = import_record(raw, where, config)
        if record["id"] is None:
            qid = query_id(record["query"])
            made[qid] += 1
            record["id"] = qid if made[qid] == 1 else f"{qid}-{made[qid]}"
        elif record["id"] in given:
            raise where.error(f"duplicate id {record['id']!r} (first at {given[record['id']]})", "id")
        else:
            given[record["id"]] = str(where)
        records.append(record)
        if config.data_len is not None and len(records) == config.data_len:
            break
    return records
