"""The train step on a cluster: where a run's files live, the command every replica runs, and the
PyTorchJob that runs it, submitted and waited for.

Inputs are typed: the cluster settings, the run's :class:`~ptr.train.config.TrainConfig` (as the step
built it; its data, output and DeepSpeed paths are replaced by the cluster's) and the job's shape.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ptr import storage
from ptr.cluster import pytorchjob
from ptr.cluster.names import resource_name
from ptr.cluster.settings import Cluster
from ptr.files import write_json
from ptr.train.config import TrainConfig

S3_WORKDIR = "/tmp/ptr-work"  # inside each training pod, where S3 inputs are staged
ENTRY = ["python", "-m", "ptr.cluster.job_entry"]


@dataclass(frozen=True)
class TrainingPlan:
    """Where a cluster run's files live and what every replica runs."""

    root: str  # the run's folder on the PVC, or its prefix in S3
    shards: str  # where the step puts the encoded shards
    ds_config: str | None  # where the step puts the DeepSpeed config (None: the trainer's default)
    model: str  # where the exported model ends up
    command: list[str]  # every PyTorchJob replica's command


def plan(cluster: Cluster, config: TrainConfig, run_id: str, *, with_ds_config: bool) -> TrainingPlan:
    """With a PVC every replica mounts the volume and trains straight from and to it; with S3 every
    replica stages the inputs in and node 0 stages the exported model out."""
    root = cluster.storage.run_root(run_id)
    shards = f"{root}/shards"
    ds_config = f"{root}/deepspeed.json" if with_ds_config else None
    # A replica the operator restarts (a retryable exit) resumes from its newest complete checkpoint.
    config = config.model_copy(update={"resume": "auto"})
    if cluster.storage.pvc:
        where = {"data_path": shards, "output_path": f"{root}/output", "deepspeed_config_path": ds_config}
        command = [*ENTRY, "--", *config.model_copy(update=where).to_argv()]
        model = f"{root}/output/{config.save_name}/final"
        return TrainingPlan(root, shards, ds_config, model, command)
    staging = ["--fetch", f"{shards}={S3_WORKDIR}/shards"]
    local_ds = None
    if with_ds_config:
        local_ds = f"{S3_WORKDIR}/deepspeed.json"
        staging += ["--fetch", f"{ds_config}={local_ds}"]
    model = f"{root}/model"
    staging += ["--publish", f"{S3_WORKDIR}/output/{config.save_name}/final={model}"]
    where = {
        "data_path": f"{S3_WORKDIR}/shards",
        "output_path": f"{S3_WORKDIR}/output",
        "deepspeed_config_path": local_ds,
    }
    command = [*ENTRY, *staging, "--", *config.model_copy(update=where).to_argv()]
    return TrainingPlan(root, shards, ds_config, model, command)


def training_job(
    cluster: Cluster, training: TrainingPlan, run_id: str, *, nodes: int, nproc_per_node: int, experiment: str
):
    """The PyTorchJob of a plan (built by :mod:`ptr.cluster.pytorchjob`); its pods track into the run's
    MLflow experiment."""
    return pytorchjob.build_pytorchjob(
        name=resource_name("ptr-train", run_id),
        run_id=run_id,
        cluster=cluster,
        command=training.command,
        nodes=nodes,
        nproc_per_node=nproc_per_node,
        env={"PTR_EXPERIMENT": experiment},
    )


def _put_inputs(cluster: Cluster, training: TrainingPlan, shards: Path, ds: dict | None) -> None:
    if cluster.storage.pvc:
        target = Path(training.shards)
        if target.exists():  # a retried step: replace what an earlier attempt copied
            shutil.rmtree(target)
        shutil.copytree(shards, target)
        if ds is not None:
            write_json(training.ds_config, ds)
        return
    storage.publish(shards, training.shards)
    if ds is not None:
        with tempfile.TemporaryDirectory() as tmp:
            write_json(Path(tmp) / "deepspeed.json", ds)
            storage.publish(Path(tmp) / "deepspeed.json", training.ds_config)


def train(
    cluster: Cluster,
    config: TrainConfig,
    *,
    ds: dict | None,
    shards: Path,
    run_id: str,
    nodes: int,
    nproc_per_node: int,
) -> dict:
    """Put the inputs where the replicas read them, submit the PyTorchJob, wait for its end (a job
    that fails or outlives the timeout is deleted, see :func:`ptr.cluster.pytorchjob.run`).
    Returns ``{model, pytorchjob}``: where the exported model is, and the job's name."""
    training = plan(cluster, config, run_id, with_ds_config=ds is not None)
    _put_inputs(cluster, training, Path(shards), ds)
    job = training_job(cluster, training, run_id, nodes=nodes, nproc_per_node=nproc_per_node)
    pytorchjob.run(job, pytorchjob.training_client(cluster.namespace), timeout=cluster.job_timeout_s)
    return {"model": training.model, "pytorchjob": job.metadata.name}
