"""MLflow tracking: the one place that talks to MLflow.

Stages call :func:`stage_run`; it is a no-op unless tracking is configured (``MLFLOW_TRACKING_URI``),
so every stage runs offline without MLflow. (Parent runs per pipeline run, the registry and promotion
build on this module.)
"""

from __future__ import annotations

import contextlib
import os


def tracking_uri() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def enabled() -> bool:
    return tracking_uri() is not None


class _NullRun:
    """Stands in for a run when tracking is off: every call does nothing."""

    run_id = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass


class _MlflowRun(_NullRun):
    def __init__(self, run):
        self.run = run
        self.run_id = run.info.run_id

    def log_params(self, params: dict) -> None:
        import mlflow

        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()}, run_id=self.run_id)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.run_id)

    def set_tags(self, tags: dict) -> None:
        import mlflow

        for k, v in tags.items():
            mlflow.set_tag(k, str(v))


def describe_model(model_ref: str) -> dict:
    """Tags that link a run to the model it used (registry name/version for ``models:/`` references,
    or ``PTR_MODEL_VERSION=name/version`` for a served model)."""
    tags = {"ptr.model_ref": str(model_ref)}
    if os.environ.get("PTR_MODEL_VERSION"):
        name, _, version = os.environ["PTR_MODEL_VERSION"].rpartition("/")
        tags.update({"ptr.model_name": name, "ptr.model_version": version})
    return tags


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None = None, tags: dict | None = None):
    """A child run for one stage (``train``, ``eval``, …), or a no-op when tracking is off."""
    if not enabled():
        yield _NullRun()
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(os.environ.get("PTR_EXPERIMENT", "ptr"))
    with mlflow.start_run(run_name=stage, nested=mlflow.active_run() is not None) as run:
        handle = _MlflowRun(run)
        handle.set_tags(
            {
                "ptr.stage": stage,
                **({"ptr.run_id": os.environ["PTR_RUN_ID"]} if "PTR_RUN_ID" in os.environ else {}),
                **(tags or {}),
            }
        )
        if params:
            handle.log_params(params)
        yield handle
