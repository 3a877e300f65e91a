"""The final model as a plain Hugging Face directory that ``ptr refine`` and ``ptr serve`` load.

Written by rank 0 into a temporary folder and renamed to ``final`` when complete. LoRA weights are
merged into the base model unless the adapter is kept on its own (``save_lora_adapter``), in which case
the folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` over the base model, which
transformers loads through peft. Tied input/output embeddings stay tied (one tensor in the file).
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


def export(lm, tokenizer, out_dir: Path, *, merge_lora: bool = True, provenance: dict | None = None) -> Path:
    """Save ``lm`` (a causal LM or a peft model) and its tokenizer to ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_peft(lm) and merge_lora:
        lm = lm.merge_and_unload()
    lm.config.use_cache = True
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if provenance:
        write_json(tmp / PROVENANCE_FILE, provenance)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
