"""lm-evaluation-harness, offline: task definitions written at run time into a temporary folder, with
their data as local JSON lines (never copied into the repository), and a model that replays saved
generations so that lm-eval scores exactly the text our harness scored.

Used by the benchmark (tests/bench/eval.py) and the reference check (tests/bench/lm_eval_reference.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def default_data_dir() -> str | None:
    """$PTR_DATA_DIR, else a ``shared/data`` folder beside the clone (or beside its parent)."""
    if os.environ.get("PTR_DATA_DIR"):
        return os.environ["PTR_DATA_DIR"]
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "data", repo.parent.parent / "shared" / "data"):
        if candidate.is_dir():
            return str(candidate)
    return None


def lm_eval_task_file(relative: str) -> Path:
    """A task definition shipped with lm_eval (e.g. ``gsm8k/gsm8k-cot.yaml``)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def write_task(folder: Path, name: str, rows: list[dict], spec: dict) -> None:
    """``<folder>/<name>.yaml`` reading ``<folder>/<name>.jsonl`` as its test split. ``spec`` may
    ``include`` one of lm_eval's own task files and override what it needs."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    full = {
        **spec,
        "task": name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "validation_split": None,
        "training_split": None,
        "fewshot_split": None,
        "num_fewshot": 0,
    }
    (folder / f"{name}.yaml").write_text(
        yaml.safe_dump(full, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


def replay_model(outputs: dict[str, str]):
    """An lm_eval model that answers each generation request with the saved output for its context."""
    from lm_eval.api.model import LM

    class Replay(LM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            return [outputs[req.args[0]] for req in requests]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("replay only answers generation requests")

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("replay only answers generation requests")

    return Replay()


def evaluate(model, folder: Path, tasks: list[str], **kwargs) -> dict:
    """``lm_eval.simple_evaluate`` on tasks defined in ``folder``, samples logged."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=True, **kwargs)
