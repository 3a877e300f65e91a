"""Round scores, paired deltas and their bootstrap intervals."""

from __future__ import annotations

import random

import pytest

from ptr.evaluate.metrics import mean_ci, round_table


def test_round_scores_and_intervals():
    rng = random.Random(0)
    r1 = [float(rng.random() < 0.4) for _ in range(200)]
    r2 = [float(rng.random() < 0.6) for _ in range(200)]
    rounds, deltas = round_table([r1, r2], seed=1)
    assert [r["round"] for r in rounds] == [1, 2]
    for r, x in zip(rounds, (r1, r2), strict=True):
        assert r["score"] == pytest.approx(sum(x) / len(x))  # counted by hand, not by the code's numpy
        assert r["lo"] < r["score"] < r["hi"]
        assert 0.05 < r["hi"] - r["lo"] < 0.2  # about ±1.96·sqrt(p(1-p)/n)
    (d,) = deltas
    assert (d["from"], d["to"]) == (1, 2)
    assert d["delta"] == pytest.approx((sum(r2) - sum(r1)) / 200)
    assert d["lo"] < d["delta"] < d["hi"]


def test_intervals_are_seeded():
    x = [[1, 0, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 0, 0, 1, 0]]
    assert round_table(x, seed=5) == round_table(x, seed=5)
    assert round_table(x, seed=5) != round_table(x, seed=6)


def test_delta_is_paired():
    # round 2 gets the same questions right as round 1: the change is exactly zero, with no spread,
    # although each round on its own has a wide interval
    x = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    rounds, (d,) = round_table([x, x])
    assert rounds[0]["hi"] - rounds[0]["lo"] > 0.3
    assert d["delta"] == d["lo"] == d["hi"] == 0.0
    # one more right answer in round 2: the delta is positive and never negative in any resample
    y = [1, 1, 1, 0, 1, 0, 1, 0, 1, 0]
    _, (d,) = round_table([x, y])
    assert d["delta"] == pytest.approx(0.1) and d["lo"] >= 0.0


def test_intervals_narrow_with_more_questions():
    small = mean_ci([1, 0] * 10)
    large = mean_ci([1, 0] * 500)
    assert large["hi"] - large["lo"] < (small["hi"] - small["lo"]) / 3


def test_empty_task():
    rounds, deltas = round_table([[], []])
    assert rounds[0]["score"] is None and deltas[0]["delta"] is None
    assert mean_ci([]) == {"score": None, "lo": None, "hi": None}
