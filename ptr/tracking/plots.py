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
    """One panel per task: the score of each round (95% interval shaded), with round 1 dashed.

    ``tables`` are evaluation reports ``{task, n, rounds: [{round, score, lo, hi}]}``.
    """
    tables = [t for t in tables if any(r.get("score") is not None for r in t.get("rounds", []))]
    if not tables:
        raise PtrError("no evaluation rounds to plot")
    plt = _pyplot()
    nrows, ncols = _grid(len(tables))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    ordered = sorted(tables, key=lambda t: str(t.get("task")))
    for i, (ax, table) in enumerate(zip(axes.flat, ordered, strict=False)):
        rounds = sorted((r for r in table["rounds"] if r.get("score") is not None), key=lambda r: r["round"])
        xs = [r["round"] for r in rounds]
        ys = [r["score"] for r in rounds]
        ax.plot(xs, ys, marker="o", linewidth=2, alpha=0.8, color=f"C{i}")
        if all(r.get("lo") is not None and r.get("hi") is not None for r in rounds):
            ax.fill_between(
                xs, [r["lo"] for r in rounds], [r["hi"] for r in rounds], alpha=0.2, color=f"C{i}"
            )
        ax.axhline(ys[0], linestyle="--", color="grey", linewidth=1)
        n = f" (n={table['n']})" if table.get("n") is not None else ""
        ax.set_title(f"{table.get('task', '?')}{n}")
        ax.set_xlabel("round")
        ax.set_ylabel("score")
        ax.set_xticks(xs)
        ax.grid(True, linestyle=":", alpha=0.6)
    return _save(plt, fig, axes, len(tables), out)


def _save(plt, fig, axes, used: int, out: Path | str) -> Path:
    """Blank the panels past the ``used`` ones, write the PNG, free the figure."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
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
