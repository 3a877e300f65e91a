"""The PTR objective's weights, named once: λ1 (answer NLL), λ2 (thought consistency), λ3 (confidence).

The encoder records them with the shards (by encoding type); the trainer takes the corpus's unless
``--loss_weights`` says otherwise, and these when the corpus names none. The objective itself is in
:mod:`ptr.train.loss`.
"""

DEFAULT_LOSS_WEIGHTS = (0.8, 0.1, 0.1)  # the paper's
# Encodings without thoughts train on the answer alone.
LOSS_WEIGHTS_BY_ENCODING = {"ptr": DEFAULT_LOSS_WEIGHTS, "qa": (1.0, 0.0, 0.0), "pretrain": (1.0, 0.0, 0.0)}
