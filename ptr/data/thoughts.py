"""`ptr thoughts`: weak models write a chain of attempts, a strong model writes the final answer.

:mod:`ptr.data.chains` builds each batch of chains; :mod:`ptr.data.filters` decides which records are
kept; every record, kept or not, is written:

    {id, query, refine_prompt, thoughts: [{round, model, text, finish_reason, tokens}],
     answer: {model, text, finish_reason, tokens} | null, scores: {…}, kept, reason}

``refine_prompt`` is the user turn the weak models answered after each thought (``encode`` lays out
the training conversation with it). A record that fails a filter keeps what was generated so far and
stops there (no answer after a dropped thought). Records are appended one batch at a time (one write +
fsync); a rerun with the same ``--output_path`` repairs a torn last line and generates only the ids not
yet written. With ``--thoughts_input`` nothing is generated: :mod:`ptr.data.imported` reads thought data
made elsewhere (the paper's release, say) into the same records.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from tqdm import tqdm

from ptr import storage
from ptr.data import filters, imported, outputs
from ptr.data.chains import ChainRun, Scorer, final_answer_conversation, process_batch
from ptr.data.config import build, default
from ptr.data.filters import FilterConfig
from ptr.data.model_pool import ModelPool
from ptr.data.queries import query_id
from ptr.data.thoughts_config import ThoughtsConfig
from ptr.errors import InputError, PtrError, cli_errors
from ptr.files import write_json
from ptr.jsonl import append_jsonl, repair_jsonl, write_jsonl
from ptr.records import iter_jsonl
from ptr.tracking import stage_run

__all__ = ["ThoughtsConfig", "final_answer_conversation", "main", "run_thoughts", "summarize"]


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
                if x.get("tokens") is not None:  # imported records may not say
                    tokens[x.get("model") or "?"] += int(x["tokens"])
    order = [*filters.REASONS, *sorted(set(dropped) - set(filters.REASONS))]
    summary = {
        "records": records,
        "kept": kept,
        "dropped": {k: dropped[k] for k in order if dropped[k]},
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
        except PtrError as err:
            if "no such object" not in str(err):  # unreachable store, no access: the user's to fix
                raise
    repaired = repair_jsonl(staged)
    done = {str(r["id"]) for _, r in iter_jsonl(staged, required=("id",))} if staged.exists() else set()
    return done, repaired


def run_thoughts(
    config: ThoughtsConfig, *, pool: ModelPool | None = None, scorer: Scorer | None = None
) -> dict:
    """Build (or finish) the thoughts file, or import one (``thoughts_input``); returns the summary
    written beside it. ``pool`` and ``scorer`` replace the run's models and its similarity measure."""
    if config.imports:
        records = imported.load(config)  # all input checked before any output
        staged = outputs.staging_path(config.output_path)
        with stage_run("thoughts", params=_flat_params(config)) as tracking:
            write_jsonl(staged, records)
            run_info = {
                "source": config.thoughts_input,
                "read": len(records),
                "kept": sum(r["kept"] for r in records),
                "filters_applied": list(imported.IMPORT_FILTERS),
            }
            return _publish(config, staged, run_info, tracking, {"records_read": len(records)})

    queries = load_query_file(config.queries, config.data_len)  # all input checked before any output
    staged = outputs.staging_path(config.output_path)
    pool = pool or ModelPool(dtype=config.dtype, batch_size=config.batch_size)
    run = ChainRun(config, pool, scorer)
    done, repaired = _resume_state(staged, config.output_path)
    if repaired:
        print(
            f"{config.output_path}: removed a torn last line ({repaired} bytes) left by a crash",
            file=sys.stderr,
        )
    todo = [q for q in queries if q["id"] not in done]

    with stage_run("thoughts", params=_flat_params(config)) as tracking:
        started = time.perf_counter()
        if todo:
            run.load()
        loaded = time.perf_counter()
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.touch()
        kept = _generate(run, todo, staged)
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
        metrics = {"queries_generated": len(todo)}
        if run_info["queries_per_minute"]:
            metrics["queries_per_minute"] = run_info["queries_per_minute"]
        return _publish(config, staged, run_info, tracking, metrics)


