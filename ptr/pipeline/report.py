"""The run's headline: task × round scores of the base and the trained model side by side.

Reads the evaluation's ``<task>.metrics.json`` files (``{task, n, rounds: [{round, score, lo, hi}],
deltas: [...]}``) from two folders and renders one Markdown table; Δ is the last round minus the first,
the number PTR is about (a base model tends to get worse when asked to refine, a PTR model better).
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(folder: str | Path) -> dict[str, dict]:
    """``{task: metrics}`` for every ``*.metrics.json`` under ``folder`` (searched recursively)."""
    found = {}
    for path in sorted(Path(folder).rglob("*.metrics.json")):
        data = json.loads(path.read_text())
        found[data.get("task") or path.name.removesuffix(".metrics.json")] = data
    return found


def _scores(metrics: dict | None) -> dict[int, float]:
    return {int(r["round"]): float(r["score"]) for r in (metrics or {}).get("rounds", [])}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _delta(scores: dict[int, float]) -> str:
    if len(scores) < 2:
        return "—"
    value = 100 * (scores[max(scores)] - scores[min(scores)])
    return f"{value:+.1f}"


def comparison_table(base: dict[str, dict], trained: dict[str, dict]) -> str:
    """Markdown: one row per task, ``base r1..rR Δ | trained r1..rR Δ`` (scores in %)."""
    tasks = sorted(set(base) | set(trained))
    rounds = sorted({r for m in (*base.values(), *trained.values()) for r in _scores(m)})
    if not tasks or not rounds:
        return "_no evaluation results_\n"
    head = ["task", "n"]
    head += [f"base r{r}" for r in rounds] + ["base Δ"]
    head += [f"trained r{r}" for r in rounds] + ["trained Δ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        b, t = _scores(base.get(task)), _scores(trained.get(task))
        n = (trained.get(task) or base.get(task) or {}).get("n", "")
        row = [task, str(n)]
        row += [_cell(b.get(r)) for r in rounds] + [_delta(b)]
        row += [_cell(t.get(r)) for r in rounds] + [_delta(t)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
