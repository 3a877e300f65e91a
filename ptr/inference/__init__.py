"""Text generation over refinement rounds.

``load_backend(kind, model_ref, BackendOptions(...))`` gives a :class:`Backend` (the contract:
:mod:`ptr.inference.backend`; the registry: :mod:`ptr.inference.backends`); :func:`refine` asks, then
asks to refine, for R rounds, reusing each conversation's attention cache between rounds where the
backend can, or handing all rounds to a served model that runs them itself.
"""

from __future__ import annotations

from ptr.inference.backend import Backend, BackendOptions, OnRound, PrefixSession, Progress
from ptr.inference.backends import (
    BACKENDS,
    LOCAL_BACKENDS,
    check_format,
    load_backend,
    refine_prompt_for,
)
from ptr.inference.types import (
    Completion,
    Conversation,
    SamplingParams,
    continue_conversation,
    is_chat,
    validate_conversation,
)
from ptr.prompts import REFINE_PROMPT

__all__ = [
    "BACKENDS",
    "LOCAL_BACKENDS",
    "REFINE_PROMPT",
    "Backend",
    "BackendOptions",
    "Completion",
    "Conversation",
    "PrefixSession",
    "SamplingParams",
    "check_format",
    "continue_conversation",
    "is_chat",
    "load_backend",
    "refine",
    "refine_prompt_for",
    "validate_conversation",
]


def refine(
    backend: Backend,
    conversations: list[Conversation],
    rounds: int,
    params: SamplingParams,
    *,
    refine_prompt: str | None = REFINE_PROMPT,
    chunk_size: int = 64,
    on_round: OnRound | None = None,
    progress: Progress | None = None,
) -> list[list[Completion]]:
    """Answer every conversation, then ask it to refine, ``rounds`` times in all; per conversation, its
    completions for rounds 1..R (see :meth:`Backend.refine`). ``refine_prompt`` None: the served
    model's own where the server runs the rounds, else the paper's."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    conversations = [validate_conversation(c, f"conversation {i}") for i, c in enumerate(conversations)]
    return backend.refine(
        conversations,
        rounds,
        params,
        refine_prompt=refine_prompt,
        chunk_size=chunk_size,
        on_round=on_round,
        progress=progress,
    )
