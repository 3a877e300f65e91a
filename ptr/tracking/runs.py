"""MLflow runs for stages: the experiment, the parent run per pipeline run, and the stage's handle.

MLflow itself is imported only when a run is opened, so a stage without tracking never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import httpx

from ptr.errors import PtrError
from ptr.tracking import plots
from ptr.tracking.store import local_dir

PIPELINE_STAGE = "pipeline"
# MLflow 3's UI reads an experiment's kind from this tag; "custom_model_development" (shown as
# "Machine learning") opens it on its training runs rather than on GenAI traces. (The values the UI
# knows, in mlflow/server/js of MLflow 3.17: genai_development, custom_model_development, finetuning, …)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
_TAG_LIMIT = 5000
_PARAM_LIMIT = 6000


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


def _quiet_mlflow() -> None:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")


def connect(uri: str):
    """An MlflowClient for ``uri``, after checking that a tracking server answers."""
    import mlflow
    from mlflow import MlflowClient

    _quiet_mlflow()
    # MLflow prints run links to stdout, which belongs to the stages; open_run says it on stderr instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_server(uri: str) -> None:
    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        raise PtrError(
            f"the MLflow tracking server at {uri} does not answer ({err}); start it (`make stack-up`) or "
            "unset MLFLOW_TRACKING_URI to run without a server"
        ) from None


def _artifact_root(uri: str, name: str) -> str | None:
    """Where a new experiment keeps artifacts when the store is a local file (a server decides itself)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts" / name).as_uri()
    if "://" not in uri or uri.startswith("file:"):
        return (local_dir() / "artifacts" / name).as_uri()
    return None


def experiment_id(client, name: str | None = None) -> str:
    """The experiment runs go to (``PTR_EXPERIMENT``, default ``ptr``), created on first use."""
    from mlflow.exceptions import MlflowException

    name = name or os.environ.get("PTR_EXPERIMENT", "ptr")
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:  # made before ptr tagged experiments: say what it holds
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=_artifact_root(client.tracking_uri, name),
            tags=dict([EXPERIMENT_KIND]),
        )
    except MlflowException:  # created meanwhile by another stage
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _check_run_id(ptr_run_id: str) -> str:
    if not _RUN_ID.match(ptr_run_id):
        raise PtrError(f"PTR_RUN_ID {ptr_run_id!r}: use letters, digits and . _ : - (at most 200)")
    return ptr_run_id


def _parents(client, exp_id: str, ptr_run_id: str) -> list:
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`ptr.run_id` = '{ptr_run_id}' and tags.`ptr.stage` = '{PIPELINE_STAGE}'",
        max_results=50,
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def parent_run(client, exp_id: str, ptr_run_id: str, label: str | None = None) -> str:
    """The parent run tagged ``ptr.run_id``: found, or created. Two stages racing to create it agree
    on the oldest one and the other deletes its own. ``label`` (default ``PTR_RUN_LABEL``, the
    config's ``run.name``) names it and is tagged ``ptr.label``."""
    _check_run_id(ptr_run_id)
    found = _parents(client, exp_id, ptr_run_id)
    if found:
        return found[0].info.run_id
    label = label or os.environ.get("PTR_RUN_LABEL") or None
    tags = {"ptr.run_id": ptr_run_id, "ptr.stage": PIPELINE_STAGE, **({"ptr.label": label} if label else {})}
    mine = client.create_run(exp_id, run_name=f"{label or 'pipeline'} {ptr_run_id}", tags=tags).info.run_id
    winner = _parents(client, exp_id, ptr_run_id)[0].info.run_id
    if winner != mine:
        client.delete_run(mine)
    return winner


