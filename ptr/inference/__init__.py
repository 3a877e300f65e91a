"""Text generation over refinement rounds.

``load_backend(kind, model)`` gives an object with ``generate(conversations, SamplingParams)``;
:func:`refine` asks, then asks to refine, for R rounds, reusing each conversation's attention cache
between rounds where the backend can.
"""

from __future__ import annotations

from collections.abc import Callable

from ptr.errors import PtrError
from ptr.inference.hf import PrefixStore, TransformersBackend
from ptr.inference.openai_backend import OpenAIBackend
from ptr.inference.types import (
    Backend,
    Completion,
    Conversation,
    SamplingParams,
    is_chat,
    validate_conversation,
)
from ptr.inference.vllm_backend import VLLMBackend
from ptr.prompts import REFINE_PROMPT

BACKENDS = ("transformers", "vllm", "openai", "kserve")

__all__ = [
    "BACKENDS",
    "REFINE_PROMPT",
    "Backend",
    "Completion",
    "Conversation",
    "SamplingParams",
    "continue_conversation",
    "is_chat",
    "load_backend",
    "refine",
    "validate_conversation",
]


def load_backend(kind: str, model_ref=None, *, endpoint: str | None = None, **options) -> Backend:
    """``kind`` is transformers, vllm, openai or kserve (for the last two ``endpoint`` is the base URL,
    ``model_ref`` the served model's name, or None for the first one the endpoint lists)."""
    if kind == "transformers":
        return TransformersBackend(model_ref, **options)
    if kind == "vllm":
        return VLLMBackend(model_ref, **options)
    if kind == "openai":
        if not endpoint:
            raise PtrError("the openai backend needs --endpoint (the base URL, e.g. http://host:8000/v1)")
        return OpenAIBackend(endpoint, model_ref, **options)
    if kind == "kserve":
        from ptr.serve.client import KServeBackend

        if not endpoint:
            raise PtrError(
                "the kserve backend needs --endpoint (the server's base URL, e.g. http://host:8080)"
            )
        return KServeBackend(endpoint, model_ref, **options)
    raise PtrError(f"unknown backend {kind!r}: expected one of {', '.join(BACKENDS)}")


def continue_conversation(conversation: Conversation, answer: str, refine_prompt: str = REFINE_PROMPT):
    """The conversation after ``answer``, with the refine request as the next user turn."""
    if isinstance(conversation, str):
        return f"{conversation}{answer}\n\nQuestion: {refine_prompt}\nAnswer:"
    return [
        *conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": refine_prompt},
    ]


def refine(
    backend: Backend,
    conversations: list[Conversation],
    rounds: int,
    params: SamplingParams,
    *,
    refine_prompt: str = REFINE_PROMPT,
    chunk_size: int = 64,
    on_round: Callable[[int, list[int], list[Completion]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[Completion]]:
    """Answer every conversation, then ask it to refine, ``rounds`` times in all.

    Returns, per conversation, its completions for rounds 1..R. Conversations go through in chunks
    of ``chunk_size`` (all rounds of a chunk before the next) so kept attention caches stay bounded.
    ``on_round(k, indices, completions)`` is called as each round of each chunk finishes;
    ``progress(n)`` as generations finish (n per call).
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    conversations = [validate_conversation(c, f"conversation {i}") for i, c in enumerate(conversations)]
    if hasattr(backend, "refine"):  # a backend that runs all rounds itself (e.g. a served model)
        return backend.refine(
            conversations, rounds, params, refine_prompt=refine_prompt, on_round=on_round, progress=progress
        )
    results: list[list[Completion]] = [[] for _ in conversations]
    # kept caches pay off only when there is a next round
    supports_store = getattr(backend, "name", "") == "transformers" and rounds > 1
    for start in range(0, len(conversations), chunk_size):
        indices = list(range(start, min(start + chunk_size, len(conversations))))
        current = [conversations[i] for i in indices]
        store = None
        if supports_store:
            store = PrefixStore(len(indices))
        for k in range(1, rounds + 1):
            kwargs = {"progress": progress}
            if store is not None:
                kwargs["prefix_store"] = store
                kwargs["update_store"] = k < rounds
            outs = backend.generate(current, params, **kwargs)
            for i, out in zip(indices, outs, strict=True):
                results[i].append(out)
            if on_round is not None:
                on_round(k, indices, outs)
            if k < rounds:
                current = [
                    continue_conversation(c, o.text, refine_prompt)
                    for c, o in zip(current, outs, strict=True)
                ]
    return results
