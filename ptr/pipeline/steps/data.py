"""Phase 1 steps: queries, then weak→strong thoughts."""

from __future__ import annotations

import os
from pathlib import Path

from ptr.data.queries import run_queries
from ptr.data.thoughts import run_thoughts
from ptr.errors import PtrError
from ptr.files import write_json
from ptr.pipeline.config import section
from ptr.pipeline.steps.common import announce, set_context


def queries(run: dict, data: dict, out_dir: str, run_id: str) -> dict:
    """``queries.jsonl``, decontaminated against the evaluation data (``PTR_DATA_DIR`` unless
    ``data.decontaminate_dir`` names other data). Returns the stage's summary."""
    run, data = section("run", run), section("data", data)
    set_context(run, run_id)
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
    summary = run_thoughts(config)
    if summary.get("kept") == 0:
        raise PtrError(
            "thoughts: no record passed the filters, nothing to train on (see thoughts.summary.json)"
        )
    return summary
