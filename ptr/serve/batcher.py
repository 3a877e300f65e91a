"""Dynamic batching: generations from concurrent requests run as one ``backend.generate`` call.

(A backend that batches by itself, ``Backend.continuous`` — vLLM's asynchronous engine — gets
:class:`EngineQueue` instead: every generation is handed over as it arrives and joins the engine's
running batch; :func:`scheduler_for` picks. Both run a request's rounds the same way,
:meth:`Scheduler.refine`.)

Each request submits one job per conversation per round. A single worker thread runs the model; while
it is busy, new jobs queue up. The collector takes the first queued job, then gathers more until the
batch holds ``max_batch_size`` jobs or ``max_wait_ms`` has passed, splits the batch by sampling
parameters (one ``generate`` takes one set) and runs each group. Rounds of different requests mix: round
2 of one request can share a batch with round 1 of another.

Where the backend keeps caches between calls (:meth:`~ptr.inference.Backend.session`), the batcher holds
one session for the server and each conversation a key in it, so round k runs only the new tokens
through the model, as :func:`ptr.inference.refine` does, even though the batch around it changes from
round to round; a conversation's entry is forgotten when its last round is done.

A job may stream: its ``on_text(piece)`` is called in the worker thread with each new piece of its text
(:meth:`~ptr.inference.Backend.generate_stream`); a group with any such job runs through
``generate_stream``.

Before a job reaches the model its prompt is measured against the context; one that does not fit fails
alone (:class:`ContextOverflow`) and never disturbs the batch it would have joined. This module does not
import kserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from ptr.inference import Backend, Completion, Conversation, PrefixSession, SamplingParams
from ptr.inference.round_chains import run_round_chains
from ptr.serve.schema import RequestError

BATCH_SIZE = Histogram(
    "ptr_serve_batch_size",
    "Generations run together in one generate call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GENERATIONS = Counter("ptr_serve_generations_total", "Generations run (one per conversation per round)")


class ContextOverflow(ValueError):
    """A prompt that leaves no room in the model's context for even one new token."""


@dataclass
class _Job:
    conversation: Conversation
    params: SamplingParams
    key: int  # the conversation's key in the backend's session
    future: asyncio.Future = field(repr=False)
    on_text: Callable[[str], None] | None = field(default=None, repr=False)  # called in the worker thread


# (instance index, round, the next piece of that round's text); called in the worker thread
OnRoundText = Callable[[int, int, str], None]


class Scheduler(ABC):
    """Runs requests' generations on a backend; subclasses say how one generation is run."""

    session: PrefixSession | None = None

    def __init__(self, backend: Backend):
        self.backend = backend
        self._keys = itertools.count()

    @abstractmethod
    async def generate(
        self,
        conversation: Conversation,
        params: SamplingParams,
        key: int,
        on_text: Callable[[str], None] | None = None,
    ) -> Completion:
        """One generation of the conversation ``key``; ``on_text`` gets its text piece by piece."""

    async def refine(
        self,
        conversations: list[Conversation],
        rounds: int,
        params: SamplingParams,
        refine_prompt: str,
        on_text: OnRoundText | None = None,
    ) -> list[list[Completion]]:
        """Every round's completion per conversation. Round k+1 of a conversation is queued as soon as
        its round k is done, so conversations (and requests) never wait for each other between rounds.
        ``on_text(i, k, piece)`` streams round k of instance i."""

        keys = [next(self._keys) for _ in conversations]  # each conversation's key in the session
        outs: list[list[Completion]] = [[] for _ in conversations]

        async def generate(i: int, k: int, conversation: Conversation) -> Completion:
            stream = None if on_text is None else functools.partial(on_text, i, k)
            try:
                return await self.generate(conversation, params, keys[i], stream)
            except ValueError as err:
                raise RequestError(str(err), where=f"instances[{i}]: round {k}") from None

        def answered(i: int, k: int, completion: Completion) -> None:
            outs[i].append(completion)
            if k == rounds and self.session is not None:  # the conversation is over: its cache goes
                self.session.forget(keys[i])

        try:
            await run_round_chains(conversations, rounds, refine_prompt, generate, answered)
        finally:
            if self.session is not None:  # one failed: the others' caches go too
                self.session.forget(*keys)
        return outs

    async def close(self) -> None:  # noqa: B027 (optional: most hold nothing)
        """Stop what the scheduler runs."""


