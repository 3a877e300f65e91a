"""A stage's view of tracking: its child run under the pipeline run, and the tags naming its model."""

from __future__ import annotations

import contextlib
import os

from ptr.tracking import model_registry, runs
from ptr.tracking.runs import NullRun
from ptr.tracking.store import enabled, tracking_uri


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
        name, alias, _ = model_registry.parse_ref(ref)
        version = model_registry.resolve_version(ref).version
        tags.update({"ptr.model_name": name, "ptr.model_version": str(version)})
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
    client = runs.connect(tracking_uri())
    return runs.parent_run(client, runs.experiment_id(client), ptr_run_id)


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None = None, tags: dict | None = None, name: str | None = None):
    """A child run for one stage (``train``, ``eval``, …) under the pipeline run's parent, or a
    no-op handle when tracking is off (or on a rank other than 0). ``name``: the run's name when the
    stage alone does not say what it did (``eval base · smollm2-135m-instruct``)."""
    if not enabled():
        yield NullRun()
        return
    with runs.open_run(stage, params=params, tags=tags, uri=tracking_uri(), name=name) as handle:
        yield handle


def log_to_pipeline(
    metrics: dict[str, float] | None = None, params: dict | None = None, tags: dict | None = None
) -> None:
    """Figures of the whole pipeline run on its parent run, where MLflow's runs table shows them
    without expanding the run (the headline scores, the promotion decision, the step times).
    Nothing happens when tracking is off or outside a pipeline run."""
    parent = pipeline_run()
    if parent is None:
        return
    handle = runs.MlflowRun(runs.connect(tracking_uri()), parent)
    if params:
        handle.log_params(params)
    if metrics:
        handle.log_metrics(metrics)
    if tags:
        handle.set_tags(tags)
