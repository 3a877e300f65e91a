"""Which backends exist, and the one factory every caller uses (``ptr refine``, ``ptr eval``, the
thoughts stage's model pool, ``ptr serve``).

A caller says what it wants in a :class:`~ptr.inference.backend.BackendOptions`; each backend's
``from_options`` takes what applies to it. The backend modules import their heavy packages (torch,
transformers, vllm, httpx) only when a model loads, so this registry is cheap to import.
"""

from __future__ import annotations

import sys

from ptr.errors import PtrError
from ptr.inference.backend import Backend, BackendOptions
from ptr.inference.hf import TransformersBackend
from ptr.inference.kserve_client import KServeBackend
from ptr.inference.openai_backend import OpenAIBackend
from ptr.inference.vllm_backend import VLLMBackend
from ptr.models.provenance import trained_on_chat
from ptr.prompts import REFINE_PROMPT

REGISTRY: dict[str, type[Backend]] = {
    cls.name: cls for cls in (TransformersBackend, VLLMBackend, OpenAIBackend, KServeBackend)
}
BACKENDS = tuple(REGISTRY)
LOCAL_BACKENDS = tuple(name for name, cls in REGISTRY.items() if cls.local)  # those `ptr serve` can run


def load_backend(kind: str, model_ref=None, options: BackendOptions | None = None) -> Backend:
    """The backend ``kind`` for ``model_ref`` (a model reference, or for an HTTP backend the served
    model's name, None for the first one the endpoint lists)."""
    if kind not in REGISTRY:
        raise PtrError(f"unknown backend {kind!r}: expected one of {', '.join(BACKENDS)}")
    return REGISTRY[kind].from_options(model_ref, options or BackendOptions())


def refine_prompt_for(backend: Backend, given: str | None) -> str | None:
    """The refine prompt to ask ``backend``'s model with: ``given``, else the one the model was trained
    with (its provenance), else the paper's. A given prompt that differs from the trained one is used,
    with a warning. None for a served model given none: ``ptr serve`` (which runs the rounds) then
    applies the served model's own, a turn-by-turn client the paper's."""
    trained = backend.provenance().get("refine_prompt")
    if given is None:
        if trained:
            return trained
        return None if not backend.local else REFINE_PROMPT
    if trained and given != trained:
        print(
            f"warning: {backend.model_name} was trained with the refine prompt {trained!r}; "
            f"asking with {given!r} instead",
            file=sys.stderr,
        )
    return given


def check_format(backend: Backend, format_type: str) -> None:
    """Warn when a chat-trained model is asked in the plain ``Question: … Answer:`` layout."""
    record = backend.provenance()
    if format_type == "default" and trained_on_chat(record):
        print(
            f"warning: {backend.model_name} was trained on chat-template conversations (ptr_train.json); "
            "--format_type default shows it a plain 'Question: … Answer:' layout it never saw",
            file=sys.stderr,
        )