class EngineQueue(Scheduler):
    """For a backend that batches by itself (``continuous``): each generation goes to it at once."""

    async def generate(self, conversation, params, key, on_text=None) -> Completion:
        completion = await self.backend.agenerate(conversation, params, on_text)
        GENERATIONS.inc()
        return completion


class DynamicBatcher(Scheduler):
    def __init__(
        self, backend: Backend, *, max_batch_size: int = 16, max_wait_ms: float = 10.0, worker_init=None
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        super().__init__(backend)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.session = backend.session()  # None: the backend keeps no caches between calls
        # One worker thread: the model is not shared. ``worker_init`` runs in it first (thread settings
        # such as torch's intra-op thread count are per thread under OpenMP).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ptr-generate", initializer=worker_init)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.largest_batch = 0

    @property
    def reuse_prefix(self) -> bool:
        return self.session is not None

    async def generate(
        self,
        conversation: Conversation,
        params: SamplingParams,
        key: int,
        on_text: Callable[[str], None] | None = None,
    ) -> Completion:
        """One generation of the conversation ``key`` (it continues from its cache in the session);
        ``on_text`` gets its text piece by piece, in the worker thread."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._collect_forever())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(conversation, params, key, future, on_text))
        return await future

    async def _collect_forever(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            groups: dict[SamplingParams, list[_Job]] = defaultdict(list)
            for job in batch:
                if not job.future.cancelled():  # its request went away while it waited
                    groups[job.params].append(job)
            for params, jobs in groups.items():
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._run, params, jobs)
                except Exception as err:  # never let one batch stop the collector
                    outcomes = [err] * len(jobs)
                for job, outcome in zip(jobs, outcomes, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)
            # Let the requests just answered queue their next round before the next batch is gathered,
            # so a conversation's rounds stay in step with the batch it came in (one loop turn is enough).
            await asyncio.sleep(0)

    def _run(self, params: SamplingParams, jobs: list[_Job]) -> list:
        """Runs in the worker thread: measure every prompt, then one generate for those that fit."""
        outcomes: list = [None] * len(jobs)
        ready = []
        for i, job in enumerate(jobs):
            try:
                self._check_fits(job.conversation)
                ready.append(i)
            except Exception as err:  # e.g. a chat the template cannot render: this job's error only
                outcomes[i] = err
        if not ready:
            return outcomes
        keys = [jobs[i].key for i in ready]
        conversations = [jobs[i].conversation for i in ready]
        streaming = [jobs[i].on_text for i in ready]

        def on_text(row: int, piece: str) -> None:
            if streaming[row] is not None:
                streaming[row](piece)

        try:
            if any(streaming):
                completions = self.backend.generate_stream(
                    conversations, params, on_text, session=self.session, keys=keys
                )
            else:
                completions = self.backend.generate(conversations, params, session=self.session, keys=keys)
        except Exception as err:  # every job of the failed call gets the error, the server goes on
            for i in ready:
                outcomes[i] = err
            return outcomes
        finally:
            if self.session is not None:  # requests that went away while their job ran keep nothing
                self.session.forget(*(jobs[i].key for i in ready if jobs[i].future.cancelled()))
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(ready))
        BATCH_SIZE.observe(len(ready))
        GENERATIONS.inc(len(ready))
        for i, completion in zip(ready, completions, strict=True):
            outcomes[i] = completion
        return outcomes

    def _check_fits(self, conversation: Conversation) -> None:
        n = self.backend.prompt_tokens(conversation)
        if n is None or self.backend.context_length is None:
            return  # the backend cannot tell; it refuses what does not fit itself
        if n < 1:
            raise ContextOverflow("the prompt encodes to no tokens")
        if n + 1 > self.backend.context_length:
            raise ContextOverflow(
                f"the prompt is {n} tokens; the model's context is {self.backend.context_length} tokens, "
                "which leaves no room for an answer"
            )

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)


def scheduler_for(backend: Backend, **batching) -> Scheduler:
    """:class:`EngineQueue` for a backend that batches by itself, else a :class:`DynamicBatcher`
    (``batching``: its settings)."""
    return EngineQueue(backend) if backend.continuous else DynamicBatcher(backend, **batching)
