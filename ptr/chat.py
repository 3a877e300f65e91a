"""What chat templates write around a turn, in one place for the encoder, the backends and cleaning.

* :func:`end_of_turn_tokens`: the tokens that end an assistant turn. The encoder gives them loss weight
  (the model learns to stop) and every backend stops generating at them, so the model is asked to stop
  exactly where it was trained to. The chat template decides which token that is: a base model such as
  Qwen2-7B ends its own text only at ``<|endoftext|>``, but its template closes a turn with ``<|im_end|>``;
  after chat-format training the model writes ``<|im_end|>``, and a backend that did not stop there would
  run on into turns the model invents.
* :data:`CONTROL_MARKERS` and :func:`clean_generated`: turn markers that still reach generated text (a
  server that returns special tokens, a marker the tokenizer does not treat as special) are cut off, and
  the answer is stripped of surrounding whitespace. Thought data is cleaned this way before training, and
  an answer fed back as the previous turn of a refinement is cleaned the same way, so the model sees at
  evaluation the turns it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

# Turn and sequence markers of the common chat template families.
FAMILY_STOPS = {
    "chatml": ("<|im_end|>", "<|im_start|>", "<|endoftext|>"),  # Qwen, SmolLM, many others
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"),
    "gemma": ("<end_of_turn>", "<start_of_turn>"),
    "mistral": ("</s>", "[INST]"),
    "phi3": ("<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"),
}
# The paper's stop list, for a model whose template cannot be read (e.g. behind an endpoint).
GENERIC_STOPS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
CONTROL_MARKERS = tuple(dict.fromkeys(m for stops in FAMILY_STOPS.values() for m in stops)) + (
    "<|begin_of_text|>",
    "<|end_header_id|>",
    "<|system|>",
    "[/INST]",
    "<|/s|>",
)
# Tokens that end a turn in the common families; one that a tokenizer has as a special token also ends
# generation, whatever the template (a template may render a turn without its end, e.g. a last turn).
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "</s>")

# Message contents that cannot occur in a template's own text (Unicode private use).
_PROBE, _NEXT = "\ue000ptr-answer\ue001", "\ue000ptr-next\ue001"


def clean_generated(text: str) -> str:
    """``text`` cut at the first control marker, without surrounding whitespace."""
    cut = len(text)
    for marker in CONTROL_MARKERS:
        i = text.find(marker, 0, cut)
        if i >= 0:
            cut = i
    return text[:cut].strip()


def special_tokens(tokenizer) -> set[str]:
    """Every token string the tokenizer treats as special (named ones and added special tokens)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}


def template_end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant turn's content, or None
    (no template, or one that writes none there).

    The template is rendered for ``user, assistant, user`` with probe contents; the first special token
    between the assistant's content and the next user's is the end of the turn."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": _PROBE},
        {"role": "user", "content": _NEXT},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses the probe (role rules, raise_exception)
        return None
    start, end = text.find(_PROBE), text.find(_NEXT)
    if start < 0 or end < start:
        return None
    between = text[start + len(_PROBE) : end]
    found = [(between.find(t), -len(t), t) for t in special_tokens(tokenizer) if t and t in between]
    return min(found)[2] if found else None


def _generation_eos(model_dir) -> list[int]:
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    if path is None or not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []


def end_of_turn_tokens(tokenizer, model_dir=None, *, eos_ids=()) -> list[str]:
    """Strings of the tokens that end an assistant turn, longest first: the template's end-of-turn
    token, EOS, the generation config's EOS ids (``eos_ids``, or read from ``model_dir``), and the
    known end-of-turn tokens the tokenizer has as special tokens."""
    special = special_tokens(tokenizer)
    ids = set(eos_ids) | set(_generation_eos(model_dir))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    tokens = {tokenizer.convert_ids_to_tokens(i) for i in ids}
    tokens |= {t for t in KNOWN_END_OF_TURN if t in special}
    if (turn_end := template_end_of_turn(tokenizer)) is not None:
        tokens.add(turn_end)
    return sorted((t for t in tokens if t and t in special), key=lambda t: (-len(t), t))


def end_of_turn_ids(tokenizer, model_dir=None, *, eos_ids=()) -> set[int]:
    """Ids of :func:`end_of_turn_tokens` (where generation stops)."""
    tokens = end_of_turn_tokens(tokenizer, model_dir, eos_ids=eos_ids)
    return {int(i) for i in tokenizer.convert_tokens_to_ids(tokens)} | {int(i) for i in eos_ids}
