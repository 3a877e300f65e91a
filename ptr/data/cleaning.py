"""Keeping chat-template control tokens out of generated text.

Backends stop at the end-of-turn token and decode without special tokens, but a model can still write
a turn marker as plain text (an OpenAI-compatible server that returns special tokens, a marker the
tokenizer does not treat as special, a base model continuing with the next question). Two defences:
stop strings per model family, passed to the backend so generation ends there, and
:func:`clean_generated`, which cuts any text at the first marker that still got through. The markers
and the cleaning live in :mod:`ptr.chat`: a refinement round feeds the previous answer back cleaned the
same way (:func:`ptr.inference.continue_conversation`).
"""

from __future__ import annotations

from ptr.chat import CONTROL_MARKERS, FAMILY_STOPS, GENERIC_STOPS, clean_generated
from ptr.inference import Backend

__all__ = ["CONTROL_MARKERS", "PLAIN_PROMPT_STOPS", "clean_generated", "family_of", "stops_for"]

# A plain "Question: … Answer:" prompt: a base model goes on to invent the next question.
PLAIN_PROMPT_STOPS = ("\nQuestion:",)


def family_of(chat_template: str | None) -> str | None:
    """The chat template family, from markers the template writes."""
    if not chat_template:
        return None
    probes = {
        "chatml": "<|im_start|>",
        "llama3": "<|start_header_id|>",
        "gemma": "<start_of_turn>",
        "mistral": "[INST]",
        "phi3": "<|user|>",
    }
    return next((name for name, marker in probes.items() if marker in chat_template), None)


def stops_for(backend: Backend, *, plain_prompt: bool = False) -> tuple[str, ...]:
    """Stop strings for a loaded backend: its family's markers (the generic list when unknown)."""
    family = family_of(backend.chat_template)
    stops = FAMILY_STOPS[family] if family else GENERIC_STOPS
    if plain_prompt:
        stops = PLAIN_PROMPT_STOPS + stops
    if backend.max_stop_strings is not None:
        stops = stops[: backend.max_stop_strings]  # e.g. the OpenAI API takes at most four
    return stops
