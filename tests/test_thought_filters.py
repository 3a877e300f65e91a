"""Each filter threshold at its boundary (just below drops, at or above keeps), the answer's own token
budget, and answers that talk about their refinement.

The chains run through ``run_thoughts`` as a real run does; only the two things a boundary test must
choose exactly are stand-ins: a scripted model (no real model can be made to write a chosen text with
a chosen finish reason) and a stub scorer (the similarities the filters read).
"""

from __future__ import annotations

import json

import pytest

from ptr.data.filters import FilterConfig, similarity, text_reason
from ptr.data.model_pool import ModelPool, parse_spec
from ptr.data.thoughts import ThoughtsConfig, run_thoughts
from ptr.inference import Backend, Completion
from ptr.prompts import FINAL_ANSWER_INSTRUCTION

QUERIES = ["What is 7 times 8?", "Name three colors."]


class ScriptedModel(Backend):
    """Thought t is ``Thought t <query>``, the answer ``Final answer <query>`` (equal word counts, so the
    heuristic's length term is 0), judge verdicts as given; every call's budget is recorded."""

    name = model_name = "scripted"

    @classmethod
    def from_options(cls, model_ref, options):
        return cls()

    def __init__(
        self, answer="Final answer {query}", answer_finish="stop", thought_finish="stop", verdicts=()
    ):
        self.answer, self.answer_finish, self.thought_finish = answer, answer_finish, thought_finish
        self.verdicts = verdicts  # (answer as B, answer as A)
        self.budgets: dict[str, set[int]] = {}

    def generate(self, conversations, params, *, progress=None, session=None, keys=None, keep=True):
        return [self._reply(conv, params) for conv in conversations]

    def _reply(self, conv, params) -> Completion:
        content = conv[-1]["content"]
        if content.startswith("Two answers"):
            role = "judge"
            forward = "Answer B:\nFinal" in content  # the answer in second place
            text, finish = self.verdicts[0 if forward else 1], "stop"
        elif content.startswith(FINAL_ANSWER_INSTRUCTION):
            role = "answer"
            query = content.split("Question:\n", 1)[1].split("\n\nAttempt 1:", 1)[0]
            text, finish = self.answer.format(query=query), self.answer_finish
        else:
            role = "thought"
            t = 1 + sum(m["role"] == "assistant" for m in conv)
            text, finish = f"Thought {t} {conv[0]['content']}", self.thought_finish
        self.budgets.setdefault(role, set()).add(params.max_new_tokens)
        return Completion(text, prompt_tokens=0, completion_tokens=len(text.split()), finish_reason=finish)


class StubScorer:
    """Similarities by the kinds of text a pair joins: thought-thought, answer-thought, or either with
    the query (relevance)."""

    def __init__(self, thought_link=0.9, answer_link=0.9, thought_relevance=0.5, answer_relevance=0.5):
        self.values = {
            ("thought", "thought"): thought_link,
            ("answer", "thought"): answer_link,
            ("thought", "query"): thought_relevance,
            ("answer", "query"): answer_relevance,
        }

    def load(self) -> None:
        pass

    @staticmethod
    def kind(text: str) -> str:
        return "thought" if text.startswith("Thought") else "answer" if text.startswith("Final") else "query"

    def similarities(self, pairs):
        return [self.values[(self.kind(a), self.kind(b))] for a, b in pairs]


def _run(tmp_path, model=None, scorer=None, **config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(QUERIES)))
    model = model or ScriptedModel()
    cfg = ThoughtsConfig(
        queries=str(queries),
        output_path=str(tmp_path / "t.jsonl"),
        weak_models=["scripted"],
        strong_model="scripted",
        progress=False,
        **config,
    )
    pool = ModelPool(preloaded={parse_spec("scripted"): model})
    summary = run_thoughts(cfg, pool=pool, scorer=scorer or StubScorer())
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    return summary, rows


def test_a_well_formed_chain_is_kept_with_its_scores(tmp_path):
    summary, rows = _run(tmp_path, scorer=StubScorer(answer_relevance=0.6))
    assert summary["kept"] == 2
    r = rows[0]
    assert [t["text"] for t in r["thoughts"]] == [
        "Thought 1 What is 7 times 8?",
        "Thought 2 What is 7 times 8?",
    ]
    assert r["scores"]["link_consistency"] == [0.9, 0.9] and r["scores"]["consistency"] == 0.9
    assert r["scores"]["improvement"] == r["scores"]["heuristic_improvement"] == 0.6


@pytest.mark.parametrize("value, kept", [(0.4999, False), (0.5, True), (0.7, True)])
@pytest.mark.parametrize("link", ["thought_link", "answer_link"])
def test_min_consistency_boundary_along_the_chain(tmp_path, link, value, kept):
    """Default min_consistency 0.5, checked on every link: thought 1→2, then answer→thought 2."""
    summary, rows = _run(tmp_path, scorer=StubScorer(**{link: value}, answer_relevance=0.6))
    assert summary["kept"] == (2 if kept else 0)
    for r in rows:
        assert r["reason"] == (None if kept else "inconsistent")
        # a broken thought link stops the chain before the strong model is asked
        assert (r["answer"] is None) == (link == "thought_link" and not kept)


