"""Encoding thought data into training shards (``ptr encode``) and reading them back."""

from ptr.encode.shards import ANSWER, IGNORE, MAX_THOUGHTS, ShardDataset, ShardWriter

__all__ = ["ANSWER", "IGNORE", "MAX_THOUGHTS", "ShardDataset", "ShardWriter"]
