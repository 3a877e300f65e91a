"""Encoding thought data into training shards (``ptr encode``) and reading them back.

``encode(EncodeConfig(...)) -> summary`` is the stage's Python entry; :class:`ShardDataset` reads the
shards (the trainer's side). The encoder's modules are imported only when used, so the trainer
importing ``ShardDataset`` does not pay for pydantic or the tokenizer.
"""

from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS, ShardDataset, ShardWriter

__all__ = ["ANSWER", "IGNORE", "MAX_THOUGHTS", "EncodeConfig", "ShardDataset", "ShardWriter", "encode"]


def __getattr__(name):
    if name in ("EncodeConfig", "encode"):
        from ptr.encode import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'ptr.encode' has no attribute {name!r}")
