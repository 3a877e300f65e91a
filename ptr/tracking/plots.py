"""PNG plots logged with runs: score vs refinement round per task, and training loss curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ptr.errors import PtrError

# Trainer metrics drawn first and in this order; any other numeric key follows.
LOSS_KEYS = ("loss", "nll", "consistency", "confidence")
_NOT_CURVES = {"step", "epoch", "time", "elapsed", "timestamp", "rank", "tokens", "examples"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, ncols: int = 3):
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


def score_vs_round(tables: list[dict], out: Path | str) -> Path:
    """One panel per task: each model's score (in %) per round, 95% interval shaded; with a single
    model, round 1 is drawn dashed across so that gains and losses read at a glance.

    ``tables`` are evaluation reports ``{task, n, rounds: [{round, score, lo, hi}]}`` (scores as
    fractions), with an optional ``model`` naming the line when several models share a task.
    """
    tables = [t for t in tables if any(r.get("score") is not None for r in t.get("rounds", []))]
    if not tables:
        raise PtrError("no evaluation rounds to plot")
    by_task: dict[str, list[dict]] = {}
    for table in tables:
        by_task.setdefault(str(table.get("task", "?")), []).append(table)
    tasks = sorted(by_task)
    plt = _pyplot()
    nrows, ncols = _grid(len(tasks), ncols=4 if len(tasks) > 9 else 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        group = by_task[task]
        ticks: set[int] = set()
        for i, table in enumerate(group):
            rounds = sorted(
                (r for r in table["rounds"] if r.get("score") is not None), key=lambda r: r["round"]
            )
            xs = [r["round"] for r in rounds]
            ys = [100 * r["score"] for r in rounds]
            ticks.update(xs)
            ax.plot(xs, ys, marker="o", linewidth=2, alpha=0.8, color=f"C{i}", label=table.get("model"))
            if all(r.get("lo") is not None and r.get("hi") is not None for r in rounds):
                lo, hi = [100 * r["lo"] for r in rounds], [100 * r["hi"] for r in rounds]
                ax.fill_between(xs, lo, hi, alpha=0.15, color=f"C{i}")
            if len(group) == 1:
                ax.axhline(ys[0], linestyle="--", color="grey", linewidth=1)
        if len(group) > 1:
            ax.legend(fontsize=7, loc="best")
        n = f" (n={group[0]['n']})" if group[0].get("n") is not None else ""
        metric = f" · {group[0]['metric']}" if group[0].get("metric") else ""
        ax.set_title(f"{task}{metric}{n}", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("score (%)")
        ax.set_ylim(0, max(10.0, ax.get_ylim()[1]))  # flat zero lines get a readable axis
        ax.set_xticks(sorted(ticks))
        ax.grid(True, linestyle=":", alpha=0.6)
    return _save(plt, fig, axes, len(tasks), out)


def _save(plt, fig, axes, used: int, out: Path | str) -> Path:
    """Blank the panels past the ``used`` ones, write the PNG, free the figure."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out


def read_loss_log(path: Path | str) -> list[dict]:
    """Records of a trainer's ``metrics.jsonl`` that carry a step; torn or foreign lines are skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int | float):
                records.append(record)
    return records


def loss_curves(records: list[dict], out: Path | str, keys: list[str] | None = None) -> Path:
    """One panel per metric (``loss``, ``nll``, ``consistency``, ``confidence``, then others) vs step."""
    if keys is None:
        numeric = {
            k
            for r in records
            for k, v in r.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_CURVES
        }
        keys = [k for k in LOSS_KEYS if k in numeric] + sorted(numeric - set(LOSS_KEYS))
    keys = keys[:9]
    if not keys:
        raise PtrError("no loss values to plot (expected keys such as step, loss, nll)")
    plt = _pyplot()
    nrows, ncols = _grid(len(keys), ncols=2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = sorted((r["step"], r[key]) for r in records if isinstance(r.get(key), int | float))
        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.5)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, linestyle=":", alpha=0.6)
    return _save(plt, fig, axes, len(keys), out)
