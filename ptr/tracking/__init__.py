"""MLflow tracking: the one place that talks to MLflow.

Where runs go:

* ``MLFLOW_TRACKING_URI`` set: that server or store (``make stack-up`` starts one on 127.0.0.1);
* otherwise, with ``PTR_TRACKING=local``: a sqlite store under ``.ptr/`` (``PTR_LOCAL_DIR``);
* otherwise stages do not track: :func:`stage_run` yields a handle whose calls do nothing, and MLflow
  is never imported, so a stage pays nothing for tracking it does not use.

``PTR_TRACKING=off`` turns stage tracking off even with a server configured. ``ptr register`` and
``ptr promote`` always need a store, so they use :func:`tracking_uri` with ``fallback=True``: the
server when configured, else the local sqlite store.

Every pipeline run (``PTR_RUN_ID``, the correlation id the pipeline passes to every stage) gets one
parent run tagged ``ptr.run_id``; each stage is a child run under it with its config as params, its
figures as metrics and its reports as artifacts. Only rank 0 (``RANK``) of a distributed job logs.
"""

from ptr.tracking.runs import NullRun
from ptr.tracking.stage import describe_model, log_to_pipeline, pipeline_run, stage_run
from ptr.tracking.store import enabled, is_rank_zero, local_dir, local_store_uri, tracking_uri

__all__ = [
    "NullRun",
    "describe_model",
    "enabled",
    "is_rank_zero",
    "local_dir",
    "local_store_uri",
    "log_to_pipeline",
    "pipeline_run",
    "stage_run",
    "tracking_uri",
]