@pytest.mark.parametrize("answer_relevance, kept", [(0.5, False), (0.5499, False), (0.55, True), (0.8, True)])
def test_min_improvement_boundary_means_judged_better(tmp_path, answer_relevance, kept):
    """Default min_improvement 0.55 on the heuristic: as relevant as the last thought (0.5, neutral) is
    not an improvement; 0.05 more relevance at equal length is."""
    summary, rows = _run(
        tmp_path, scorer=StubScorer(thought_relevance=0.5, answer_relevance=answer_relevance)
    )
    assert [r["scores"]["improvement"] for r in rows] == [answer_relevance] * 2
    assert [r["reason"] for r in rows] == [None if kept else "no_improvement"] * 2


@pytest.mark.parametrize(
    "verdicts, improvement, kept",
    [(("5", "5"), 0.5, False), (("6", "6"), 0.5, False), (("6", "5"), 0.55, True), (("8", "3"), 0.75, True)],
)
def test_judge_boundary_one_point_better_is_kept(tmp_path, verdicts, improvement, kept):
    """The judge's scale: forward verdict f, backward b → (f + 1 − b) / 2; 0.55 is its least 'better'."""
    summary, rows = _run(tmp_path, model=ScriptedModel(verdicts=verdicts), judge_model="scripted")
    for r in rows:
        assert r["scores"]["improvement"] == improvement
        assert r["reason"] == (None if kept else "no_improvement")


def test_min_improvement_threshold_is_configurable(tmp_path):
    summary, _ = _run(tmp_path, filters={"min_improvement": 0.5})  # neutral answers allowed
    assert summary["kept"] == 2


def test_answer_has_its_own_budget_three_times_a_thought(tmp_path):
    model = ScriptedModel()
    _run(tmp_path, model=model, max_new_tokens=10, scorer=StubScorer(answer_relevance=0.6))
    assert model.budgets == {"thought": {10}, "answer": {30}}
    model = ScriptedModel()
    _run(tmp_path / "b", model=model, max_new_tokens=10, answer_max_new_tokens=7)
    assert model.budgets["answer"] == {7}


def test_truncated_answer_drops_even_when_truncated_thoughts_are_allowed(tmp_path):
    model = ScriptedModel(answer_finish="length", thought_finish="length")
    summary, rows = _run(tmp_path, model=model, filters={"allow_truncated": True})
    assert summary["dropped"] == {"answer_truncated": 2} and summary["kept"] == 0
    assert all(len(r["thoughts"]) == 2 and r["answer"]["finish_reason"] == "length" for r in rows)
    # cut thoughts with a whole answer are kept (the thoughts are masked from the answer loss)
    summary, _ = _run(
        tmp_path / "b",
        model=ScriptedModel(thought_finish="length"),
        scorer=StubScorer(answer_relevance=0.6),
        filters={"allow_truncated": True},
    )
    assert summary["kept"] == 2


@pytest.mark.parametrize(
    "answer",
    [
        "Building on Attempt 2: {query}",
        "The previous answer missed a step. {query}",
        "Both attempts agree: {query}",
        "Here is a more precise and professional answer: {query}",
        "Refined answer: {query}",
    ],
)
def test_answers_about_the_refinement_are_dropped(tmp_path, answer):
    summary, rows = _run(
        tmp_path, model=ScriptedModel(answer="Final " + answer), scorer=StubScorer(answer_relevance=0.6)
    )
    assert summary["dropped"] == {"meta_answer": 2}
    assert all(r["answer"] is not None for r in rows)


def test_a_phrase_the_query_uses_is_not_meta(tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": "Why did my previous answer fail the review?"}) + "\n")
    cfg = ThoughtsConfig(
        queries=str(queries),
        output_path=str(tmp_path / "t.jsonl"),
        weak_models=["scripted"],
        strong_model="scripted",
        progress=False,
    )
    model = ScriptedModel(answer="Final answer: your previous answer skipped the tests.")
    summary = run_thoughts(
        cfg,
        pool=ModelPool(preloaded={parse_spec("scripted"): model}),
        scorer=StubScorer(answer_relevance=0.6),
    )
    assert summary["kept"] == 1


def test_min_chars_and_repeat_threshold_boundaries():
    assert text_reason("ab cde", None, FilterConfig(min_chars=5)) is None  # 5 non-space characters
    assert text_reason("ab cde", None, FilterConfig(min_chars=6)) == "empty"
    ratio = similarity("the cat sat", "the cat sit")
    assert 0 < ratio < 1
    assert text_reason("the cat sat", "the cat sit", FilterConfig(repeat_threshold=ratio)) == "repeated"
    assert text_reason("the cat sat", "the cat sit", FilterConfig(repeat_threshold=ratio + 1e-4)) is None
