"""Attention for packed sequences.

Three ways to keep packed documents from attending to one another, all giving the same result:

* ``flash_attention_2`` (CUDA, bf16/fp16): flash-attention's varlen kernel over the batch flattened
  into one token stream, given the document boundaries (``cu_seq_lens_q/k``, ``max_length_q/k``).
  (transformers would infer them from restarting position ids only for a batch of one row.)
* ``sdpa`` / ``eager`` with the explicit additive block-diagonal causal mask of
  :func:`ptr.train.data.block_causal_mask` (``--attn_implementation sdpa``): simple, but it computes
  the full L × L score matrix, most of which the mask throws away.
* ``ptr_varlen_sdpa`` (the default without flash-attn): the varlen idea on any device. Every document
  is one causal SDPA call over its own tokens, so the work is Σ nᵢ² instead of L², and PyTorch's fused
  causal kernel runs without a mask. Boundaries come in as ``cu_seq_lens_q`` (transformers' own
  name for them), over the batch flattened into one token stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptr.train.data import block_causal_mask

VARLEN_SDPA = "ptr_varlen_sdpa"
FLASH = ("flash_attention_2", "flash_attention_3")


def cu_seqlens(doc_ids: torch.Tensor) -> list[int]:
    """Document start offsets (and the end) over the flattened ``[B, L]`` batch.

    A row's padding (doc id −1) is a block of its own; a new block starts wherever the id changes or a
    row begins.
    """
    flat = doc_ids.reshape(-1)
    change = torch.ones_like(flat, dtype=torch.bool)
    change[1:] = flat[1:] != flat[:-1]
    change[:: doc_ids.shape[1]] = True  # every row starts a block
    starts = change.nonzero().flatten().tolist()
    return [*starts, flat.numel()]


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: ``query`` [B, H, L, D], ``key``/``value`` [B, Hkv, L, D]."""
    from transformers.integrations.sdpa_attention import repeat_kv

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        raise ValueError(f"{VARLEN_SDPA} needs cu_seq_lens_q (document boundaries over the flattened batch)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, length, dim = query.shape

    def flat(x):  # [B, H, L, D] -> [1, H, B*L, D]
        return x.transpose(0, 1).reshape(1, x.shape[1], batch * length, x.shape[-1])

    q, k, v = flat(query), flat(key), flat(value)
    dropout = dropout if module.training else 0.0
    pieces = [
        F.scaled_dot_product_attention(
            q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True
        )
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    out = torch.cat(pieces, dim=2).reshape(heads, batch, length, dim)
    return out.permute(1, 2, 0, 3).contiguous(), None  # [B, L, H, D], as transformers expects


def packed_attention_inputs(impl: str, doc_ids: torch.Tensor, dtype: torch.dtype):
    """``(attention_mask, extra model kwargs)`` that keep the documents of ``doc_ids`` apart under ``impl``."""
    if impl not in FLASH and impl != VARLEN_SDPA:
        return block_causal_mask(doc_ids, dtype), {}
    bounds = cu_seqlens(doc_ids)
    if impl == VARLEN_SDPA:
        return None, {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds}
    cu = torch.tensor(bounds, dtype=torch.int32, device=doc_ids.device)
    longest = max(e - s for s, e in zip(bounds[:-1], bounds[1:], strict=True))
    return None, {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
