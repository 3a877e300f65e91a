"""The on-disk shard format shared by the encoder (writer) and the trainer (reader).

A corpus folder holds ``meta.json``, ``summary.json`` and shard folders ``shard-00000/``, each with
four ``.npy`` arrays (memory-mapped on read):

* ``tokens.npy``       all token ids of the shard, concatenated, no padding (uint16, int16 or int32);
* ``segments.npy``     one segment code per token (uint8, see below);
* ``seq_offsets.npy``  int64 [n_seqs + 1]: sequence i is tokens[seq_offsets[i]:seq_offsets[i+1]];
* ``doc_offsets.npy``  int64 [n_seqs + 1]: the documents packed into sequence i are
  ``doc_lens[doc_offsets[i]:doc_offsets[i+1]]``, with ``doc_lens.npy`` int32 [n_docs] alongside.

Segment codes say what each token is, so the trainer can build the thought-mask loss:
``IGNORE`` (0) prompt, chat template and refine prompts (no loss); ``t`` in 1..MAX_THOUGHTS the
tokens of thought t; ``ANSWER`` (255) the final answer (and every loss token of qa/pretrain data).
A code applies to the token it sits on, i.e. to predicting that token from the ones before it.

A shard is written under a temporary name and renamed into place when complete, so a reader
never sees a partial shard; ``meta.json`` is written last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ptr.errors import PtrError

IGNORE = 0
ANSWER = 255
MAX_THOUGHTS = 254
SHARD_RE = re.compile(r"^shard-\d{5}$")
ARRAYS = ("tokens", "segments", "seq_offsets", "doc_offsets", "doc_lens")


class ShardWriter:
    """Append packed sequences; a shard is published once it holds ``tokens_per_file`` tokens."""

    def __init__(self, corpus_dir, dtype: str, tokens_per_file: int = int(5e8)):
        self.dir = Path(corpus_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.tokens_per_file = int(tokens_per_file)
        self.index = 0
        self.shards: list[str] = []
        self._reset()

    def _reset(self):
        self._tokens, self._segments, self._seq_lens, self._doc_counts, self._doc_lens = [], [], [], [], []
        self._count = 0

    def add(self, tokens, segments, doc_lens) -> None:
        tokens = np.asarray(tokens)
        segments = np.asarray(segments, dtype=np.uint8)
        if len(tokens) != len(segments) or sum(doc_lens) != len(tokens) or len(tokens) == 0:
            raise ValueError("tokens, segments and doc_lens disagree in length")
        if tokens.min() < np.iinfo(self.dtype).min or tokens.max() > np.iinfo(self.dtype).max:
            raise OverflowError(f"token id out of range for {self.dtype}")
        self._tokens.append(tokens.astype(self.dtype))
        self._segments.append(segments)
        self._seq_lens.append(len(tokens))
        self._doc_counts.append(len(doc_lens))
        self._doc_lens.extend(int(x) for x in doc_lens)
        self._count += len(tokens)
        if self._count >= self.tokens_per_file:
            self.flush()

    def flush(self) -> None:
        if not self._seq_lens:
            return
        name = f"shard-{self.index:05d}"
        tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        arrays = {
            "tokens": np.concatenate(self._tokens),
            "segments": np.concatenate(self._segments),
            "seq_offsets": np.concatenate([[0], np.cumsum(self._seq_lens)]).astype(np.int64),
            "doc_offsets": np.concatenate([[0], np.cumsum(self._doc_counts)]).astype(np.int64),
            "doc_lens": np.asarray(self._doc_lens, dtype=np.int32),
        }
        for key, value in arrays.items():
            with open(tmp / f"{key}.npy", "wb") as f:
                np.save(f, value)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, self.dir / name)
        self.shards.append(name)
        self.index += 1
        self._reset()

    def close(self) -> list[str]:
        self.flush()
        return self.shards


def _corpus_dirs(path: Path) -> list[Path]:
    if (path / "meta.json").exists():
        return [path]
    found = (
        # Hidden folders are an encoder's staging or the corpus it is replacing, never read.
        sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").exists()
        )
        if path.is_dir()
        else []
    )
    if not found:
        raise PtrError(
            f"{path}: no encoded corpus here (a folder with meta.json, or a folder of such folders)"
        )
    return found


class ShardDataset:
    """Packed sequences of one corpus folder, or of every corpus folder under ``path``.

    ``ds[i]`` gives a dict of numpy arrays: ``input_ids`` (int64 [L]), ``segments`` (uint8 [L]),
    ``doc_lens`` (int32 [k], summing to L) and ``position_ids`` (int64 [L], restarting at 0 at each
    document). ``epoch_indices(epoch)`` is this rank's share of a permutation seeded by
    ``(seed, epoch)``; every rank gets the same number of items.
    """

    def __init__(self, path, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.path = Path(path)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.metas: list[dict] = []
        self._shards: list[dict] = []
        starts = [0]
        for corpus in _corpus_dirs(self.path):
            self.metas.append(json.loads((corpus / "meta.json").read_text()))
            for shard in sorted(p for p in corpus.iterdir() if p.is_dir() and SHARD_RE.match(p.name)):
                arrays = {k: np.load(shard / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
                self._shards.append(arrays)
                starts.append(starts[-1] + len(arrays["seq_offsets"]) - 1)
        hashes = {m.get("tokenizer", {}).get("hash") for m in self.metas}
        if len(hashes) > 1:
            raise PtrError(
                f"{self.path}: corpora were encoded with different tokenizers ({sorted(map(str, hashes))})"
            )
        self._starts = np.asarray(starts, dtype=np.int64)

    @property
    def meta(self) -> dict:
        return self.metas[0] if self.metas else {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        s = int(np.searchsorted(self._starts, index, side="right") - 1)
        a, i = self._shards[s], index - int(self._starts[s])
        lo, hi = int(a["seq_offsets"][i]), int(a["seq_offsets"][i + 1])
        doc_lens = np.asarray(a["doc_lens"][int(a["doc_offsets"][i]) : int(a["doc_offsets"][i + 1])])
        return {
            "input_ids": np.asarray(a["tokens"][lo:hi], dtype=np.int64),
            "segments": np.asarray(a["segments"][lo:hi]),
            "doc_lens": doc_lens,
            "position_ids": np.concatenate([np.arange(n, dtype=np.int64) for n in doc_lens]),
        }

    def epoch_indices(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self))
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank].tolist()
