"""The trained module: a causal LM (optionally with LoRA) that computes the PTR objective on packed input.

:class:`PackedObjective` is what DeepSpeed wraps. It runs the decoder once over the packed batch
(block-diagonal causal attention, or flash-attention varlen from the position ids on GPU), then applies
the output head only at loss positions: thought and answer tokens are a fraction of a sequence, so the
``[tokens, vocab]`` logits are never built for the prompt and template tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ptr.errors import PtrError
from ptr.objective import DEFAULT_LOSS_WEIGHTS
from ptr.train.loss import _at_least_fp32, loss_positions, objective
from ptr.train.packed_attention import FLASH, VARLEN_SDPA, packed_attention_inputs
from ptr.train.packed_attention import register as register_varlen

DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


def pick_attention(requested: str, on_cuda: bool, low_precision: bool) -> str:
    """Flash-attention varlen on a GPU that has it (it computes in bf16/fp16 only), else one SDPA call
    per document (see ``ptr.train.packed_attention``)."""
    from transformers.utils import is_flash_attn_2_available

    flash_ok = on_cuda and low_precision and is_flash_attn_2_available()
    if requested == "auto":
        return "flash_attention_2" if flash_ok else VARLEN_SDPA
    if requested in FLASH and not flash_ok:
        raise PtrError(
            f"attn_implementation {requested}: needs a CUDA GPU, the flash-attn package and bf16 or fp16"
        )
    return requested


def load_causal_lm(path: str, attn_implementation: str, dtype=torch.float32):
    """The model in fp32 (DeepSpeed casts it to bf16/fp16 when the config asks)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if attn_implementation == VARLEN_SDPA:
        register_varlen()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation
        )
    except OSError as err:
        raise PtrError(f"cannot load model {path}: {err}") from None
    model.config.use_cache = False
    return model


def lora_config(path: str | None, base_path: str):
    """A peft LoraConfig from JSON (LoraConfig's own keyword names), or ptr's default."""
    from peft import LoraConfig, TaskType

    values = dict(DEFAULT_LORA)
    if path:
        try:
            given = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PtrError(f"{path}: cannot read LoRA config ({err})") from None
        if not isinstance(given, dict):
            raise PtrError(f"{path}: a LoRA config is a JSON object")
        unknown = sorted(set(given) - set(LoraConfig.__dataclass_fields__))
        if unknown:
            raise PtrError(f"{path}: {unknown[0]}: unknown key (LoraConfig's fields are accepted)")
        values.update(given)
    values.pop("task_type", None)
    try:
        return LoraConfig(task_type=TaskType.CAUSAL_LM, base_model_name_or_path=base_path, **values)
    except (TypeError, ValueError) as err:
        raise PtrError(f"{path or 'LoRA config'}: {err}") from None


def add_lora(model, config):
    from peft import get_peft_model

    return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def holds_lora(state_dict: dict) -> bool:
    return any(".lora_" in k for k in state_dict)


def load_weights(model, state_dict: dict, source: str) -> None:
    """Load a checkpoint's weights into ``model``: full weights into a full or LoRA model (its base),
    LoRA weights into a LoRA model."""
    lora_ckpt = holds_lora(state_dict)
    if lora_ckpt and not is_peft(model):
        raise PtrError(f"{source}: holds LoRA weights; pass --use_lora to continue training it")
    target = model if lora_ckpt or not is_peft(model) else model.get_base_model()
    result = target.load_state_dict(state_dict, strict=False)
    tied = {k for k in result.missing_keys if k.endswith("lm_head.weight")}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        what = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise PtrError(f"{source}: weights do not fit {model.__class__.__name__}: {what}")


class PackedObjective(nn.Module):
    """Forward a packed micro-batch, return the objective's terms (``loss`` is the weighted total)."""

    def __init__(self, lm, weights=DEFAULT_LOSS_WEIGHTS, beta_power: float = 1.0):
        super().__init__()
        self.lm = lm
        self.weights, self.beta_power = tuple(weights), beta_power

    def causal_lm(self):
        return self.lm.get_base_model() if is_peft(self.lm) else self.lm

    def forward(self, input_ids, position_ids, segments, doc_ids):
        lm = self.causal_lm()
        mask, extra = packed_attention_inputs(
            lm.config._attn_implementation, doc_ids, lm.get_input_embeddings().weight.dtype
        )
        hidden = lm.get_decoder()(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra
        ).last_hidden_state
        b, i = loss_positions(segments, position_ids)
        logits = lm.get_output_embeddings()(hidden[b, i - 1])
        logp = -F.cross_entropy(_at_least_fp32(logits), input_ids[b, i], reduction="none")
        terms = objective(logp, hidden[b, i], segments[b, i], doc_ids[b, i], self.weights, self.beta_power)
        return {
            "loss": terms.total,
            "nll": terms.nll,
            "consistency": terms.consistency,
            "confidence": terms.confidence,
        }
