"""Keeping chat-template control tokens out of generated text.

Backends stop at the end-of-turn token and decode without special tokens, but a model can still write
a turn marker as plain text (an OpenAI-compatible server that returns special tokens, a marker the
tokenizer does not treat as special, a base model continuing with the next question). Two defences:
stop strings per model family, passed to the backend so generation ends there, and
:func:`clean_generated`, which cuts any text at the first marker that still got through.
"""

from __future__ import annotations

# Turn and sequence markers of the common chat template families.
FAMILY_STOPS = {
    "chatml": ("<|im_end|>", "<|im_start|>", "<|endoftext|>"),  # Qwen, SmolLM, many others
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"),
    "gemma": ("<end_of_turn>", "<start_of_turn>"),
    "mistral": ("</s>", "[INST]"),
    "phi3": ("<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"),
}
# The paper's stop list, for a model whose family cannot be told (e.g. behind an endpoint).
GENERIC_STOPS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
CONTROL_MARKERS = tuple(dict.fromkeys(m for stops in FAMILY_STOPS.values() for m in stops)) + (
    "<|begin_of_text|>",
    "<|end_header_id|>",
    "<|system|>",
    "[/INST]",
    "<|/s|>",
)
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


def stops_for(backend, *, plain_prompt: bool = False) -> tuple[str, ...]:
    """Stop strings for a loaded backend: its family's markers (the generic list when unknown)."""
    tokenizer = getattr(backend, "tokenizer", None)
    family = family_of(getattr(tokenizer, "chat_template", None))
    stops = FAMILY_STOPS[family] if family else GENERIC_STOPS
    if plain_prompt:
        stops = PLAIN_PROMPT_STOPS + stops
    if getattr(backend, "name", "") == "openai":
        stops = stops[:4]  # the OpenAI API takes at most four
    return stops


def clean_generated(text: str) -> str:
    """``text`` cut at the first control marker, without surrounding whitespace."""
    cut = len(text)
    for marker in CONTROL_MARKERS:
        i = text.find(marker, 0, cut)
        if i >= 0:
            cut = i
    return text[:cut].strip()