def _flatten(params: dict, prefix: str = "") -> dict:
    """Nested config dicts (and pydantic models) become dotted keys: ``{"optim": {"lr": 1}}`` → ``optim.lr``."""
    if hasattr(params, "model_dump"):
        params = params.model_dump()
    flat = {}
    for key, value in params.items():
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _digest(path: Path) -> str:
    """A content fingerprint of a file or folder (large files by size and their first and last MiB)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 64 * 2**20:
                for block in iter(lambda fh=fh: fh.read(2**20), b""):
                    h.update(block)
            else:
                h.update(fh.read(2**20))
                fh.seek(-(2**20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


class MlflowRun(NullRun):
    """A stage's run. Besides logging, it notices the reports it is given and draws their plots when
    the stage ends: ``*.metrics.json`` from evaluation → ``score_vs_round.png``; a trainer's
    ``metrics.jsonl`` → ``loss_curves.png`` (each beside the report)."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self._round_tables: dict[str, dict[str, dict]] = {}
        self._loss_records: dict[str, list[dict]] = {}

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:_PARAM_LIMIT]) for k, v in flat.items()])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise PtrError(f"cannot log artifact {path}: no such file or folder")
        self._notice(path, artifact_path or "")

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:_TAG_LIMIT]) for k, v in tags.items()])

    def log_dataset(self, source, *, name=None, context="training", digest=None, tags=None) -> None:
        """Record a dataset this stage read (``mlflow.log_input``): a local file or folder (digest of its
        content), an ``s3://`` URI, a URL or a hub dataset name."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        source = str(source)
        local = Path(source)
        if digest is None and "://" not in source and local.exists():
            digest = _digest(local)
            source = str(local.absolute())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolved = resolve_dataset_source(source)
        dataset = MetaDataset(resolved, name=name or Path(source.rstrip("/")).name or source, digest=digest)
        input_tags = {k: str(v) for k, v in (tags or {}).items()}
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.log_input(dataset, context=context, tags=input_tags or None)
        else:
            from mlflow.entities import DatasetInput, InputTag

            entity_tags = [InputTag("mlflow.data.context", context)] + [
                InputTag(k, v) for k, v in input_tags.items()
            ]
            self.client.log_inputs(
                self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), entity_tags)]
            )

    # --- plots drawn when the stage ends ---------------------------------------------------------
    def _notice(self, path: Path, artifact_path: str) -> None:
        """Read the reports that plots are drawn from now: the files may be gone when the stage ends."""
        files = [(path, artifact_path)] if path.is_file() else []
        if path.is_dir():
            for f in path.rglob("*"):
                rel = f.parent.relative_to(path).as_posix()
                files.append((f, "/".join(p for p in (artifact_path, rel) if p and p != ".")))
        for f, where in files:
            if f.name.endswith(".metrics.json"):
                with contextlib.suppress(OSError, ValueError):
                    table = json.loads(f.read_text())
                    if isinstance(table, dict) and table.get("rounds"):
                        self._round_tables.setdefault(where, {})[f.name] = table
            elif f.name == "metrics.jsonl":
                with contextlib.suppress(OSError):
                    self._loss_records[where] = plots.read_loss_log(f)

    def draw_plots(self) -> None:
        """A plot that cannot be drawn is reported, never a reason to fail the stage that did the work."""
        jobs = [
            ("score_vs_round.png", plots.score_vs_round, list(t.values()), w)
            for w, t in self._round_tables.items()
        ]
        jobs += [("loss_curves.png", plots.loss_curves, r, w) for w, r in self._loss_records.items() if r]
        with tempfile.TemporaryDirectory() as tmp:
            for name, draw, data, where in jobs:
                try:
                    out = draw(data, Path(tmp) / name)
                    self.client.log_artifact(self.run_id, str(out), where or None)
                except Exception as err:
                    print(f"tracking: could not draw {where}/{name}: {err}", file=sys.stderr)


def _mark_parent(client, parent_id: str, status: str) -> None:
    """The parent run's status follows its stages: FAILED once any stage failed, else FINISHED."""
    parent = client.get_run(parent_id)
    if parent.info.status == "FAILED":
        status = "FAILED"
    client.set_terminated(parent_id, status)


def _say_where(client, info) -> None:
    uri = client.tracking_uri
    if uri.startswith(("http://", "https://")):
        where = f"{uri.rstrip('/')}/#/experiments/{info.experiment_id}/runs/{info.run_id}"
    else:
        where = f"run {info.run_id} in {uri}"
    print(f"tracking: {info.run_name} {where}", file=sys.stderr)


@contextlib.contextmanager
def open_run(
    stage: str,
    params: dict | None,
    tags: dict | None,
    uri: str,
    ptr_run_id: str | None = None,
    name: str | None = None,
):
    """Start the stage's child run (the active MLflow run inside the block) and end it with the status
    the block earned. ``name``: the run's name (default: the stage), e.g. what an evaluation scored."""
    import mlflow

    client = connect(uri)
    exp_id = experiment_id(client)
    ptr_run_id = ptr_run_id or os.environ.get("PTR_RUN_ID") or None
    parent = parent_run(client, exp_id, ptr_run_id) if ptr_run_id else None
    run_tags = {"ptr.stage": stage, **({"ptr.run_id": ptr_run_id} if ptr_run_id else {}), **(tags or {})}
    run_tags = {k: str(v)[:_TAG_LIMIT] for k, v in run_tags.items()}
    active = mlflow.active_run()
    if active is not None:  # a stage called inside another stage's run, in one process: nest under it
        run = mlflow.start_run(
            experiment_id=active.info.experiment_id, run_name=name or stage, nested=True, tags=run_tags
        )
        parent = None
    else:
        run = mlflow.start_run(
            experiment_id=exp_id, run_name=name or stage, parent_run_id=parent, tags=run_tags
        )
    handle = MlflowRun(client, run.info.run_id)
    status = "FAILED"
    try:
        if params:
            handle.log_params(params)
        yield handle
        handle.draw_plots()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)
        _say_where(client, run.info)
        if parent:
            with contextlib.suppress(Exception):
                _mark_parent(client, parent, status)
