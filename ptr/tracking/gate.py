"""The promotion rule, free of MLflow so that it is tested on its own.

A candidate replaces the champion only when

* on the primary metric it is better, with the lower bound of the 95% paired bootstrap interval of
  the difference (candidate − champion, per question, paired by question id) above ``min_delta``;
* and no guard metric drops by more than its tolerance (candidate ≥ champion − tolerance).

With no champion, the candidate must pass the same test against a reference: the base model's
evaluation from the same pipeline run (``versus`` names it). With neither, it is promoted. Metric names are short for the evaluation's metrics:
``gsm8k.round3`` is ``eval.gsm8k.round3``, the score of round 3; ``gsm8k.delta3`` is
``eval.gsm8k.delta3``, the change from round 2 to round 3 (per question: score₃ − score₂).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ptr.errors import InputError, PtrError

_METRIC = re.compile(r"^(?:eval\.)?(?P<task>[A-Za-z0-9_\-]+)\.(?P<kind>round|delta)(?P<k>\d+)$")
N_BOOT = 10000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class MetricName:
    task: str
    kind: str  # "round" or "delta"
    k: int

    @property
    def key(self) -> str:
        return f"eval.{self.task}.{self.kind}{self.k}"

    @property
    def short(self) -> str:
        return f"{self.task}.{self.kind}{self.k}"


def parse_metric(text: str) -> MetricName:
    m = _METRIC.match(text.strip())
    if not m:
        raise PtrError(f"metric {text!r}: expected TASK.roundK or TASK.deltaK, such as gsm8k.round3")
    k = int(m["k"])
    if k < 1 or (m["kind"] == "delta" and k < 2):
        raise PtrError(f"metric {text!r}: rounds count from 1, and deltaK compares round K with K-1 (K ≥ 2)")
    return MetricName(m["task"], m["kind"], k)


def parse_guard(text: str) -> tuple[MetricName, float]:
    """``mmlu.round1:0.01`` → (metric, tolerance); a guard without ``:tol`` allows no drop."""
    name, _, tol = text.partition(":")
    try:
        tolerance = float(tol) if tol else 0.0
    except ValueError:
        raise PtrError(f"--guard {text!r}: the tolerance after ':' must be a number") from None
    if tolerance < 0:
        raise PtrError(f"--guard {text!r}: the tolerance must not be negative")
    return parse_metric(name), tolerance


def question_scores(records: list[tuple[int, dict]], metric: MetricName, path) -> dict[str, float]:
    """Per-question values of ``metric`` from prediction lines ``(line_no, {id, rounds: [...]})``.

    A round's value is its ``score`` (else ``correct`` as 0/1); questions whose value is missing
    (``null``) are left out, as the evaluation leaves them out of its mean."""

    def value(lineno: int, rec: dict, k: int) -> float | None:
        for r in rec.get("rounds") or []:
            if isinstance(r, dict) and r.get("round") == k:
                v = r.get("score", r.get("correct"))
                return None if v is None else float(v)
        raise InputError(path, lineno, f"no round {k} for question {rec.get('id')!r}", field="rounds")

    scores: dict[str, float] = {}
    for lineno, rec in records:
        if "id" not in rec:
            raise InputError(path, lineno, "missing required field", field="id")
        qid = str(rec["id"])
        if qid in scores:
            raise InputError(path, lineno, f"question id {qid!r} appears twice", field="id")
        now = value(lineno, rec, metric.k)
        if metric.kind == "delta":
            before = value(lineno, rec, metric.k - 1)
            now = None if now is None or before is None else now - before
        if now is not None:
            scores[qid] = now
    return scores


def paired_bootstrap(
    candidate: dict[str, float],
    champion: dict[str, float],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict:
    """Mean of (candidate − champion) over the questions both answered, and its bootstrap interval.

    Each resample draws question ids with replacement and takes the same ids from both models, so the
    interval is that of the paired difference. Seeded: the same inputs give the same bounds."""
    ids = sorted(set(candidate) & set(champion))
    if not ids:
        raise PtrError("the candidate's and the champion's evaluations share no question ids")
    diff = np.array([candidate[i] - champion[i] for i in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(ids))  # bounded memory on large evaluation sets
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = diff[rng.integers(0, len(ids), size=(stop - start, len(ids)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {
        "n": len(ids),
        "only_candidate": len(set(candidate) - set(champion)),
        "only_champion": len(set(champion) - set(candidate)),
        "delta": float(diff.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "confidence": confidence,
        "n_boot": n_boot,
        "seed": seed,
    }


@dataclass
class Decision:
    promote: bool
    reason: str
    primary: dict = field(default_factory=dict)
    guards: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def decide(
    *,
    primary: MetricName,
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    candidate_questions: dict[str, float] | None = None,
    champion_questions: dict[str, float] | None = None,
    guards: list[tuple[MetricName, float]] = (),
    min_delta: float = 0.0,
    n_boot: int = N_BOOT,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    versus: str = "champion",
) -> Decision:
    """Apply the rule. ``*_metrics`` map full metric keys (``eval.gsm8k.round3``) to values;
    ``*_questions`` map question ids to the primary metric's per-question values. ``champion_*`` is
    what the candidate must beat; ``versus`` says what that is (``champion``, or ``base model …``
    while there is no champion)."""
    if primary.key not in candidate_metrics:
        raise PtrError(f"the candidate's evaluation has no metric {primary.key}")
    if champion_metrics is None:
        return Decision(
            True,
            "no champion yet and no base evaluation to compare with: the first evaluated model is promoted",
            {"metric": primary.key, "candidate": candidate_metrics[primary.key]},
        )
    if primary.key not in champion_metrics:
        raise PtrError(f"the {versus}'s evaluation has no metric {primary.key}")
    if candidate_questions is None or champion_questions is None:
        raise PtrError(f"per-question results for {primary.short} are needed for the bootstrap bound")
    boot = paired_bootstrap(
        candidate_questions, champion_questions, n_boot=n_boot, seed=seed, confidence=confidence
    )
    summary = {
        "metric": primary.key,
        "candidate": candidate_metrics[primary.key],
        "champion": champion_metrics[primary.key],
        "versus": versus,
        "min_delta": min_delta,
        **boot,
    }
    guard_rows = []
    for metric, tolerance in guards:
        for who, table in (("candidate", candidate_metrics), (versus, champion_metrics)):
            if metric.key not in table:
                raise PtrError(f"guard {metric.short}: the {who}'s evaluation has no metric {metric.key}")
        drop = champion_metrics[metric.key] - candidate_metrics[metric.key]
        guard_rows.append(
            {
                "metric": metric.key,
                "candidate": candidate_metrics[metric.key],
                "champion": champion_metrics[metric.key],
                "tolerance": tolerance,
                "drop": drop,
                "ok": drop <= tolerance + 1e-12,
            }
        )
    pct = f"{confidence:.0%}"
    against = "" if versus == "champion" else f" than the {versus}"
    if boot["delta"] <= 0:
        reason = (
            f"not better{against} on {primary.short}: paired difference {boot['delta']:+.4f} over {boot['n']} questions "
            f"({pct} interval [{boot['lo']:+.4f}, {boot['hi']:+.4f}])"
        )
        return Decision(False, reason, summary, guard_rows)
    if boot["lo"] <= min_delta:
        reason = (
            f"better{against} on {primary.short} by {boot['delta']:+.4f}, but the lower {pct} bound {boot['lo']:+.4f} "
            f"is not above --min_delta {min_delta:g} ({boot['n']} questions)"
        )
        return Decision(False, reason, summary, guard_rows)
    failed = [g for g in guard_rows if not g["ok"]]
    if failed:
        reason = "; ".join(
            f"guard {g['metric'][5:]} dropped by {g['drop']:.4f} (> tolerance {g['tolerance']:g})"
            for g in failed
        )
        return Decision(False, reason, summary, guard_rows)
    reason = (
        f"better{against} on {primary.short} by {boot['delta']:+.4f} ({pct} interval [{boot['lo']:+.4f}, {boot['hi']:+.4f}], "
        f"{boot['n']} questions, lower bound above {min_delta:g})"
        + (f"; {len(guard_rows)} guard(s) within tolerance" if guard_rows else "")
    )
    return Decision(True, reason, summary, guard_rows)
