"""The promotion rule on its own: metric names, per-question values, the paired bootstrap, guards."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ptr.errors import InputError, PtrError
from ptr.tracking.gate import decide, paired_bootstrap, parse_guard, parse_metric, question_scores

GSM3 = parse_metric("gsm8k.round3")


def _binary(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def _ids(values) -> dict[str, float]:
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_metric_names_and_guards():
    assert parse_metric("gsm8k.round3").key == "eval.gsm8k.round3"
    assert parse_metric("eval.gsm8k.round3") == GSM3
    assert parse_metric("arc_challenge.delta2").key == "eval.arc_challenge.delta2"
    metric, tol = parse_guard("mmlu.round1:0.01")
    assert (metric.key, tol) == ("eval.mmlu.round1", 0.01)
    assert parse_guard("mmlu.round1")[1] == 0.0
    for bad in ("gsm8k", "gsm8k.round0", "gsm8k.delta1", "gsm8k.score3"):
        with pytest.raises(PtrError):
            parse_metric(bad)
    for bad in ("mmlu.round1:x", "mmlu.round1:-0.1"):
        with pytest.raises(PtrError):
            parse_guard(bad)


def test_question_scores_rounds_deltas_and_bad_lines():
    records = [
        (1, {"id": "a", "rounds": [{"round": 1, "score": 0.0}, {"round": 2, "score": 1.0}]}),
        (2, {"id": "b", "rounds": [{"round": 1, "correct": True}, {"round": 2, "correct": False}]}),
        (3, {"id": "c", "rounds": [{"round": 1, "score": None}, {"round": 2, "score": 0.5}]}),
    ]
    assert question_scores(records, parse_metric("t.round2"), "p.jsonl") == {"a": 1.0, "b": 0.0, "c": 0.5}
    # delta2 = round 2 − round 1 per question; a question missing either value is left out
    assert question_scores(records, parse_metric("t.delta2"), "p.jsonl") == {"a": 1.0, "b": -1.0}
    with pytest.raises(InputError, match=r"p.jsonl:1: rounds: no round 3 for question .a."):
        question_scores(records, parse_metric("t.round3"), "p.jsonl")
    with pytest.raises(InputError, match=r"p.jsonl:9: id: .*twice"):
        question_scores([*records, (9, dict(records[0][1]))], parse_metric("t.round1"), "p.jsonl")


def test_bootstrap_is_paired_by_question_id_and_seeded():
    champion = _binary(300, 0.5, seed=1)
    # The candidate fixes 10% of the champion's wrong answers and changes nothing else.
    candidate = champion.copy()
    wrong = np.flatnonzero(champion == 0)
    candidate[wrong[: len(wrong) // 10]] = 1.0
    cand, champ = _ids(candidate), _ids(champion)
    boot = paired_bootstrap(cand, champ, n_boot=2000, seed=0)
    assert boot["n"] == 300
    assert boot["delta"] == pytest.approx(candidate.mean() - champion.mean())
    assert boot["lo"] > 0  # paired: every per-question difference is ≥ 0
    # The same gain judged on unpaired samples would not be significant: pairing is what shows it.
    rng = np.random.default_rng(0)
    unpaired = [rng.choice(candidate, 300).mean() - rng.choice(champion, 300).mean() for _ in range(2000)]
    assert np.percentile(unpaired, 2.5) < 0
    # Pairing is by id, not by position: the same results listed in another order give the same bounds.
    keys = list(cand)
    random.Random(3).shuffle(keys)
    assert paired_bootstrap({k: cand[k] for k in keys}, champ, n_boot=2000, seed=0) == boot


def test_bootstrap_uses_shared_questions_only():
    cand = {"a": 1.0, "b": 1.0, "x": 0.0}
    champ = {"a": 0.0, "b": 1.0, "y": 1.0}
    boot = paired_bootstrap(cand, champ, n_boot=500)
    assert (boot["n"], boot["only_candidate"], boot["only_champion"]) == (2, 1, 1)
    assert boot["delta"] == 0.5
    with pytest.raises(PtrError, match="share no question ids"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})


def _metrics(scores: np.ndarray, **extra) -> dict:
    return {GSM3.key: float(scores.mean()), **extra}


def test_first_model_is_promoted():
    d = decide(primary=GSM3, candidate_metrics={GSM3.key: 0.1}, champion_metrics=None)
    assert d.promote and "no champion" in d.reason
    with pytest.raises(PtrError, match="no metric eval.gsm8k.round3"):
        decide(primary=GSM3, candidate_metrics={"eval.gsm8k.round2": 0.1}, champion_metrics=None)


def test_clearly_better_is_promoted_and_worse_is_kept():
    champ = _binary(400, 0.4, seed=5)
    better = np.maximum(champ, _binary(400, 0.3, seed=6))  # gains only
    d = decide(
        primary=GSM3,
        candidate_metrics=_metrics(better),
        champion_metrics=_metrics(champ),
        candidate_questions=_ids(better),
        champion_questions=_ids(champ),
        n_boot=2000,
    )
    assert d.promote, d.reason
    assert d.primary["lo"] > 0 and d.primary["n"] == 400
    d = decide(
        primary=GSM3,
        candidate_metrics=_metrics(champ),
        champion_metrics=_metrics(better),
        candidate_questions=_ids(champ),
        champion_questions=_ids(better),
        n_boot=2000,
    )
    assert not d.promote and "not better on gsm8k.round3" in d.reason


def test_a_small_gain_without_confidence_is_kept():
    champ = _binary(40, 0.5, seed=7)
    cand = champ.copy()
    cand[np.flatnonzero(champ == 0)[:2]] = 1.0  # +2 right
    cand[np.flatnonzero(champ == 1)[:1]] = 0.0  # −1 right: a gain of 1/40 with noise
    d = decide(
        primary=GSM3,
        candidate_metrics=_metrics(cand),
        champion_metrics=_metrics(champ),
        candidate_questions=_ids(cand),
        champion_questions=_ids(champ),
        n_boot=2000,
    )
    assert d.primary["delta"] > 0 and d.primary["lo"] <= 0
    assert not d.promote and "lower 95% bound" in d.reason


def test_min_delta_raises_the_bar():
    champ = _binary(400, 0.4, seed=8)
    cand = np.maximum(champ, _binary(400, 0.15, seed=9))
    common = dict(
        primary=GSM3,
        candidate_metrics=_metrics(cand),
        champion_metrics=_metrics(champ),
        candidate_questions=_ids(cand),
        champion_questions=_ids(champ),
        n_boot=2000,
    )
    assert decide(**common).promote
    lo = decide(**common).primary["lo"]
    d = decide(**common, min_delta=lo + 0.01)
    assert not d.promote and "--min_delta" in d.reason


def test_guards_block_a_drop_beyond_tolerance():
    champ = _binary(400, 0.4, seed=10)
    cand = np.maximum(champ, _binary(400, 0.3, seed=11))
    common = dict(
        primary=GSM3,
        candidate_metrics=_metrics(cand, **{"eval.mmlu.round1": 0.50}),
        champion_metrics=_metrics(champ, **{"eval.mmlu.round1": 0.53}),
        candidate_questions=_ids(cand),
        champion_questions=_ids(champ),
        n_boot=1000,
    )
    d = decide(**common, guards=[parse_guard("mmlu.round1:0.05")])
    assert d.promote and d.guards[0]["ok"]
    d = decide(**common, guards=[parse_guard("mmlu.round1:0.01")])
    assert not d.promote and "guard mmlu.round1 dropped by 0.0300" in d.reason
    with pytest.raises(PtrError, match="guard arc.round1"):
        decide(**common, guards=[parse_guard("arc.round1:0.01")])