def _generate(run: ChainRun, todo: list[dict], staged) -> int:
    """Chains for ``todo``, appended batch by batch (published now and then); returns how many were kept."""
    config, kept = run.config, 0
    last_publish = time.monotonic()
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
    return kept


def _publish(config: ThoughtsConfig, staged, run_info: dict, tracking, metrics: dict) -> dict:
    """The summary beside the output, both published, and the counts logged to the stage's run."""
    summary = summarize(staged, config, run_info)
    summary_uri = outputs.summary_uri(config.output_path)
    summary_staged = outputs.staging_path(summary_uri)
    write_json(summary_staged, summary)
    outputs.publish(staged, config.output_path)
    outputs.publish(summary_staged, summary_uri)
    tracking.log_metrics({"records": summary["records"], "kept": summary["kept"], **metrics})
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
    p.add_argument("--output_path", required=True, help="thoughts JSONL (local path or s3:// URI)")
    g = p.add_argument_group("generate (from queries) ...")
    g.add_argument("--queries", help="queries JSONL ({id, query} per line), local or s3://")
    g.add_argument("--weak_models", nargs="+", help="weakest first; [backend:]reference")
    g.add_argument("--strong_model")
    g.add_argument("--judge_model", help="model that judges improvement (default: a heuristic)")
    i = p.add_argument_group("... or import thought data made elsewhere")
    i.add_argument(
        "--thoughts_input",
        help="a thoughts JSONL, the paper's [{question, output1..outputN}] (the last output is the final "
        "answer), s3:// or hf:name; nothing is generated, the text filters apply",
    )
    p.add_argument("--num_thoughts", type=int, default=default(T, "num_thoughts"))
    p.add_argument("--data_len", type=int, help="use the first N queries (or imported records)")
    p.add_argument("--backend", choices=("transformers", "vllm", "openai"), default=default(T, "backend"))
    p.add_argument("--endpoint", help="base URL for openai models without @URL")
    p.add_argument("--dtype", default=default(T, "dtype"))
    p.add_argument("--batch_size", type=int, default=default(T, "batch_size"))
    g = p.add_argument_group("sampling (weak models; --strong_* for the strong model)")
    g.add_argument("--max_new_tokens", type=int, default=default(T, "max_new_tokens"))
    g.add_argument(
        "--answer_max_new_tokens",
        type=int,
        help="the strong model's budget for the final answer (default 3 x --max_new_tokens); "
        "a record whose answer hits it is dropped (answer_truncated)",
    )
    g.add_argument("--temperature", type=float, default=default(T, "temperature"))
    g.add_argument("--top_p", type=float, default=default(T, "top_p"))
    g.add_argument("--top_k", type=int, default=default(T, "top_k"))
    g.add_argument("--strong_temperature", type=float, default=default(T, "strong_temperature"))
    g.add_argument("--strong_top_p", type=float, default=default(T, "strong_top_p"))
    g.add_argument("--strong_top_k", type=int, default=default(T, "strong_top_k"))
    g.add_argument("--seed", type=int, default=default(T, "seed"))
    g.add_argument("--refine_prompt", default=default(T, "refine_prompt"))
    g.add_argument(
        "--final_instruction",
        default=default(T, "final_instruction"),
        help="what the strong model is asked to do with the attempts",
    )
    f = p.add_argument_group("filters")
    f.add_argument(
        "--allow_truncated",
        action="store_true",
        help="keep thoughts that hit --max_new_tokens (a truncated final answer always drops its record)",
    )
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
    f.add_argument(
        "--min_improvement",
        type=float,
        default=default(F, "min_improvement"),
        help="0.5 = as good as the last thought; the default asks for better (see ptr/data/filters.py)",
    )
    f.add_argument("--embedding_model", default=default(T, "embedding_model"))
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--publish_every_s",
        type=float,
        default=default(T, "publish_every_s"),
        help="s3:// outputs: publish partial progress this often",
    )
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
    if "source" in run:
        this_run = f"imported from {run['source']}: {run['read']} records read"
    else:
        this_run = (
            f"this run: {run['generated']} queries ({run['already_written']} already written), "
            f"{run['queries_per_minute']} queries/min"
        )
    print(
        f"{summary['records']} records, kept {summary['kept']}; dropped: {drops}\n{this_run}", file=sys.stderr
    )
    return 0
