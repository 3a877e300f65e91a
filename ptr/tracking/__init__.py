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

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = [
    "NullRun",
    "describe_model",
    "enabled",
    "local_dir",
    "local_store_uri",
    "pipeline_run",
    "stage_run",
    "tracking_uri",
]


def local_dir() -> Path:
    """The project's local state folder (``.ptr`` in the working directory, or ``PTR_LOCAL_DIR``)."""
    return Path(os.environ.get("PTR_LOCAL_DIR") or ".ptr").absolute()


def local_store_uri() -> str:
    return f"sqlite:///{local_dir() / 'mlflow.db'}"


def _mode() -> str:
    return os.environ.get("PTR_TRACKING", "").strip().lower()


def tracking_uri(*, fallback: bool = False) -> str | None:
    """The store runs go to, or None when stages should not track.

    ``fallback=True`` (the registry commands) always answers: the configured server, else the local
    sqlite store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    if fallback:
        return uri or local_store_uri()
    if _mode() in ("off", "0", "false", "no"):
        return None
    if uri:
        return uri
    return local_store_uri() if _mode() == "local" else None


def is_rank_zero() -> bool:
    """Training logs only from global rank 0 of a distributed job."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


def enabled() -> bool:
    return tracking_uri() is not None and is_rank_zero()


class NullRun:
    """Stands in for a run when tracking is off: every call does nothing."""

    run_id = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        pass

    def log_dataset(self, source, *, name=None, context="training", digest=None, tags=None) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass


_NullRun = NullRun  # the name other modules first imported


def describe_model(model_ref: str) -> dict:
    """Tags that link a run to the model it used.

    A ``models:/name@alias`` or ``models:/name/version`` reference is resolved to its registry name and
    version (``ptr.model_name``, ``ptr.model_version``, ``ptr.model_alias``); for a served model,
    ``PTR_MODEL_VERSION=name/version`` says which registered version the server runs. ``ptr promote``
    finds each version's evaluation by these tags.
    """
    ref = str(model_ref)
    tags = {"ptr.model_ref": ref}
    if ref.startswith("models:/"):
        from ptr.tracking.registry import parse_ref, resolve_version

        name, alias, _ = parse_ref(ref)
        tags.update({"ptr.model_name": name, "ptr.model_version": str(resolve_version(ref).version)})
        if alias:
            tags["ptr.model_alias"] = alias
    elif os.environ.get("PTR_MODEL_VERSION"):
        name, _, version = os.environ["PTR_MODEL_VERSION"].rpartition("/")
        if name and version:
            tags.update({"ptr.model_name": name, "ptr.model_version": version})
    return tags


def pipeline_run(ptr_run_id: str | None = None) -> str | None:
    """The MLflow id of the parent run for a pipeline run (created on first use), or None when
    tracking is off. The pipeline may call this once up front; stages find the same run by its tag."""
    ptr_run_id = ptr_run_id or os.environ.get("PTR_RUN_ID")
    if not ptr_run_id or not enabled():
        return None
    from ptr.tracking import runs

    client = runs.connect(tracking_uri())
    return runs.parent_run(client, runs.experiment_id(client), ptr_run_id)


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None = None, tags: dict | None = None):
    """A child run for one stage (``train``, ``eval``, …) under the pipeline run's parent, or a
    no-op handle when tracking is off (or on a rank other than 0)."""
    if not enabled():
        yield NullRun()
        return
    from ptr.tracking import runs

    with runs.open_run(stage, params=params, tags=tags, uri=tracking_uri()) as handle:
        yield handle
