"""Filters of thought records: which chains are kept, and why the others are dropped.

Every dropped record carries one ``reason``:

* ``too_long`` — the next prompt (query and attempts so far) no longer fits the model's context;
* ``truncated`` — an attempt or the answer ran into ``max_new_tokens`` (finish reason "length");
* ``empty`` — an attempt or the answer has fewer than ``min_chars`` non-space characters;
* ``repeated`` — an attempt (or the answer) is the previous attempt again: similarity of the two texts,
  whitespace-normalized, at or above ``repeat_threshold`` (1.0: identical);
* ``inconsistent`` — cosine similarity of the embeddings of the final answer and the last thought below
  ``min_consistency``: the answer jumped off the chain's topic;
* ``no_improvement`` — the improvement score below ``min_improvement``;
* ``judge_unparsable`` — a judge model was asked, but neither of its verdicts held a score.

The improvement score is in [0, 1], 0.5 meaning "as good as the last thought". With a judge model it is
the judge's verdict (below); without one it is this heuristic, from the same embeddings:

    improvement = clip(0.5 + (cos(answer, query) − cos(last thought, query))
                           + 0.1 · clip(log2(words(answer) / words(last thought)), −1, 1), 0, 1)

— an answer that stays at least as close to the query as the last thought and is not much shorter
scores 0.5 or more; one that drifts from the query or collapses to a fragment scores less.
"""

from __future__ import annotations

import difflib
import math
import re

from pydantic import BaseModel, ConfigDict, Field

REASONS = ("too_long", "truncated", "empty", "repeated", "inconsistent", "no_improvement", "judge_unparsable")

JUDGE_PROMPT = (
    "Two answers to the same question follow.\n\n"
    "Question:\n{query}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "How much better is Answer B than Answer A? Reply with a single integer from 0 to 10: "
    "0 means B is much worse, 5 means they are equally good, 10 means B is much better."
)
_SCORE = re.compile(r"(?<![\d.])(10|[0-9])(?![\d.])")


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_truncated: bool = False
    min_chars: int = Field(1, ge=0)
    repeat_threshold: float = Field(1.0, ge=0, le=1)
    min_consistency: float = 0.5
    min_improvement: float = 0.4


def _squash(text: str) -> str:
    return " ".join(text.split())


def similarity(a: str, b: str) -> float:
    """Character-level similarity of two texts after whitespace normalization (1.0: identical)."""
    a, b = _squash(a), _squash(b)
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def attempt_reason(text: str, finish_reason: str, previous: str | None, cfg: FilterConfig) -> str | None:
    """Why one attempt (a thought or the answer) ends its record, or None to go on."""
    if finish_reason == "length" and not cfg.allow_truncated:
        return "truncated"
    if len("".join(text.split())) < max(cfg.min_chars, 1):
        return "empty"
    if previous is not None:
        if cfg.repeat_threshold >= 1.0:
            if _squash(text) == _squash(previous):
                return "repeated"
        elif similarity(text, previous) >= cfg.repeat_threshold:
            return "repeated"
    return None


def heuristic_improvement(
    answer_relevance: float, thought_relevance: float, answer_words: int, thought_words: int
) -> float:
    ratio = math.log2(max(answer_words, 1) / max(thought_words, 1))
    score = 0.5 + (answer_relevance - thought_relevance) + 0.1 * max(-1.0, min(1.0, ratio))
    return max(0.0, min(1.0, score))


def judge_conversations(query: str, last_thought: str, answer: str) -> list[list[dict]]:
    """The two judge prompts: answer as B (is it better?), then as A (is the thought better?), so that
    a judge's preference for one position cancels out."""
    return [
        [{"role": "user", "content": JUDGE_PROMPT.format(query=query, a=last_thought, b=answer)}],
        [{"role": "user", "content": JUDGE_PROMPT.format(query=query, a=answer, b=last_thought)}],
    ]


def parse_verdict(text: str) -> float | None:
    """The first score 0..10 in a judge's reply, as a fraction; None when there is none."""
    m = _SCORE.search(text)
    return int(m.group(1)) / 10 if m else None


def judged_improvement(forward: float | None, backward: float | None) -> float | None:
    """Improvement from the two verdicts (answer as B, answer as A); None when neither parsed."""
    votes = [v for v in (forward, None if backward is None else 1.0 - backward) if v is not None]
    return sum(votes) / len(votes) if votes else None


def final_reason(
    consistency: float, improvement: float | None, judged: bool, cfg: FilterConfig
) -> str | None:
    if consistency < cfg.min_consistency:
        return "inconsistent"
    if improvement is None:
        return "judge_unparsable" if judged else "no_improvement"
    if improvement < cfg.min_improvement:
        return "no_improvement"
    return None
