"""Encoding thought data into training shards (``ptr encode``) and reading them back.

``encode(EncodeConfig(...)) -> summary`` is the stage's Python entry; :class:`ShardDataset` reads the
shards (the trainer's side). The tokenizer is loaded only when encoding runs.
"""

from ptr.encode.encoder import EncodeConfig, encode
from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS, ShardDataset, ShardWriter

__all__ = ["ANSWER", "IGNORE", "MAX_THOUGHTS", "EncodeConfig", "ShardDataset", "ShardWriter", "encode"]
