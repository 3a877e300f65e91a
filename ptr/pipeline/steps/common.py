"""What every step does first (validate, set the correlation id) and the records steps pass on."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from ptr.errors import PtrError
from ptr.pipeline.config import Run


def set_context(run: Run, run_id: str) -> None:
    """Correlation and tracking settings every stage reads from the environment."""
    os.environ["PTR_RUN_ID"] = run_id
    os.environ["PTR_EXPERIMENT"] = run.experiment


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
