"""Best-fit packing of documents into sequences of at most ``max_length`` tokens.

Streaming, so memory stays bounded: documents arrive in windows, each window is placed longest
first (best-fit decreasing), every document into the open sequence it fills most tightly. When more
than ``max_open`` sequences are open, the fullest is emitted. The result depends only on the input
order, never on timing or process count.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import numpy as np


class _Bin:
    __slots__ = ("docs", "used")

    def __init__(self):
        self.docs: list[tuple[np.ndarray, np.ndarray]] = []
        self.used = 0


Packed = tuple[np.ndarray, np.ndarray, list[int]]  # tokens, segments, document lengths


class BestFitPacker:
    def __init__(self, max_length: int, *, window: int = 2048, max_open: int = 256):
        self.max_length, self.window, self.max_open = max_length, window, max_open
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._keys: list[tuple[int, int]] = []  # (remaining space, bin number), sorted
        self._bins: dict[int, _Bin] = {}
        self._next = 0

    def add(self, ids: np.ndarray, segments: np.ndarray) -> Iterator[Packed]:
        if not 0 < len(ids) <= self.max_length:
            raise ValueError(f"document of {len(ids)} tokens does not fit max_length {self.max_length}")
        self._pending.append((ids, segments))
        if len(self._pending) >= self.window:
            yield from self._place()

    def finish(self) -> Iterator[Packed]:
        yield from self._place()
        for _, number in sorted(self._keys, key=lambda k: k[1]):
            yield _emit(self._bins.pop(number))
        self._keys.clear()

    def _place(self) -> Iterator[Packed]:
        pending, self._pending = self._pending, []
        for ids, segments in sorted(pending, key=lambda d: -len(d[0])):  # stable: ties keep input order
            n = len(ids)
            i = bisect.bisect_left(self._keys, (n, -1))
            if i < len(self._keys):
                _, number = self._keys.pop(i)
                b = self._bins[number]
            else:
                number, b = self._next, _Bin()
                self._next += 1
                self._bins[number] = b
            b.docs.append((ids, segments))
            b.used += n
            remaining = self.max_length - b.used
            if remaining == 0:
                yield _emit(self._bins.pop(number))
                continue
            bisect.insort(self._keys, (remaining, number))
            if len(self._keys) > self.max_open:
                _, fullest = self._keys.pop(0)
                yield _emit(self._bins.pop(fullest))


def _emit(b: _Bin) -> Packed:
    tokens = np.concatenate([d[0] for d in b.docs])
    segments = np.concatenate([d[1] for d in b.docs])
    return tokens, segments, [len(d[0]) for d in b.docs]
