"""Micro-batches from encoded shards: padding collation, block-diagonal attention, data position.

The data position is a pure function of the optimizer step: step s of an epoch of ``steps_per_epoch``
steps reads items ``[k * global_micro, (k + 1) * global_micro)`` of this rank's share of the epoch's
permutation (``ShardDataset.epoch_indices``). Resuming at step s therefore reads exactly the batches an
uninterrupted run would have read, with nothing to replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptr.encode.shards import IGNORE, ShardDataset
from ptr.errors import PtrError


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad packed sequences to the longest; every document gets a batch-wide id in ``doc_ids``.

    Padding is a block of its own (doc id −1, positions restarting at 0), so it attends only to
    itself and flash-attention's varlen path sees it as one more sequence; it carries no loss.
    """
    length = max(len(x["input_ids"]) for x in items)
    batch = {
        "input_ids": np.full((len(items), length), pad_id, dtype=np.int64),
        "position_ids": np.tile(np.arange(length, dtype=np.int64), (len(items), 1)),
        "segments": np.full((len(items), length), IGNORE, dtype=np.int64),
        "doc_ids": np.full((len(items), length), -1, dtype=np.int64),
    }
    next_doc = 0
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        batch["input_ids"][row, :n] = item["input_ids"]
        batch["segments"][row, :n] = item["segments"]
        batch["position_ids"][row, :n] = item["position_ids"]
        batch["position_ids"][row, n:] = np.arange(length - n)
        doc_lens = np.asarray(item["doc_lens"], dtype=np.int64)
        batch["doc_ids"][row, :n] = np.repeat(np.arange(next_doc, next_doc + len(doc_lens)), doc_lens)
        next_doc += len(doc_lens)
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def block_causal_mask(doc_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[B, 1, L, L]`` mask: a token sees earlier tokens of its own document only."""
    length = doc_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


@dataclass(frozen=True)
class DataPosition:
    epoch: int
    index: int  # micro-batches of this rank already read in the epoch


class Batches:
    """This rank's micro-batches, addressed by optimizer step."""

    def __init__(self, dataset: ShardDataset, micro_batch: int, grad_accum: int, pad_id: int):
        self.dataset, self.micro_batch, self.grad_accum, self.pad_id = (
            dataset,
            micro_batch,
            grad_accum,
            pad_id,
        )
        per_rank = len(dataset.epoch_indices(0))
        self.steps_per_epoch = per_rank // (micro_batch * grad_accum)
        if self.steps_per_epoch == 0:
            raise PtrError(
                f"{dataset.path}: {len(dataset)} packed sequences give {per_rank} per rank on "
                f"{dataset.world_size} rank(s), fewer than one optimizer step needs "
                f"(train_micro_batch_size_per_gpu {micro_batch} × gradient_accumulation_steps {grad_accum})"
            )
        self._epoch, self._order = -1, []

    def position(self, step: int) -> DataPosition:
        epoch, k = divmod(step, self.steps_per_epoch)
        return DataPosition(epoch, k * self.grad_accum)

    def for_step(self, step: int) -> list[dict[str, torch.Tensor]]:
        """The ``grad_accum`` micro-batches of optimizer step ``step`` (0-based)."""
        pos = self.position(step)
        if pos.epoch != self._epoch:
            self._epoch, self._order = pos.epoch, self.dataset.epoch_indices(pos.epoch)
        out = []
        for j in range(pos.index, pos.index + self.grad_accum):
            ids = self._order[j * self.micro_batch : (j + 1) * self.micro_batch]
            out.append(collate([self.dataset[i] for i in ids], self.pad_id))
        return out


def max_token_id(dataset: ShardDataset) -> int:
    """Largest token id in the corpus (a vectorised pass over the memory-mapped shards)."""
    return max(
        (int(np.max(shard["tokens"])) for shard in dataset._shards if len(shard["tokens"])), default=-1
    )
