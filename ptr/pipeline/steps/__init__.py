"""One function per pipeline step: what each Kubeflow component calls, with artifact folders as paths.

Each step validates its config sections, sets the correlation id (``PTR_RUN_ID``, the KFP run id) for
tracking, builds its stage's typed config from its section and calls the stage in this process.
Steps whose work differs on a cluster (train, deploy, promote) branch on ``run.runtime`` and hand the
cluster part to :mod:`ptr.cluster`; the stages themselves never know where they run.

* :mod:`.data`: queries, thoughts;
* :mod:`.training`: encode, train, register;
* :mod:`.serving`: deploy, evaluate the base model, evaluate the candidate;
* :mod:`.promotion`: promote (and production follows the champion on a cluster).

Artifact folders hold plain files: ``queries.jsonl``, ``thoughts.jsonl``, a shard folder, and for a
model ``location.json`` naming where the exported Hugging Face directory is (inside the artifact on
one machine; on the shared PVC or in S3 on a cluster, where training pods wrote it).
"""

from ptr.pipeline.steps.data import queries, thoughts
from ptr.pipeline.steps.promotion import promote
from ptr.pipeline.steps.serving import deploy, evaluate, evaluate_base
from ptr.pipeline.steps.training import encode, register, train

__all__ = [
    "deploy",
    "encode",
    "evaluate",
    "evaluate_base",
    "promote",
    "queries",
    "register",
    "thoughts",
    "train",
]
