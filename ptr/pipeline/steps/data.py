"""Phase 1 steps: queries, then weak→strong thoughts."""

from __future__ import annotations

import os
from pathlib import Path

from ptr.data.queries import run_queries
from ptr.data.thoughts import run_thoughts
from ptr.errors import PtrError
from ptr.files import write_json
from ptr.pipeline import stage_cache
from ptr.pipeline.config import section
from ptr.pipeline.steps.common import announce, cache_for, describe_run, note_reused, set_context, timed
from ptr.records import iter_jsonl


def queries(run: dict, data: dict, out_dir: str, run_id: str) -> dict:
    """``queries.jsonl``, decontaminated against the evaluation data (``PTR_DATA_DIR`` unless
    ``data.decontaminate_dir`` names other data). Returns the stage's summary."""
    run, data = section("run", run), section("data", data)
    set_context(run, run_id)
    describe_run(run=run, data=data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data.thoughts_input:  # imported thought data: nothing to source
        (out / "queries.jsonl").write_text("")
        summary = {"records": 0, "skipped": "data.thoughts_input: thoughts are imported"}
        write_json(out / "queries.summary.json", summary)
        return summary
    config = data.queries_config(
        str(out / "queries.jsonl"), seed=run.seed, data_dir=os.environ.get("PTR_DATA_DIR")
    )
    announce("queries", config)
    with timed("queries", run, run_id):
        return run_queries(config)


def thoughts(run: dict, data: dict, queries_dir: str, out_dir: str, run_id: str) -> dict:
    """``thoughts.jsonl``: every record, kept or not; fails when no record was kept."""
    run, data = section("run", run), section("data", data)
    set_context(run, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = data.thoughts_config(
        str(Path(queries_dir) / "queries.jsonl"), str(out / "thoughts.jsonl"), seed=run.seed
    )
    announce("thoughts", config)
    source = data.thoughts_input or config.queries
    settings = config.model_dump(mode="json", exclude={"output_path", "queries", "thoughts_input"})
    cache = cache_for("thoughts", run, settings, lambda: {"source": _content(source)})
    with timed("thoughts", run, run_id) as timer:
        summary = cache.reuse(out)
        if summary is not None:
            timer.reused = True
            note_reused("thoughts", summary, cache.entry)
        else:
            summary = run_thoughts(config)
            if summary.get("kept"):
                cache.keep(out, summary)
    if summary.get("kept") == 0:
        raise PtrError(
            "thoughts: no record passed the filters, nothing to train on (see thoughts.summary.json)"
        )
    if data.thoughts_input:
        check_thought_count(Path(config.output_path), data.num_thoughts)
    return summary


def _content(source: str) -> str:
    """A local input by its content; a remote one (``s3://``, ``hf:``) by its name."""
    path = Path(source)
    return stage_cache.digest([path]) if "://" not in source and path.exists() else source


def check_thought_count(path: Path, num_thoughts: int) -> None:
    """Imported records must hold ``data.num_thoughts`` thoughts each: that number decides which round
    evaluation and the gate score as the trained one (see ``PipelineConfig.trained_round``)."""
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for line, record in iter_jsonl(path):
        if record.get("kept"):
            n = len(record.get("thoughts") or [])
            counts[n] = counts.get(n, 0) + 1
            first.setdefault(n, line)
    wrong = sorted(n for n in counts if n != num_thoughts)
    if wrong:
        n = wrong[0]
        raise PtrError(
            f"{path}:{first[n]}: thoughts: {counts[n]} kept record(s) hold {n} thought(s) before the answer, "
            f"but data.num_thoughts is {num_thoughts}; set data.num_thoughts: {n} to say what the imported "
            f"data holds (the model is then trained to answer in round {n + 1}, the round the gate scores)"
        )
