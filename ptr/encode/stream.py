"""Examples → ``(ids, segments)`` per example, in input order, with the tokenizer never idle.

In one process, one Python thread reads records, renders chat layouts, turns encodings into arrays
and packs them, while the fast tokenizer (Rust, which releases the GIL and uses every core) works on
the batch in between: while batch k is tokenized, batch k-1 is finished and batch k+1 prepared. With
worker processes (``num_proc`` > 1) each worker encodes whole batches and the caller reads ahead.

Either way the results come back in input order, and memory stays bounded: a batch holds about
``BATCH_CHARS`` characters of text (the tokenizer's per-token encodings are the largest thing in
memory, about 100 bytes a token), and at most two batches are encoded at once.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ptr.encode.layout import ChatLayout
from ptr.encode.records import Example

# Characters of text per batch. Each tokenizer call costs a little on its own (its threads start and
# meet again), so batches are large; the first ones are smaller so the pipeline fills quickly.
FIRST_BATCH_CHARS, BATCH_CHARS = 1 << 20, 8 << 20


def _size(example: Example) -> int:
    if example.text is not None:
        return len(example.text)
    return sum(len(m["content"]) for m in example.messages)


def batches(examples: Iterable[Example]) -> Iterator[list[Example]]:
    """Batches of about ``BATCH_CHARS`` characters, the first ones smaller (``FIRST_BATCH_CHARS``,
    doubling) so work starts early."""
    limit = min(FIRST_BATCH_CHARS, BATCH_CHARS)
    batch, chars = [], 0
    for example in examples:
        batch.append(example)
        chars += _size(example)
        if chars >= limit:
            yield batch
            batch, chars = [], 0
            limit = min(2 * limit, BATCH_CHARS)
    if batch:
        yield batch


def encoded(
    examples: Iterable[Example], layout: ChatLayout, num_proc: int = 1
) -> Iterator[list[tuple | Exception]]:
    """Per batch, each example's ``(ids, segments)`` or the :class:`~ptr.errors.InputError` it raised."""
    if num_proc > 1:
        yield from _in_processes(batches(examples), layout, num_proc)
    else:
        yield from _beside_the_tokenizer(batches(examples), layout)


def _beside_the_tokenizer(chunks: Iterator[list[Example]], layout: ChatLayout) -> Iterator[list]:
    """This thread prepares and finishes batches; one more thread runs the tokenizer between them."""
    with ThreadPoolExecutor(1, thread_name_prefix="ptr-encode-tokenize") as tokenizer:
        running = None
        for chunk in chunks:
            batch = layout.prepare(chunk)
            previous, running = running, tokenizer.submit(layout.tokenize, batch)
            if previous is not None:
                yield layout.finish(previous.result())
        if running is not None:
            yield layout.finish(running.result())


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
