"""What happens to an encoded example longer than ``max_length`` (``--overflow``).

* ``drop``: the example is dropped (``too_long``).
* ``truncate``: the tail is cut off (counted as ``truncated``); whatever was cut has no end-of-turn.
* ``shorten_thoughts``: thoughts lose tokens from their ends until the example fits, and the final
  answer stays whole. Thoughts are masked from the answer loss, so a shorter thought costs little; a
  cut is where a length-limited generation would have stopped anyway. The longest thoughts are cut
  first, to a common length (each keeps at least one token), and a shortened thought's end-of-turn
  token gets no weight, so the model never learns to stop there. An example whose answer and prompt
  alone do not fit is dropped (``answer_too_long``).

Works on token ids and segment codes, so nothing is tokenized twice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ptr.encode.shards import IGNORE, MAX_THOUGHTS

Overflow = Literal["drop", "truncate", "shorten_thoughts"]
MIN_THOUGHT_TOKENS = 1  # a shortened thought still says something


class Fit:
    """The outcome for one example: ``ids``/``segments`` to write, or ``dropped`` with the reason."""

    __slots__ = ("dropped", "ids", "segments", "shortened", "truncated")

    def __init__(self, ids=None, segments=None, *, dropped=None, truncated=False, shortened=False):
        self.ids, self.segments, self.dropped = ids, segments, dropped
        self.truncated, self.shortened = truncated, shortened


def fit(
    ids: np.ndarray, segments: np.ndarray, max_length: int, mode: Overflow, end_of_turn: frozenset[int]
) -> Fit:
    """``ids``/``segments`` made to fit ``max_length`` as ``mode`` says."""
    excess = len(ids) - max_length
    if excess <= 0:
        return Fit(ids, segments)
    if mode == "drop":
        return Fit(dropped="too_long")
    if mode == "truncate":
        return Fit(ids[:max_length], segments[:max_length], truncated=True)
    return shorten_thoughts(ids, segments, excess, end_of_turn)


def _thought_spans(ids: np.ndarray, segments: np.ndarray, end_of_turn: frozenset[int]):
    """``(first content token, end of content, end-of-turn index or None)`` per thought, in order."""
    is_thought = (segments > IGNORE) & (segments <= MAX_THOUGHTS)
    if not is_thought.any():
        return []
    # Runs of one thought code: a thought's tokens are contiguous (content, then its end-of-turn).
    change = np.flatnonzero(np.diff(segments) != 0) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(segments)]])
    spans = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if not is_thought[start]:
            continue
        eot = end - 1 if end - start > 1 and int(ids[end - 1]) in end_of_turn else None
        spans.append((start, end if eot is None else eot, eot))
    return spans


def _cap(lengths: list[int], excess: int) -> list[int]:
    """Tokens each thought keeps: the longest cut first, down to a common cap, so that at least
    ``excess`` tokens go (exactly ``excess`` when it can be split that way)."""
    removable = sum(max(n - MIN_THOUGHT_TOKENS, 0) for n in lengths)
    if removable < excess:
        raise ValueError("the thoughts cannot give up enough tokens")
    lo, hi = MIN_THOUGHT_TOKENS, max(lengths)
    while lo < hi:  # the largest cap that removes at least `excess` tokens
        mid = (lo + hi + 1) // 2
        if sum(max(n - mid, 0) for n in lengths) >= excess:
            lo = mid
        else:
            hi = mid - 1
    keep = [min(n, lo) for n in lengths]
    spare = sum(lengths) - sum(keep) - excess  # removed beyond need: give those tokens back
    for i, n in enumerate(lengths):
        if spare == 0:
            break
        if n > keep[i]:
            keep[i] += 1
            spare -= 1
    return keep


def shorten_thoughts(ids: np.ndarray, segments: np.ndarray, excess: int, end_of_turn: frozenset[int]) -> Fit:
    spans = _thought_spans(ids, segments, end_of_turn)
    if not spans:
        return Fit(dropped="too_long")
    lengths = [end - start for start, end, _ in spans]
    try:
        keep = _cap(lengths, excess)
    except ValueError:
        return Fit(dropped="answer_too_long")
    mask = np.ones(len(ids), dtype=bool)
    segments = segments.copy()
    for (start, end, eot), n, kept in zip(spans, lengths, keep, strict=True):
        if kept < n:
            mask[start + kept : end] = False
            if eot is not None:
                segments[eot] = IGNORE  # a cut thought does not end: its end-of-turn teaches nothing
    return Fit(ids[mask], segments[mask], shortened=True)
