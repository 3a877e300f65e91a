"""Evaluation runs as `ptr eval` logs them (the contract in ptr.tracking's docs), for promotion tests.

The evaluation stage is another issue's code; these tests need runs with known per-question results,
so this writes exactly what that stage writes: metrics ``eval.<task>.round<k>`` / ``delta<k>`` (+ _lo/_hi)
and ``eval/<task>.predictions.jsonl`` / ``<task>.metrics.json`` / ``summary.md``, through ptr.tracking.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def _interval(x: np.ndarray, seed: int = 0, n_boot: int = 200) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def log_eval_run(model_ref: str, scores: dict[str, list[list[float]]]) -> str:
    """``scores[task][r][i]``: question i's score in round r+1. Returns the MLflow run id."""
    from ptr.tracking import describe_model, stage_run

    with stage_run(
        "eval", {"model_path": model_ref, "tasks": ",".join(scores)}, tags=describe_model(model_ref)
    ) as run:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            metrics = {}
            for task, rounds in scores.items():
                x = np.asarray(rounds, dtype=float)
                table = {"task": task, "n": x.shape[1], "rounds": [], "deltas": []}
                for r in range(x.shape[0]):
                    lo, hi = _interval(x[r])
                    table["rounds"].append({"round": r + 1, "score": float(x[r].mean()), "lo": lo, "hi": hi})
                    metrics |= {f"eval.{task}.round{r + 1}": x[r].mean(), f"eval.{task}.round{r + 1}_lo": lo}
                    metrics[f"eval.{task}.round{r + 1}_hi"] = hi
                    if r:
                        d = x[r] - x[r - 1]
                        dlo, dhi = _interval(d)
                        table["deltas"].append(
                            {"from": r, "to": r + 1, "delta": float(d.mean()), "lo": dlo, "hi": dhi}
                        )
                        metrics |= {
                            f"eval.{task}.delta{r + 1}": d.mean(),
                            f"eval.{task}.delta{r + 1}_lo": dlo,
                        }
                        metrics[f"eval.{task}.delta{r + 1}_hi"] = dhi
                with open(out / f"{task}.predictions.jsonl", "w") as f:
                    for i in range(x.shape[1]):
                        rounds_ = [
                            {
                                "round": r + 1,
                                "output": "…",
                                "extracted": str(x[r, i]),
                                "correct": bool(x[r, i] >= 0.5),
                                "score": float(x[r, i]),
                            }
                            for r in range(x.shape[0])
                        ]
                        f.write(
                            json.dumps({"task": task, "id": f"{task}-{i}", "gold": "1", "rounds": rounds_})
                            + "\n"
                        )
                (out / f"{task}.metrics.json").write_text(json.dumps(table))
            (out / "summary.md").write_text("# evaluation\n")
            run.log_metrics(metrics)
            run.log_artifact(out, "eval")
        return run.run_id
