"""The base-vs-trained table read from the evaluation's metrics files."""

from __future__ import annotations

import json

from ptr.pipeline.report import comparison_table, read_metrics


def _metrics(folder, task, scores, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    rounds = [{"round": i + 1, "score": s, "lo": s - 0.1, "hi": s + 0.1} for i, s in enumerate(scores)]
    deltas = [
        {"from": i, "to": i + 1, "delta": b - a, "lo": b - a - 0.05, "hi": b - a + 0.05}
        for i, (a, b) in enumerate(zip(scores, scores[1:], strict=False), 1)
    ]
    (folder / f"{task}.metrics.json").write_text(
        json.dumps({"task": task, "n": n, "rounds": rounds, "deltas": deltas})
    )


def test_side_by_side_table(tmp_path):
    _metrics(tmp_path / "base", "arith", [0.4, 0.2])
    _metrics(tmp_path / "base", "gsm8k", [0.1, 0.1])
    _metrics(tmp_path / "trained", "arith", [0.4, 0.6])
    table = comparison_table(read_metrics(tmp_path / "base"), read_metrics(tmp_path / "trained"))
    lines = table.strip().splitlines()
    assert lines[0] == "| task | n | base r1 | base r2 | base Δ2 | trained r1 | trained r2 | trained Δ2 |"
    assert lines[2] == (
        "| arith | 5 | 40.0 [30.0, 50.0] | 20.0 [10.0, 30.0] | -20.0 [-25.0, -15.0] "
        "| 40.0 [30.0, 50.0] | 60.0 [50.0, 70.0] | +20.0 [+15.0, +25.0] |"
    )
    assert lines[3] == "| gsm8k | 5 | 10.0 [0.0, 20.0] | 10.0 [0.0, 20.0] | +0.0 [-5.0, +5.0] | — | — | — |"


def test_no_results(tmp_path):
    assert "no evaluation results" in comparison_table({}, {})
