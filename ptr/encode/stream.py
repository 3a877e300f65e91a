"""Examples → ``(ids, segments)`` per example, in input order, with the phases overlapped.

In one process the work runs as a three-stage pipeline: a thread reads records and renders chat
layouts (Python), a thread runs the fast tokenizer (Rust, which releases the GIL and uses every core),
and the caller turns encodings into arrays, packs and writes them (Python). The tokenizer, the
largest cost, is never left waiting for the Python work before or after it. With worker processes
(``num_proc`` > 1) each worker encodes whole batches and the caller reads ahead of them.

Either way the results come back in input order and memory stays bounded (a few batches in flight);
an error in any stage is raised in the caller, as it was raised.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from ptr.encode.layout import ChatLayout
from ptr.encode.records import Example

# Examples per batch. The fast tokenizer costs less per text in big batches; the first batches are
# smaller so the pipeline fills quickly.
FIRST_BATCH, BATCH = 512, 4096
_DONE = object()


def batches(examples: Iterable[Example]) -> Iterator[list]:
    """Batches of ``BATCH`` examples, the first ones smaller (``FIRST_BATCH``, doubling) so work starts
    early."""
    examples = iter(examples)
    step = min(FIRST_BATCH, BATCH)
    while batch := list(islice(examples, step)):
        yield batch
        step = min(2 * step, BATCH)


def encoded(
    examples: Iterable[Example], layout: ChatLayout, num_proc: int = 1
) -> Iterator[list[tuple | Exception]]:
    """Per batch, each example's ``(ids, segments)`` or the :class:`~ptr.errors.InputError` it raised."""
    if num_proc > 1:
        yield from _in_processes(batches(examples), layout, num_proc)
    else:
        yield from _in_threads(batches(examples), layout)


# -- one process: a pipeline of threads -----------------------------------------------------------


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _Stage(threading.Thread):
    """Applies ``work`` to each item of ``source`` in its own thread; iterate it for the results."""

    def __init__(self, source: Iterable, work: Callable, stop: threading.Event, name: str):
        super().__init__(name=f"ptr-encode-{name}", daemon=True)
        self.source, self.work, self.stop = source, work, stop
        self.results: queue.Queue = queue.Queue(maxsize=2)  # bounded: a slow consumer holds it back

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
