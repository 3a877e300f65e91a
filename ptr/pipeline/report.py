"""The run's headline: task × round scores of the base and the trained model side by side.

Reads the evaluation's ``<task>.metrics.json`` files (``{task, n, rounds: [{round, score, lo, hi}],
deltas: [...]}``) from two folders and renders one Markdown table: each score with its 95% interval,
and Δk, the change from round k−1 with its paired interval — the number PTR is about (a base model
tends to get worse when asked to refine, a PTR model better).
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


def _rounds(metrics: dict | None) -> dict[int, dict]:
    return {int(r["round"]): r for r in (metrics or {}).get("rounds", []) if r.get("score") is not None}


def _deltas(metrics: dict | None) -> dict[int, dict]:
    return {int(d["to"]): d for d in (metrics or {}).get("deltas", []) if d.get("delta") is not None}


def _cell(entry: dict | None, key: str, signed: bool = False) -> str:
    """``40.0 [30.0, 50.0]``: the value in percent with its 95% interval (where there is one)."""
    if entry is None or entry.get(key) is None:
        return "—"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * entry[key])
    if entry.get("lo") is not None and entry.get("hi") is not None:
        text += f" [{fmt.format(100 * entry['lo'])}, {fmt.format(100 * entry['hi'])}]"
    return text


def comparison_table(base: dict[str, dict], trained: dict[str, dict]) -> str:
    """Markdown: one row per task, ``base r1..rR Δ2..ΔR | trained r1..rR Δ2..ΔR``: scores in % with
    their 95% bootstrap intervals; Δk is the paired change from round k−1 (its interval paired too)."""
    tasks = sorted(set(base) | set(trained))
    rounds = sorted({r for m in (*base.values(), *trained.values()) for r in _rounds(m)})
    if not tasks or not rounds:
        return "_no evaluation results_\n"
    head = ["task", "n"]
    for who in ("base", "trained"):
        head += [f"{who} r{r}" for r in rounds] + [f"{who} Δ{r}" for r in rounds[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        n = (trained.get(task) or base.get(task) or {}).get("n", "")
        row = [task, str(n)]
        for metrics in (base.get(task), trained.get(task)):
            scores, deltas = _rounds(metrics), _deltas(metrics)
            row += [_cell(scores.get(r), "score") for r in rounds]
            row += [_cell(deltas.get(r), "delta", signed=True) for r in rounds[1:]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
