"""Weighted thought-mask fine-tuning on DeepSpeed (``ptr train``).

``train(TrainConfig(...))`` is the typed entry for the pipeline; ``ptr train`` / ``python -m ptr.train``
parse the paper's flags into the same config. The flow is one readable recipe (``recipe.py``); the
objective lives in ``loss.py``.
"""

from ptr.train.config import TrainConfig


def train(config: TrainConfig) -> dict:
    """Run a training job; returns a summary (final step, losses, export directory)."""
    from ptr.train.recipe import run

    return run(config)


__all__ = ["TrainConfig", "train"]
