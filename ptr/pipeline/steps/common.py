"""What every step does first (validate, set the correlation id), how it is timed and reused, and
the records steps pass on."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from ptr import tracking
from ptr.errors import PtrError
from ptr.jsonl import append_jsonl
from ptr.pipeline import stage_cache
from ptr.pipeline.config import Run
from ptr.tracking import local_dir

STEP_TIMES = "step-times.jsonl"  # under the local state folder: one line per step of every local run


def set_context(run: Run, run_id: str) -> None:
    """Correlation and tracking settings every stage reads from the environment."""
    os.environ["PTR_RUN_ID"] = run_id
    os.environ["PTR_EXPERIMENT"] = run.experiment
    os.environ["PTR_RUN_LABEL"] = run.name or run.model_name


def announce(stage: str, config: BaseModel) -> None:
    """The stage and the settings it runs with, in the step's log (defaults left out)."""
    settings = config.model_dump(mode="json", exclude_defaults=True)
    print(f"ptr {stage}: {json.dumps(settings, sort_keys=True)}", file=sys.stderr, flush=True)


def read_record(folder: str | Path, name: str) -> dict:
    """A JSON record an earlier step left in its artifact folder."""
    path = Path(folder) / name
    if not path.exists():
        raise PtrError(f"{folder}: no {name} (not an artifact of this pipeline's step)")
    return json.loads(path.read_text())


def model_location(model_dir: str | Path) -> str:
    """The exported model a train artifact points at."""
    return read_record(model_dir, "location.json")["model"]


def describe_run(**sections: BaseModel) -> None:
    """The config sections a step received, as params of the pipeline's parent run (``train.layout``,
    ``train.max_steps`` …): MLflow's runs table then compares pipeline runs by their settings."""
    params = {}
    for name, value in sections.items():
        for key, item in value.model_dump(mode="json", exclude_none=True).items():
            params[f"{name}.{key}"] = (
                json.dumps(item, sort_keys=True) if isinstance(item, dict | list) else item
            )
    tracking.log_to_pipeline(params=params)


class Timer:
    """Where a step's time went: ``reused`` is set when the stage cache answered."""

    def __init__(self):
        self.reused = False


@contextlib.contextmanager
def timed(step: str, run: Run, run_id: str):
    """Time a step: ``time.<step>_s`` on the parent run, and a line in ``.ptr/step-times.jsonl``
    (``{run_id, name, step, seconds, reused}``) for reports of where a run's time went."""
    timer, started = Timer(), time.monotonic()
    yield timer
    seconds = round(time.monotonic() - started, 1)
    line = {"run_id": run_id, "name": run.name or run.model_name, "step": step, "seconds": seconds}
    line |= {"reused": timer.reused, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if run.runtime == "local":
        with contextlib.suppress(OSError):
            local_dir().mkdir(parents=True, exist_ok=True)
            append_jsonl(local_dir() / STEP_TIMES, [line])
    tracking.log_to_pipeline(metrics={f"time.{step}_s": seconds})
    print(f"ptr {step}: {seconds:.0f} s" + (" (reused)" if timer.reused else ""), file=sys.stderr, flush=True)


def cache_for(stage: str, run: Run, config: dict, inputs: Callable[[], dict[str, str]]) -> stage_cache.Stage:
    """The stage's place in the stage cache (inactive on a cluster or with PTR_STAGE_CACHE=off).
    ``inputs()`` digests what the stage reads; it is called only when the cache is in use."""
    active = stage_cache.enabled(run.runtime)
    key = stage_cache.stage_key(stage, config, inputs()) if active else ""
    return stage_cache.Stage(stage, key, active=active)


def note_reused(stage: str, record: dict, entry: Path) -> None:
    """A child run for a stage the cache answered, so the pipeline run still shows every stage."""
    with tracking.stage_run(stage, tags={"ptr.reused": str(entry)}, name=f"{stage} (reused)") as run:
        run.log_dict(record, f"{stage}.summary.json")
