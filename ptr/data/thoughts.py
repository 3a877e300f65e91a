"""`ptr thoughts`: weak models write a chain of attempts, a strong model writes the final answer.

Thought 1 is the first weak model's answer to the query; thought t > 1 is the next weak model's
refinement of the conversation so far (the answer, then the refine prompt as a user turn, as
``ptr refine`` does), cycling through the weak models in order. The strong model then reads the query
and all thoughts, with an instruction to write a better, complete answer (in-context refinement).
:mod:`ptr.data.filters` decides which records are kept; every record, kept or not, is written:

    {id, query, thoughts: [{round, model, text, finish_reason, tokens}],
     answer: {model, text, finish_reason, tokens} | null, scores: {…}, kept, reason}

A record that fails an early filter keeps the thoughts generated so far and stops there (no answer).
Records are appended one batch at a time (one write + fsync); a rerun with the same ``--output_path``
repairs a torn last line and generates only the ids not yet written.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from ptr import embeddings, storage
from ptr.data import filters, outputs
from ptr.data.cleaning import clean_generated, stops_for
from ptr.data.config import build, default
from ptr.data.filters import FilterConfig
from ptr.data.models import BackendName, ModelPool, ModelSpec, parse_spec
from ptr.data.queries import query_id
from ptr.errors import InputError, PtrError, cli_errors
from ptr.inference import SamplingParams, continue_conversation
from ptr.jsonl import append_jsonl, iter_jsonl, repair_jsonl, write_json
from ptr.prompts import FINAL_ANSWER_INSTRUCTION, REFINE_PROMPT

JUDGE_MAX_NEW_TOKENS = 8


class ThoughtsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: str  # JSONL of {id, query} (the queries stage's output), local or s3://
    output_path: str
    weak_models: list[str] = Field(min_length=1)  # weakest first; specs as in ptr.data.models
    strong_model: str
    judge_model: str | None = None  # None: the heuristic improvement score
    num_thoughts: int = Field(2, ge=1)
    data_len: int | None = Field(None, ge=1)  # the first N queries
    backend: BackendName = "transformers"  # for specs without a backend prefix
    endpoint: str | None = None
    dtype: str = "auto"
    batch_size: int = Field(16, ge=1)  # queries per batch (and per append)
    max_new_tokens: int = Field(256, ge=1)
    strong_max_new_tokens: int | None = Field(None, ge=1)  # default: max_new_tokens
    temperature: float = Field(0.7, ge=0)  # weak models
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    strong_temperature: float = Field(0.0, ge=0)
    strong_top_p: float = Field(1.0, gt=0, le=1)
    strong_top_k: int = Field(0, ge=0)
    seed: int = 0
    refine_prompt: str = REFINE_PROMPT
    final_instruction: str = FINAL_ANSWER_INSTRUCTION
    filters: FilterConfig = Field(default_factory=FilterConfig)
    embedding_model: str = embeddings.DEFAULT
    progress: bool = True
    publish_every_s: float = 300.0  # s3 outputs: publish partial progress this often


def final_answer_conversation(query: str, thoughts: list[str], instruction: str) -> list[dict]:
    """The strong model's prompt: the instruction, the query, and every attempt so far."""
    attempts = "\n\n".join(f"Attempt {i}:\n{t}" for i, t in enumerate(thoughts, 1))
    return [{"role": "user", "content": f"{instruction}\n\nQuestion:\n{query}\n\n{attempts}"}]


