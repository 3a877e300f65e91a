"""Round scores and round-to-round deltas with seeded 95% bootstrap confidence intervals.

The delta between rounds is a paired statistic: each bootstrap resample draws the same questions for
both rounds, so the interval reflects the change on the same questions, not two independent samples.
"""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 1000
CONFIDENCE = 0.95


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_ci(values, *, seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict:
    """``{score, lo, hi}`` for the mean of ``values`` (None entries are skipped)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"score": None, "lo": None, "hi": None}
    idx = _resample_indices(x.size, n_boot, seed)
    lo, hi = _interval(x[idx].mean(axis=1))
    return {"score": float(x.mean()), "lo": lo, "hi": hi}


def round_table(scores: list[list[float]], *, seed: int = 0, n_boot: int = N_BOOTSTRAP) -> tuple[list, list]:
    """``scores[r][i]`` is question i's score in round r+1 (same questions in every round).

    Returns ``(rounds, deltas)``: ``[{round, score, lo, hi}]`` and ``[{from, to, delta, lo, hi}]``
    for consecutive rounds.
    """
    if not scores:
        return [], []
    x = np.asarray(scores, dtype=np.float64)  # [rounds, n]
    n = x.shape[1]
    if n == 0:
        rounds = [{"round": r + 1, "score": None, "lo": None, "hi": None} for r in range(x.shape[0])]
        deltas = [
            {"from": r, "to": r + 1, "delta": None, "lo": None, "hi": None} for r in range(1, x.shape[0])
        ]
        return rounds, deltas
    idx = _resample_indices(n, n_boot, seed)
    boot = x[:, idx].mean(axis=2)  # [rounds, n_boot]: the same resample for every round
    rounds = []
    for r in range(x.shape[0]):
        lo, hi = _interval(boot[r])
        rounds.append({"round": r + 1, "score": float(x[r].mean()), "lo": lo, "hi": hi})
    deltas = []
    for r in range(1, x.shape[0]):
        lo, hi = _interval(boot[r] - boot[r - 1])
        deltas.append(
            {"from": r, "to": r + 1, "delta": float(x[r].mean() - x[r - 1].mean()), "lo": lo, "hi": hi}
        )
    return rounds, deltas
