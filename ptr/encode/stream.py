"""Examples → ``(ids, segments)`` per example, in input order, with the tokenizer kept busy.

In one process the work runs as a three-stage pipeline: a thread reads records and renders chat
layouts (Python), a thread runs the fast tokenizer (Rust, which releases the GIL and uses every core)
on one batch after another, and the caller turns encodings into arrays, packs and writes them
(Python). The tokenizer, the largest cost, starts the next batch as soon as it finishes one: measured
on 2 cores, a tokenizer left idle between batches (or called on many small ones) costs a tenth more
CPU. With worker processes (``num_proc`` > 1) each worker encodes whole batches and the caller reads
ahead of them.

Either way the results come back in input order, an error in any stage is raised in the caller as it
was raised, and memory stays bounded: a batch holds about ``BATCH_CHARS`` characters of text (the
tokenizer's encodings are the largest thing in memory, about 100 bytes a token), and at most three
batches are encoded at once.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from ptr.encode.layout import ChatLayout
from ptr.encode.records import Example

# Characters of text per batch. Each tokenizer call costs on its own (its threads start and meet
# again: 2 batches of 5,000 texts took ~15% more CPU than one of 10,000 on 2 loaded cores), so batches
# are large. The first is half size so the tokenizer starts after ~2,500 examples are laid out (a few
# hundredths of a second); a ramp of 1M, 2M, 4M before it cost ~8% more CPU in all (10,000 examples,
# 7 paired runs on 2 loaded cores: 7.16 against 7.82 CPU-s).
FIRST_BATCH_CHARS, BATCH_CHARS = 4 << 20, 8 << 20
# Worker processes tokenize one text at a time each: smaller batches spread the work evenly and keep
# every worker's memory small.
WORKER_BATCH_CHARS = 1 << 20


def _size(example: Example) -> int:
    if example.text is not None:
        return len(example.text)
    return sum(len(m["content"]) for m in example.messages)


def batches(examples: Iterable[Example], first: int, most: int) -> Iterator[list[Example]]:
    """Batches of about ``most`` characters, the first ones smaller (``first``, doubling) so work
    starts early."""
    limit = min(first, most)
    batch, chars = [], 0
    for example in examples:
        batch.append(example)
        chars += _size(example)
        if chars >= limit:
            yield batch
            batch, chars = [], 0
            limit = min(2 * limit, most)
    if batch:
        yield batch


def encoded(
    examples: Iterable[Example], layout: ChatLayout, num_proc: int = 1
) -> Iterator[list[tuple | Exception]]:
    """Per batch, each example's ``(ids, segments)`` or the :class:`~ptr.errors.InputError` it raised."""
    if num_proc > 1:
        yield from _in_processes(batches(examples, WORKER_BATCH_CHARS, WORKER_BATCH_CHARS), layout, num_proc)
    else:
        yield from _in_threads(batches(examples, FIRST_BATCH_CHARS, BATCH_CHARS), layout)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class _Stage(threading.Thread):
    """Applies ``work`` to each item of ``source`` in its own thread; iterate it for the results. One
    result waits at a time: the stage runs at most one item ahead of its consumer."""

    def __init__(self, source: Iterable, work: Callable, stop: threading.Event, name: str):
        super().__init__(name=f"ptr-encode-{name}", daemon=True)
        self.source, self.work, self.stop = source, work, stop
        self.results: queue.Queue = queue.Queue(maxsize=1)

    def run(self) -> None:
        try:
            for item in self.source:
                if not self._put(self.work(item)):
                    return
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(_Failed(err))

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            try:
                item = self.results.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


def _in_threads(chunks: Iterator[list[Example]], layout: ChatLayout) -> Iterator[list]:
    stop = threading.Event()
    prepared = _Stage(chunks, layout.prepare, stop, "prepare")
    tokenized = _Stage(prepared, layout.tokenize, stop, "tokenize")
    prepared.start()
    tokenized.start()
    try:
        for batch in tokenized:
            yield layout.finish(batch)
    finally:  # also when the caller stops early: the threads end at their next step
        stop.set()
        for stage in (tokenized, prepared):
            stage.join()


# -- worker processes -----------------------------------------------------------------------------

_WORKER_LAYOUT: ChatLayout | None = None


def _init_worker(layout: ChatLayout) -> None:
    global _WORKER_LAYOUT
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER_LAYOUT = layout


def _encode_in_worker(chunk: list[Example]):
    return _WORKER_LAYOUT.encode_batch(chunk)


def _in_processes(chunks: Iterator[list[Example]], layout: ChatLayout, num_proc: int) -> Iterator[list]:
    """Results in input order, at most ``2 * num_proc`` batches in flight. Reading stays in this thread,
    so a bad record raises here (not in Pool's feeder thread) and memory stays bounded."""
    pool = multiprocessing.get_context("fork").Pool(num_proc, _init_worker, (layout,))
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()


def default_num_proc() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Below 4 cores the tokenizer's own threads use them better than extra Python processes.
    return min(cores, 8) if cores >= 4 else 1
