"""Filters of thought records: which chains are kept, and why the others are dropped.

Every dropped record carries one ``reason``:

* ``too_long`` — the next prompt (query and attempts so far) no longer fits the model's context;
* ``truncated`` — a thought ran into ``max_new_tokens`` (finish reason "length"; ``allow_truncated``
  keeps such thoughts: they are masked from the answer loss);
* ``answer_truncated`` — the final answer ran into ``answer_max_new_tokens``. Always dropped, whatever
  ``allow_truncated`` says: a model trained on a cut answer learns to stop in mid-sentence;
* ``empty`` — a thought or the answer has fewer than ``min_chars`` non-space characters;
* ``repeated`` — a thought (or the answer) is the previous thought again: similarity of the two texts,
  whitespace-normalized, at or above ``repeat_threshold`` (1.0: identical);
* ``meta_answer`` — the final answer talks about the refinement instead of answering ("Attempt 2",
  "the previous answer", "here is a more precise answer"): trained on, it teaches the model to
  narrate a process the user never sees. Phrases the query itself uses do not count;
* ``inconsistent`` — along the chain, the cosine similarity of the embeddings of some thought and the
  next (or of the final answer and the last thought) is below ``min_consistency``: the chain jumped
  off its topic. Thoughts are checked before the answer is generated;
* ``no_improvement`` — the improvement score below ``min_improvement``;
* ``judge_unparsable`` — a judge model was asked, but neither of its verdicts held a score.

**The improvement score** is in [0, 1]; 0.5 means "as good as the last thought", above means better.
With a judge model it is the mean of the judge's two verdicts (answer as B, then as A, so that a
preference for one position cancels out), each an integer 0..10 read as a tenth, 5 meaning "equally
good": its steps are 0.05, and 0.55 is the least a judge can say for "better" (one verdict one point
better, the other equal). Without a judge it is this heuristic, from the same embeddings:

    improvement = clip(0.5 + (cos(answer, query) − cos(last thought, query))
                           + 0.1 · clip(log2(words(answer) / words(last thought)), −1, 1), 0, 1)

— 0.5 for an answer as close to the query as the last thought and as long; each 0.01 of cosine
relevance gained adds 0.01; doubling the length adds 0.1 (at most), halving it takes 0.1 away.

The default ``min_improvement`` is 0.55: the answer must be judged *better* than the last thought
(the least step above neutral on the judge's scale; for the heuristic, 0.05 more relevance, or an
answer √2 times as long at equal relevance). A threshold at or below 0.5 keeps answers judged no
better, or worse, than the thought they were meant to improve.
"""

from __future__ import annotations

import difflib
import math
import re

from pydantic import BaseModel, ConfigDict, Field

REASONS = (
    "too_long",
    "truncated",
    "answer_truncated",
    "empty",
    "repeated",
    "meta_answer",
    "inconsistent",
    "no_improvement",
    "judge_unparsable",
)

JUDGE_PROMPT = (
    "Two answers to the same question follow.\n\n"
    "Question:\n{query}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "How much better is Answer B than Answer A? Reply with a single integer from 0 to 10: "
    "0 means B is much worse, 5 means they are equally good, 10 means B is much better."
)
_SCORE = re.compile(r"(?<![\d.])(10|[0-9])(?![\d.])")

# Ways a final answer refers to the attempts it was written from, or to its own refinement.
_META = re.compile(
    r"\battempts?\s*(?:#|no\.?\s*)?\d+\b"  # "Attempt 2", "attempt #1"
    r"|\b(?:previous|earlier|prior|above|initial|original|last|first)\s+"
    r"(?:attempts?|answers?|responses?|drafts?|replies|reply)\b"  # "the previous answer"
    r"|\b(?:these|those|both|the\s+two|the\s+above|all\s+the)\s+attempts\b"
    r"|\battempts\s+(?:above|so\s+far)\b"
    r"|\b(?:refined|improved|revised|corrected|updated)\s+(?:answer|response)\b"
    r"|\bmore\s+(?:precise|refined|professional)(?:\s+and\s+\w+)?\s+(?:answer|response|version)\b",
    re.IGNORECASE,
)


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_truncated: bool = False  # thoughts only: a truncated answer always drops its record
    min_chars: int = Field(1, ge=0)
    repeat_threshold: float = Field(1.0, ge=0, le=1)
    min_consistency: float = 0.5
    min_improvement: float = 0.55  # "judged better than the last thought" (see the module's docstring)


def _squash(text: str) -> str:
    return " ".join(text.split())


def similarity(a: str, b: str) -> float:
    """Character-level similarity of two texts after whitespace normalization (1.0: identical)."""
    a, b = _squash(a), _squash(b)
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def text_reason(text: str, previous: str | None, cfg: FilterConfig) -> str | None:
    """``empty`` or ``repeated`` (of ``previous``), or None: the checks that need only the texts."""
    if len("".join(text.split())) < max(cfg.min_chars, 1):
        return "empty"
    if previous is not None:
        if cfg.repeat_threshold >= 1.0:
            if _squash(text) == _squash(previous):
                return "repeated"
        elif similarity(text, previous) >= cfg.repeat_threshold:
            return "repeated"
    return None


def thought_reason(
    text: str, finish_reason: str | None, previous: str | None, cfg: FilterConfig
) -> str | None:
    """Why one thought ends its record, or None to go on."""
    if finish_reason == "length" and not cfg.allow_truncated:
        return "truncated"
    return text_reason(text, previous, cfg)


def meta_phrase(answer: str, query: str = "") -> str | None:
    """The first phrase of ``answer`` that talks about attempts or refinement (and that the query does
    not use itself), or None."""
    asked = query.lower()
    for match in _META.finditer(answer):
        if _squash(match.group(0)).lower() not in _squash(asked):
            return match.group(0)
    return None


def answer_reason(
    text: str, finish_reason: str | None, last_thought: str | None, query: str, cfg: FilterConfig
) -> str | None:
    """Why the final answer drops its record, or None."""
    if finish_reason == "length":
        return "answer_truncated"
    if reason := text_reason(text, last_thought, cfg):
        return reason
    if meta_phrase(text, query) is not None:
        return "meta_answer"
    return None


def heuristic_improvement(
    answer_relevance: float, thought_relevance: float, answer_words: int, thought_words: int
) -> float:
    """The improvement score without a judge (formula and scale in the module's docstring)."""
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


def consistency_reason(consistency: float | None, cfg: FilterConfig) -> str | None:
    """``inconsistent`` when the weakest link of the chain is below ``min_consistency``."""
    if consistency is not None and consistency < cfg.min_consistency:
        return "inconsistent"
    return None


def improvement_reason(improvement: float | None, judged: bool, cfg: FilterConfig) -> str | None:
    if improvement is None:
        return "judge_unparsable" if judged else "no_improvement"
    if improvement < cfg.min_improvement:
        return "no_improvement"
    return None
