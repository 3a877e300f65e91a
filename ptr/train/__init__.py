"""Weighted thought-mask fine-tuning on DeepSpeed (``ptr train``).

``ptr.train.recipe.train(TrainConfig(...))`` is the typed entry; ``ptr train`` / ``python -m ptr.train``
parse the paper's flags into the same config (``TrainConfig.to_argv`` writes them back, for a launcher
that starts new processes). The flow is one readable recipe (``recipe.py``); the objective lives in
``loss.py``. Importing this package or its config does not import torch: the pipeline builds a
``TrainConfig`` without paying for it.
"""

from ptr.train.config import TrainConfig

__all__ = ["TrainConfig"]
