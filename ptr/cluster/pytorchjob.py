"""The training step on a cluster: a multi-node PyTorchJob built with the kubeflow-training SDK.

One Master and ``nodes - 1`` Workers, each running ``nproc_per_node`` processes under ``torchrun``
(the Training Operator passes ``nprocPerNode`` and the rendezvous through ``PET_*`` variables). Every
replica mounts the run's shared storage (a PVC) or stages files in and out of S3
(:mod:`ptr.cluster.job_entry`). The job carries the ``ptr.run_id`` label so that ``kubectl get
pytorchjobs -l ptr.run_id=<KFP run id>`` finds it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from kubeflow.training import models
from kubeflow.training.constants import constants
from kubernetes import client as k8s

from ptr.cluster import RUN_ID_LABEL
from ptr.cluster.names import label_value
from ptr.cluster.settings import Cluster, Resources
from ptr.errors import PtrError

CONTAINER = constants.PYTORCHJOB_CONTAINER  # the operator finds the training container by this name
JOB_KIND = constants.PYTORCHJOB_KIND


def _container(image: str, command: list[str], resources: Resources, env: dict[str, str], cluster: Cluster):
    limits = resources.limits()
    mounts = []
    if cluster.storage.pvc:
        mounts.append(k8s.V1VolumeMount(name="work", mount_path=cluster.storage.mount_path))
    if resources.gpus:
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return k8s.V1Container(
        name=CONTAINER,
        image=image,
        command=command,
        env=[k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(env.items())]
        + [
            k8s.V1EnvVar(
                name=key,
                value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key)),
            )
            for secret, keys in sorted(cluster.env_secrets.items())
            for key in keys
        ],
        resources=k8s.V1ResourceRequirements(requests=dict(limits), limits=limits),
        volume_mounts=mounts or None,
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True),
    )


def _pod_template(container, resources: Resources, cluster: Cluster, labels: dict[str, str]):
    volumes = []
    if cluster.storage.pvc:
        volumes.append(
            k8s.V1Volume(
                name="work",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=cluster.storage.pvc
                ),
            )
        )
    if resources.gpus:  # NCCL needs a shared-memory segment larger than the container default
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels, annotations={"sidecar.istio.io/inject": "false"}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=volumes or None,
            service_account_name=cluster.service_account,
            node_selector=cluster.node_selector or None,
            tolerations=[k8s.V1Toleration(**t.model_dump(exclude_none=True)) for t in cluster.tolerations]
            or None,
        ),
    )


def build_pytorchjob(
    *,
    name: str,
    run_id: str,
    cluster: Cluster,
    command: list[str],
    nodes: int,
    nproc_per_node: int,
    env: dict[str, str] | None = None,
) -> models.KubeflowOrgV1PyTorchJob:
    """A PyTorchJob with one Master and ``nodes - 1`` Workers running ``command`` on the GPU image."""
    if nodes < 1 or nproc_per_node < 1:
        raise PtrError(
            f"a PyTorchJob needs nodes ≥ 1 and nproc_per_node ≥ 1, got {nodes} and {nproc_per_node}"
        )
    resources = cluster.train_resources
    if resources.gpus and resources.gpus < nproc_per_node:
        raise PtrError(f"nproc_per_node={nproc_per_node} exceeds the {resources.gpus} GPUs per node")
    labels = {RUN_ID_LABEL: label_value(run_id), "app.kubernetes.io/part-of": "ptr"}
    env = {**cluster.env, "PTR_RUN_ID": run_id, "PYTHONUNBUFFERED": "1", **(env or {})}
    image = cluster.gpu_image if resources.gpus else cluster.image
    template = _pod_template(_container(image, command, resources, env, cluster), resources, cluster, labels)
    replicas = {
        constants.REPLICA_TYPE_MASTER: models.KubeflowOrgV1ReplicaSpec(
            replicas=1, restart_policy="OnFailure", template=template
        )
    }
    if nodes > 1:
        replicas[constants.REPLICA_TYPE_WORKER] = models.KubeflowOrgV1ReplicaSpec(
            replicas=nodes - 1, restart_policy="OnFailure", template=template
        )
    return models.KubeflowOrgV1PyTorchJob(
        api_version=constants.API_VERSION,
        kind=JOB_KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=cluster.namespace, labels=labels),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                backoff_limit=2,
                clean_pod_policy="None",  # keep pods after the end so their logs can be read
                active_deadline_seconds=cluster.job_timeout_s,
            ),
        ),
    )


def to_dict(obj) -> dict:
    """A Kubernetes model object as the JSON the API server receives (camelCase, no nulls)."""
    return k8s.ApiClient().sanitize_for_serialization(obj)


def training_client(namespace: str):
    """A TrainingClient from the in-cluster service account (or ~/.kube/config outside a cluster)."""
    from kubeflow.training import TrainingClient

    return TrainingClient(namespace=namespace, job_kind=JOB_KIND)


def submit(job: models.KubeflowOrgV1PyTorchJob, client) -> None:
    """Create the job; an existing job of the same name (a retried step) is replaced."""
    name, namespace = job.metadata.name, job.metadata.namespace
    try:
        client.create_job(job=job, namespace=namespace)
    except RuntimeError as err:
        if "AlreadyExists" not in str(err) and "409" not in str(err):
            raise PtrError(f"cannot create PyTorchJob {namespace}/{name}: {err}") from None
        print(f"PyTorchJob {namespace}/{name} exists from an earlier attempt: replacing it", file=sys.stderr)
        client.delete_job(name=name, namespace=namespace, job_kind=JOB_KIND)
        _wait_deleted(client, name, namespace)
        client.create_job(job=job, namespace=namespace)


def _wait_deleted(client, name: str, namespace: str, timeout: float = 300, poll: float = 2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.get_job(name=name, namespace=namespace, job_kind=JOB_KIND)
        except RuntimeError:
            return
        time.sleep(poll)
    raise PtrError(f"PyTorchJob {namespace}/{name} was not deleted within {timeout:.0f}s")


def _latest(conditions) -> tuple[str, str, str]:
    """(type, reason, message) of the newest condition whose status is True."""
    true = [c for c in conditions or [] if str(c.status) == "True"]
    if not true:
        return "Pending", "", ""
    last = true[-1]
    return last.type, last.reason or "", last.message or ""


def wait(
    client,
    name: str,
    namespace: str,
    *,
    timeout: float,
    poll: float = 10.0,
    report: Callable[[str], None] | None = None,
) -> str:
    """Wait for Succeeded or Failed, reporting each change of state; raise with the job's reason."""
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        job = client.get_job(name=name, namespace=namespace, job_kind=JOB_KIND)
        state, reason, message = _latest(job.status.conditions if job.status else None)
        if (state, reason) != seen:
            seen = (state, reason)
            replicas = job.status.replica_statuses if job.status and job.status.replica_statuses else {}
            counts = ", ".join(
                f"{kind}: {r.active or 0} active/{r.succeeded or 0} succeeded/{r.failed or 0} failed"
                for kind, r in sorted(replicas.items())
            )
            report(
                f"PyTorchJob {namespace}/{name}: {state}{f' ({reason})' if reason else ''}. {counts}".rstrip()
            )
        if state == "Succeeded":
            return state
        if state == "Failed":
            raise PtrError(
                f"PyTorchJob {namespace}/{name} failed: {reason or 'Failed'}: {message}".rstrip(": ")
            )
        if time.monotonic() > deadline:
            raise PtrError(
                f"PyTorchJob {namespace}/{name} did not finish within {timeout:.0f}s (last state {state})"
            )
        time.sleep(poll)