def load_query_file(uri: str, data_len: int | None) -> list[dict]:
    """``[{id, query}]``: the first ``data_len`` queries, every line checked before work starts."""
    path = storage.fetch(uri)
    queries, seen = [], {}
    for line, record in iter_jsonl(path, required=("query",)):
        text = record["query"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(uri, line, "must be a non-empty string", field="query")
        qid = record.get("id", query_id(text.strip()))
        if not isinstance(qid, str | int) or isinstance(qid, bool) or str(qid) == "":
            raise InputError(uri, line, "must be a non-empty string", field="id")
        qid = str(qid)
        if qid in seen:
            raise InputError(uri, line, f"duplicate id {qid!r} (first on line {seen[qid]})", field="id")
        seen[qid] = line
        queries.append({"id": qid, "query": text.strip()})
        if data_len is not None and len(queries) == data_len:
            break
    return queries


class _Run:
    """One run's models, sampling settings and counters."""

    def __init__(self, config: ThoughtsConfig, pool: ModelPool):
        c = config
        self.config = c
        self.weak = [parse_spec(s, c.backend, c.endpoint) for s in c.weak_models]
        self.strong = parse_spec(c.strong_model, c.backend, c.endpoint)
        self.judge = parse_spec(c.judge_model, c.backend, c.endpoint) if c.judge_model else None
        self.pool = pool
        self.tokens: Counter = Counter()

    def load(self) -> None:
        for spec in [*self.weak, self.strong, *([self.judge] if self.judge else [])]:
            self.pool.get(spec)

    def params(self, spec: ModelSpec, role: str, seed: int) -> SamplingParams:
        c, stop = self.config, stops_for(self.pool.get(spec))
        if role == "weak":
            return SamplingParams(c.max_new_tokens, c.temperature, c.top_p, c.top_k, seed, stop)
        if role == "strong":
            tokens = c.strong_max_new_tokens or c.max_new_tokens
            return SamplingParams(tokens, c.strong_temperature, c.strong_top_p, c.strong_top_k, seed, stop)
        return SamplingParams(JUDGE_MAX_NEW_TOKENS, 0.0, 1.0, 0, seed, stop)

    def fits(self, spec: ModelSpec, conversation) -> bool:
        """Whether the prompt leaves room to generate, where the backend can tell (transformers)."""
        backend = self.pool.get(spec)
        limit = getattr(backend, "context_length", None)
        if limit is None or not hasattr(backend, "encode"):
            return True
        return len(backend.encode(conversation)) + 1 <= limit

    def generate(self, spec: ModelSpec, conversations, params, *, store=None, progress=None):
        backend = self.pool.get(spec)
        kwargs = {"progress": progress}
        if store is not None:
            kwargs["prefix_store"] = store
        outs = backend.generate(conversations, params, **kwargs)
        self.tokens[spec.label] += sum(o.completion_tokens for o in outs)
        return outs


def _sub_store(stores: dict, spec: ModelSpec, backend, size: int, indices: list[int]):
    """A prefix store for the rows ``indices`` of a batch, backed by one store per model, so a model
    that continues its own conversation reuses the attention cache of its earlier turns."""
    if getattr(backend, "name", "") != "transformers":
        return None
    from ptr.inference.hf import PrefixStore

    full = stores.setdefault(spec.key, PrefixStore(size))
    sub = PrefixStore(len(indices))
    sub.entries = [full.entries[i] for i in indices]
    return full, sub


def process_batch(run: _Run, batch: list[dict], seed: int, progress=None) -> list[dict]:
    """Thoughts, answers, scores and filter decisions for one batch of queries."""
    c, fcfg = run.config, run.config.filters
    records = [
        {"id": q["id"], "query": q["query"], "thoughts": [], "answer": None, "scores": {}, "kept": False}
        for q in batch
    ]
    reasons: list[str | None] = [None] * len(batch)
    conversations = [[{"role": "user", "content": q["query"]}] for q in batch]
    stores: dict = {}
    active = list(range(len(batch)))
    for t in range(1, c.num_thoughts + 1):
        spec = run.weak[(t - 1) % len(run.weak)]
        if t > 1:
            for i in active:
                conversations[i] = continue_conversation(
                    conversations[i], records[i]["thoughts"][-1]["text"], c.refine_prompt
                )
        for i in active:
            if not run.fits(spec, conversations[i]):
                reasons[i] = "too_long"
        active = [i for i in active if reasons[i] is None]
        if not active:
            break
        pair = _sub_store(stores, spec, run.pool.get(spec), len(batch), active)
        outs = run.generate(
            spec,
            [conversations[i] for i in active],
            run.params(spec, "weak", seed + t),
            store=pair[1] if pair else None,
            progress=progress,
        )
        if pair:
            for k, i in enumerate(active):
                pair[0].entries[i] = pair[1].entries[k]
        for i, out in zip(active, outs, strict=True):
            text = clean_generated(out.text)
            previous = records[i]["thoughts"][-1]["text"] if records[i]["thoughts"] else None
            records[i]["thoughts"].append(
                {
                    "round": t,
                    "model": spec.label,
                    "text": text,
                    "finish_reason": out.finish_reason,
                    "tokens": out.completion_tokens,
                }
            )
            reasons[i] = filters.attempt_reason(text, out.finish_reason, previous, fcfg)
        active = [i for i in active if reasons[i] is None]
    stores.clear()

    prompts = {
        i: final_answer_conversation(
            records[i]["query"], [x["text"] for x in records[i]["thoughts"]], c.final_instruction
        )
        for i in active
    }
    for i in active:
        if not run.fits(run.strong, prompts[i]):
            reasons[i] = "too_long"
    active = [i for i in active if reasons[i] is None]
    if active:
        prompts = [prompts[i] for i in active]
        outs = run.generate(run.strong, prompts, run.params(run.strong, "strong", seed), progress=progress)
        for i, out in zip(active, outs, strict=True):
            text = clean_generated(out.text)
            records[i]["answer"] = {
                "model": run.strong.label,
                "text": text,
                "finish_reason": out.finish_reason,
                "tokens": out.completion_tokens,
            }
            reasons[i] = filters.attempt_reason(
                text, out.finish_reason, records[i]["thoughts"][-1]["text"], fcfg
            )
    _score(run, records, reasons, seed)
    for record, reason in zip(records, reasons, strict=True):
        record["kept"] = reason is None
        record["reason"] = reason
    if progress is not None:  # generations that early filters made unnecessary
        planned = len(batch) * (c.num_thoughts + 1)
        done = sum(len(r["thoughts"]) + (r["answer"] is not None) for r in records)
        progress(planned - done)
    return records


def _score(run: _Run, records: list[dict], reasons: list[str | None], seed: int) -> None:
    """Embedding scores for every record, then the consistency and improvement filters."""
    import numpy as np

    texts: dict[str, int] = {}

    def slot(text: str) -> int:
        return texts.setdefault(text, len(texts))

    for r in records:
        slot(r["query"])
        for x in r["thoughts"]:
            slot(x["text"])
        if r["answer"]:
            slot(r["answer"]["text"])
    emb = embeddings.embed(list(texts), run.config.embedding_model)

    def cos(a: str, b: str) -> float:
        return round(float(np.dot(emb[texts[a]], emb[texts[b]])), 4)

    alive = []
    for i, r in enumerate(records):
        chain = [x["text"] for x in r["thoughts"]]
        s = r["scores"]
        s["chain_consistency"] = min((cos(a, b) for a, b in itertools.pairwise(chain)), default=None)
        s["thought_relevance"] = cos(chain[-1], r["query"]) if chain else None
        s["consistency"] = s["answer_relevance"] = s["improvement"] = None
        if r["answer"] is None:
            continue
        answer = r["answer"]["text"]
        s["consistency"] = cos(answer, chain[-1])
        s["answer_relevance"] = cos(answer, r["query"])
        s["heuristic_improvement"] = round(
            filters.heuristic_improvement(
                s["answer_relevance"], s["thought_relevance"], len(answer.split()), len(chain[-1].split())
            ),
            4,
        )
        if run.judge is None:
            s["improvement"] = s["heuristic_improvement"]
        if reasons[i] is None and s["consistency"] >= run.config.filters.min_consistency:
            alive.append(i)
        elif reasons[i] is None:
            reasons[i] = "inconsistent"

    if run.judge is not None and alive:
        convs = {}  # (record, 0 forward | 1 backward) -> judge prompt, for prompts that fit
        for i in alive:
            r = records[i]
            pair = filters.judge_conversations(r["query"], r["thoughts"][-1]["text"], r["answer"]["text"])
            convs.update({(i, k): conv for k, conv in enumerate(pair) if run.fits(run.judge, conv)})
        outs = run.generate(run.judge, list(convs.values()), run.params(run.judge, "judge", seed))
        verdicts = {
            key: filters.parse_verdict(clean_generated(o.text)) for key, o in zip(convs, outs, strict=True)
        }
        for i in alive:
            s = records[i]["scores"]
            s["judge_forward"], s["judge_backward"] = verdicts.get((i, 0)), verdicts.get((i, 1))
            improvement = filters.judged_improvement(s["judge_forward"], s["judge_backward"])
            s["improvement"] = None if improvement is None else round(improvement, 4)
    for i in alive:
        s = records[i]["scores"]
        reasons[i] = filters.final_reason(
            s["consistency"], s["improvement"], run.judge is not None, run.config.filters
        )


def summarize(path, config: ThoughtsConfig | None = None, run_info: dict | None = None) -> dict:
    """Counts over the whole output file: kept, dropped per reason, tokens per model."""
    kept, records = 0, 0
    dropped: Counter = Counter()
    tokens: Counter = Counter()
    if path.exists():
        for _, r in iter_jsonl(path):
            records += 1
            kept += bool(r.get("kept"))
            if not r.get("kept"):
                dropped[r.get("reason") or "unknown"] += 1
            for x in [*r.get("thoughts", []), *([r["answer"]] if r.get("answer") else [])]:
                tokens[x.get("model", "?")] += int(x.get("tokens", 0))
    summary = {
        "records": records,
        "kept": kept,
        "dropped": {k: dropped[k] for k in (*filters.REASONS, "unknown") if dropped[k]},
        "tokens": dict(tokens),
    }
    if run_info is not None:
        summary["run"] = run_info
    if config is not None:
        summary["config"] = config.model_dump()
    return summary


def _resume_state(staged, output: str) -> tuple[set[str], int]:
    """Ids already written, and bytes of a torn last line removed."""
    if not staged.exists() and storage.is_remote(output):
        try:  # resume from what an earlier run (perhaps on another machine) published
            storage.fetch(output, staged)
        except PtrError:
            pass
    repaired = repair_jsonl(staged)
    done = {str(r["id"]) for _, r in iter_jsonl(staged, required=("id",))} if staged.exists() else set()
    return done, repaired


def run_thoughts(config: ThoughtsConfig, *, pool: ModelPool | None = None) -> dict:
    """Build (or finish) the thoughts file; returns the summary written beside it."""
    queries = load_query_file(config.queries, config.data_len)  # all input checked before any output
    staged = outputs.staging_path(config.output_path)
    pool = pool or ModelPool(dtype=config.dtype, batch_size=config.batch_size)
    run = _Run(config, pool)
    done, repaired = _resume_state(staged, config.output_path)
    if repaired:
        print(
            f"{config.output_path}: removed a torn last line ({repaired} bytes) left by a crash",
            file=sys.stderr,
        )
    todo = [q for q in queries if q["id"] not in done]

    from ptr.tracking import stage_run

    with stage_run("thoughts", params=_flat_params(config)) as tracking:
        started = time.perf_counter()
        if todo:
            run.load()
        loaded = time.perf_counter()
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.touch()
        last_publish = time.monotonic()
        kept = 0
        from tqdm import tqdm

        with tqdm(
            total=len(todo) * (config.num_thoughts + 1),
            desc="thoughts",
            unit="gen",
            file=sys.stderr,
            disable=not config.progress,
        ) as bar:
            for b, start in enumerate(range(0, len(todo), config.batch_size)):
                batch = todo[start : start + config.batch_size]
                records = process_batch(run, batch, config.seed + 1000 * b, progress=bar.update)
                append_jsonl(staged, records)
                kept += sum(r["kept"] for r in records)
                bar.set_postfix(kept=kept, refresh=False)
                if (
                    storage.is_remote(config.output_path)
                    and time.monotonic() - last_publish > config.publish_every_s
                ):
                    outputs.publish(staged, config.output_path)
                    last_publish = time.monotonic()
        finished = time.perf_counter()
        minutes = (finished - loaded) / 60
        run_info = {
            "queries_selected": len(queries),
            "already_written": len(queries) - len(todo),
            "generated": len(todo),
            "kept": kept,
            "load_seconds": round(loaded - started, 2),
            "generation_seconds": round(finished - loaded, 2),
            "queries_per_minute": round(len(todo) / minutes, 3) if todo and minutes > 0 else None,
            "tokens": dict(run.tokens),
            "repaired_bytes": repaired,
        }
        summary = summarize(staged, config, run_info)
        summary_uri = outputs.summary_uri(config.output_path)
        summary_staged = outputs.staging_path(summary_uri)
        write_json(summary_staged, summary)
        outputs.publish(staged, config.output_path)
        outputs.publish(summary_staged, summary_uri)
        tracking.log_metrics(
            {"records": summary["records"], "kept": summary["kept"], "queries_generated": len(todo)}
            | (
                {"queries_per_minute": run_info["queries_per_minute"]}
                if run_info["queries_per_minute"]
                else {}
            )
        )
        tracking.log_artifact(summary_staged)
    return summary


def _flat_params(config: ThoughtsConfig) -> dict:
    data = config.model_dump()
    data.update({f"filters.{k}": v for k, v in data.pop("filters").items()})
    return data


def parser() -> argparse.ArgumentParser:
    T, F = ThoughtsConfig, FilterConfig
    p = argparse.ArgumentParser(
        prog="ptr thoughts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queries", required=True, help="queries JSONL ({id, query} per line), local or s3://")
    p.add_argument("--output_path", required=True, help="thoughts JSONL (local path or s3:// URI)")
    p.add_argument("--weak_models", nargs="+", required=True, help="weakest first; [backend:]reference")
    p.add_argument("--strong_model", required=True)
    p.add_argument("--judge_model", help="model that judges improvement (default: a heuristic)")
    p.add_argument("--num_thoughts", type=int, default=default(T, "num_thoughts"))
    p.add_argument("--data_len", type=int, help="use the first N queries")
    p.add_argument("--backend", choices=("transformers", "vllm", "openai"), default=default(T, "backend"))
    p.add_argument("--endpoint", help="base URL for openai models without @URL")
    p.add_argument("--dtype", default=default(T, "dtype"))
    p.add_argument("--batch_size", type=int, default=default(T, "batch_size"))
    g = p.add_argument_group("sampling (weak models; --strong_* for the strong model)")
    g.add_argument("--max_new_tokens", type=int, default=default(T, "max_new_tokens"))
    g.add_argument("--strong_max_new_tokens", type=int)
    g.add_argument("--temperature", type=float, default=default(T, "temperature"))
    g.add_argument("--top_p", type=float, default=default(T, "top_p"))
    g.add_argument("--top_k", type=int, default=default(T, "top_k"))
    g.add_argument("--strong_temperature", type=float, default=default(T, "strong_temperature"))
    g.add_argument("--strong_top_p", type=float, default=default(T, "strong_top_p"))
    g.add_argument("--strong_top_k", type=int, default=default(T, "strong_top_k"))
    g.add_argument("--seed", type=int, default=default(T, "seed"))
    g.add_argument("--refine_prompt", default=default(T, "refine_prompt"))
    f = p.add_argument_group("filters")
    f.add_argument("--allow_truncated", action="store_true", help="keep attempts that hit max_new_tokens")
    f.add_argument(
        "--min_chars", type=int, default=default(F, "min_chars"), help="shorter attempts are 'empty'"
    )
    f.add_argument(
        "--repeat_threshold",
        type=float,
        default=default(F, "repeat_threshold"),
        help="text similarity to the previous attempt at which an attempt is 'repeated' (1: identical)",
    )
    f.add_argument("--min_consistency", type=float, default=default(F, "min_consistency"))
    f.add_argument("--min_improvement", type=float, default=default(F, "min_improvement"))
    f.add_argument("--embedding_model", default=default(T, "embedding_model"))
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> ThoughtsConfig:
    values = vars(args).copy()
    filter_values = {k: values.pop(k) for k in FilterConfig.model_fields}
    values["progress"] = not values.pop("no_progress")
    return build(ThoughtsConfig, **values, filters=filter_values)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    summary = run_thoughts(config_from_args(parser().parse_args(argv)))
    run = summary["run"]
    drops = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"
    print(
        f"{summary['records']} records, kept {summary['kept']}; dropped: {drops}\n"
        f"this run: {run['generated']} queries ({run['already_written']} already written), "
        f"{run['queries_per_minute']} queries/min",
        file=sys.stderr,
    )
    return 0
