"""Attention for decoding on the CPU.

PyTorch's fused CPU attention kernel is tiled for long query blocks; at one query token per row (every
decoding step) over a cache of a thousand tokens it spends about 70% of a SmolLM2-135M step (9 ms per
layer at batch 16). For one query token attention is two small matrix products, so ``ptr_sdpa_decode``
does exactly that, grouping query heads by their key/value head instead of copying the cache once per
group (what ``repeat_kv`` does), and hands every other call (prefill, training) to transformers' SDPA.
"""

from __future__ import annotations

DECODE_SDPA = "ptr_sdpa_decode"


def sdpa_decode_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: ``query`` [B, H, Q, D], ``key``/``value`` [B, Hkv, L, D] →
    ([B, Q, H, D], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or module.training:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    # head h reads key/value head h // groups, as repeat_kv lays them out
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # [B, Hkv, groups, L]
    if attention_mask is not None:  # [B, 1, 1, L]: True (or 0.0) where a token may be read
        mask = attention_mask[:, :, -1:, -key.shape[2] :]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, Hkv, groups, D]
    return out.reshape(batch, 1, heads, dim), None


def use_decode_attention(model) -> None:
    """Switch a model that runs SDPA on the CPU to ``ptr_sdpa_decode`` (same masks, same prefill)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.device.type != "cpu" or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(DECODE_SDPA, sdpa_decode_forward)
    AttentionMaskInterface.register(DECODE_SDPA, sdpa_mask)
    model.set_attn_implementation(DECODE_SDPA)
