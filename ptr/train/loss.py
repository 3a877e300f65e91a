"""The PTR objective (docs/architecture.md, "The training objective"), computed from the shards' segment codes.

    L = λ1 · NLL(answer) + λ2 · Σ_{t≥2} (1 − cos(h̄_t, h̄_{t−1})) + λ3 · Σ_t β_t · (1 − Pr(y_t))

An *attempt* is the set of tokens of one document that carry one segment code: thoughts 1..n−1 are
codes 1..n−1 and the final answer (``ANSWER`` = 255) is attempt n, so sorting a document's codes gives
the attempt order. ``h̄_t`` is the mean of the last hidden states over attempt t's tokens and
``Pr(y_t)`` the geometric mean of its token probabilities, ``exp(mean log p)``. β_t ∝ t**power,
normalised per document to sum to 1. Per-document terms are averaged over the documents of the batch;
the NLL is the mean over all answer tokens of the batch, as plain answer-only cross-entropy would be.

A segment code weights *predicting* the token it sits on, so a token's log-probability comes from the
logits one position earlier. The first token of every document is never a loss token: predicting it
would read across a document boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptr.encode.shards import ANSWER, IGNORE
from ptr.objective import DEFAULT_LOSS_WEIGHTS

CODES = 256  # segment codes fit in uint8; doc * CODES + code orders attempts by (document, code)


@dataclass
class LossTerms:
    total: torch.Tensor
    nll: torch.Tensor
    consistency: torch.Tensor
    confidence: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "nll", "consistency", "confidence")}


def loss_positions(segments: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, token index) of every token that carries loss: a non-IGNORE code, not a doc start."""
    return ((segments != IGNORE) & (position_ids > 0)).nonzero(as_tuple=True)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Log-softmax in fp32 or wider: bf16 logits lose the small probabilities the NLL depends on."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def beta_weights(t: torch.Tensor, doc: torch.Tensor, power: float) -> torch.Tensor:
    """β for attempts numbered ``t`` (1-based) of documents ``doc``: t**power, summing to 1 per doc."""
    raw = t.to(torch.float64) ** power
    totals = torch.zeros(int(doc.max()) + 1, dtype=raw.dtype, device=raw.device).index_add_(0, doc, raw)
    return raw / totals[doc]


def objective(
    logp: torch.Tensor,
    hidden: torch.Tensor,
    segment: torch.Tensor,
    doc: torch.Tensor,
    weights: tuple[float, float, float] = DEFAULT_LOSS_WEIGHTS,
    beta_power: float = 1.0,
) -> LossTerms:
    """The objective over the loss tokens of a batch, given flat per-token tensors.

    ``logp`` [N] log-probability of each loss token, ``hidden`` [N, H] its last hidden state,
    ``segment`` [N] its code, ``doc`` [N] a batch-wide document id (any non-negative ints).
    """
    if logp.numel() == 0:  # nothing to learn here; keep the graph so every rank runs backward
        zero = hidden.sum() * 0.0 + logp.sum() * 0.0
        return LossTerms(zero, zero, zero, zero)
    segment, doc = segment.long(), doc.long()
    hidden = _at_least_fp32(hidden)  # pooled sums and cosines in bf16 would be coarse

    answer = segment == ANSWER
    nll = -(logp * answer).sum() / answer.sum().clamp(min=1)

    # Attempts: unique (document, code) pairs, sorted, so a document's attempts are adjacent and in order.
    keys, attempt_of = torch.unique(doc * CODES + segment, sorted=True, return_inverse=True)
    count = torch.zeros(len(keys), dtype=logp.dtype, device=logp.device).index_add_(
        0, attempt_of, torch.ones_like(logp)
    )
    mean_logp = torch.zeros_like(count).index_add_(0, attempt_of, logp) / count
    pooled = torch.zeros(len(keys), hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    pooled = pooled.index_add_(0, attempt_of, hidden) / count.to(hidden.dtype)[:, None]

    attempt_doc = keys // CODES
    _, attempts_per_doc = torch.unique_consecutive(attempt_doc, return_counts=True)
    doc_index = torch.repeat_interleave(
        torch.arange(len(attempts_per_doc), device=keys.device), attempts_per_doc
    )
    first = torch.cumsum(attempts_per_doc, 0) - attempts_per_doc
    t = torch.arange(len(keys), device=keys.device) - first[doc_index] + 1
    n_docs = len(attempts_per_doc)

    beta = beta_weights(t, doc_index, beta_power).to(mean_logp.dtype)
    confidence = (
        torch.zeros(n_docs, dtype=mean_logp.dtype, device=keys.device)
        .index_add_(0, doc_index, beta * (1.0 - mean_logp.exp()))
        .mean()
    )

    same_doc = doc_index[1:] == doc_index[:-1]  # (t-1, t) pairs inside one document
    gap = 1.0 - F.cosine_similarity(pooled[1:], pooled[:-1], dim=-1)
    consistency = (
        torch.zeros(n_docs, dtype=gap.dtype, device=keys.device)
        .index_add_(0, doc_index[1:][same_doc], gap[same_doc])
        .mean()
    )

    l1, l2, l3 = weights
    total = l1 * nll + l2 * consistency.to(nll.dtype) + l3 * confidence.to(nll.dtype)
    return LossTerms(total, nll, consistency, confidence)


def objective_from_logits(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    segments: torch.Tensor,
    position_ids: torch.Tensor,
    doc_ids: torch.Tensor,
    weights: tuple[float, float, float] = DEFAULT_LOSS_WEIGHTS,
    beta_power: float = 1.0,
) -> LossTerms:
    """The objective from full ``[B, L, V]`` logits (the trainer computes logits only where needed)."""
    b, i = loss_positions(segments, position_ids)
    logp = -F.cross_entropy(_at_least_fp32(logits[b, i - 1]), input_ids[b, i], reduction="none")
    return objective(logp, hidden[b, i], segments[b, i], doc_ids[b, i], weights, beta_power)
