"""The final model as a plain Hugging Face directory that ``ptr refine`` and ``ptr serve`` load.

Written by rank 0 into a temporary folder and renamed to ``final`` when complete. LoRA weights are
merged into the base model unless the adapter is kept on its own (``save_lora_adapter``), in which case
the folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` over the base model, which
transformers loads through peft. Tied input/output embeddings stay tied (one tensor in the file).

``generation_config.json`` ends generation at every token that ended an answer in training: a base
model such as Qwen2-7B stops only at ``<|endoftext|>``, but after chat-format training its answers end
with the template's ``<|im_end|>``, and without it generation runs on into invented turns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ptr.files import write_json
from ptr.models.provenance import PROVENANCE_FILE
from ptr.train.packed_model import is_peft


def rebuild(build, state_dict: dict):
    """A CPU copy of the trained LM from a gathered state dict (under ZeRO-3 the live one is sharded).

    ``build()`` makes the same architecture (LoRA included); it runs on the meta device, so no memory
    is spent before the gathered tensors are assigned.
    """
    import torch

    with torch.device("meta"):
        model = build()
    model.load_state_dict(state_dict, strict=False, assign=True)
    base = model.get_base_model() if is_peft(model) else model
    if getattr(base.config, "tie_word_embeddings", False):
        base.tie_weights()
    return model


def stop_token_ids(tokenizer, lm, meta: dict) -> list[int]:
    """The model's end-of-generation ids: its generation config's and the tokenizer's EOS, and the
    end-of-turn tokens the corpus's chat layout trained answers to end with (meta.json)."""
    base = lm.get_base_model() if is_peft(lm) else lm
    configured = getattr(base.generation_config, "eos_token_id", None) if base.generation_config else None
    ids = configured if isinstance(configured, list) else [configured]
    ids = [*ids, tokenizer.eos_token_id]
    for token in (meta.get("layout") or {}).get("end_of_turn_tokens") or []:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def export(
    lm,
    tokenizer,
    out_dir: Path,
    *,
    merge_lora: bool = True,
    provenance: dict | None = None,
    stop_tokens: list[int] | None = None,
) -> Path:
    """Save ``lm`` (a causal LM or a peft model) and its tokenizer to ``out_dir`` atomically;
    ``stop_tokens`` become the generation config's ``eos_token_id``."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_peft(lm) and merge_lora:
        lm = lm.merge_and_unload()
    lm.config.use_cache = True
    if stop_tokens:
        base = lm.get_base_model() if is_peft(lm) else lm
        base.generation_config.eos_token_id = stop_tokens if len(stop_tokens) > 1 else stop_tokens[0]
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if provenance:
        write_json(tmp / PROVENANCE_FILE, provenance)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
