"""The training step on a cluster: a multi-node PyTorchJob built with the kubeflow-training SDK.

One Master and ``nodes - 1`` Workers, each running ``nproc_per_node`` processes under ``torchrun``
(the Training Operator passes ``nprocPerNode`` and the rendezvous through ``PET_*`` variables). Every
replica mounts the run's shared storage (a PVC) or stages files in and out of S3
(:mod:`ptr.cluster.job_entry`). The job carries the ``ptr.run_id`` label so that ``kubectl get
pytorchjobs -l ptr.run_id=<KFP run id>`` finds it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubeflow.training import models
from kubeflow.training.constants import constants
from kubernetes import client as k8s

from ptr.cluster import RUN_ID_LABEL
from ptr.cluster.api import gone, retrying, transient
from ptr.cluster.api import status as http_status
from ptr.cluster.names import label_value
from ptr.cluster.settings import Cluster, Resources
from ptr.errors import PtrError

CONTAINER = constants.PYTORCHJOB_CONTAINER  # the operator finds the training container by this name
JOB_KIND = constants.PYTORCHJOB_KIND
# Restart a replica only when its exit code says the failure was not the program's (the operator's
# ExitCode policy, training-operator pkg/util/train/train_util.go: 130, 137, 143 — SIGINT, SIGKILL,
# SIGTERM, e.g. a preempted node — and 138, which job_entry exits with to ask for a retry); a bug
# (exit 1) fails the job at once instead of burning the backoff limit on identical crashes.
RESTART_POLICY = "ExitCode"
BACKOFF_LIMIT = 3  # replica restarts (retryable exits) before the job fails
TTL_AFTER_FINISHED_S = 24 * 3600  # the operator deletes a finished job (and its pods) a day later
LOG_LINES = 30  # last lines of a failed replica's log kept for the step's error


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
            # the workload account: training code holds no API rights, and no token is mounted
            service_account_name=cluster.workload_service_account,
            automount_service_account_token=False,
            # the images' user; fsGroup makes volumes that support it group-writable for it
            security_context=k8s.V1PodSecurityContext(run_as_user=1000, run_as_group=1000, fs_group=1000),
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
            replicas=1, restart_policy=RESTART_POLICY, template=template
        )
    }
    if nodes > 1:
        replicas[constants.REPLICA_TYPE_WORKER] = models.KubeflowOrgV1ReplicaSpec(
            replicas=nodes - 1, restart_policy=RESTART_POLICY, template=template
        )
    return models.KubeflowOrgV1PyTorchJob(
        api_version=constants.API_VERSION,
        kind=JOB_KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=cluster.namespace, labels=labels),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc_per_node),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                backoff_limit=BACKOFF_LIMIT,
                # The operator deletes the pods of a job that exceeds its backoff limit or deadline
                # before it marks it Failed, whatever this says (common/job.go); wait() records why
                # each replica failed while the job runs.
                clean_pod_policy="None",
                ttl_seconds_after_finished=TTL_AFTER_FINISHED_S,
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
    except RuntimeError as err:  # the SDK raises it from the ApiException (training_client.create_job, 1.9)
        if http_status(err) != 409:  # 409 Conflict: AlreadyExists
            raise PtrError(f"cannot create PyTorchJob {namespace}/{name}: {err}") from None
        print(f"PyTorchJob {namespace}/{name} exists from an earlier attempt: replacing it", file=sys.stderr)
        delete(client, name, namespace)
        _wait_deleted(client, name, namespace)
        client.create_job(job=job, namespace=namespace)


def delete(client, name: str, namespace: str) -> bool:
    """Delete the job and, in the foreground, its pods; ``False`` when it was already gone."""
    try:
        retrying(
            lambda: client.delete_job(
                name=name,
                namespace=namespace,
                job_kind=JOB_KIND,
                delete_options=k8s.V1DeleteOptions(propagation_policy="Foreground"),
            ),
            what=f"deleting PyTorchJob {namespace}/{name}",
        )
    except Exception as err:  # noqa: BLE001
        if gone(err):
            return False
        raise
    return True


def _wait_deleted(client, name: str, namespace: str, timeout: float = 300, poll: float = 2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.get_job(name=name, namespace=namespace, job_kind=JOB_KIND)
        except RuntimeError as err:
            if gone(err):
                return
        time.sleep(poll)
    raise PtrError(f"PyTorchJob {namespace}/{name} was not deleted within {timeout:.0f}s")


# ---------------------------------------------------------------- following a job to its end


@dataclass
class ReplicaFailure:
    """Why one replica's container stopped: what the kubelet recorded, and its last log lines."""

    pod: str
    reason: str
    exit_code: int | None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)

    def describe(self) -> str:
        head = f"{self.pod}: {self.reason or 'terminated'}"
        if self.exit_code is not None:
            head += f" (exit code {self.exit_code})"
        if self.message:
            head += f": {self.message.strip()}"
        return "\n".join([head, *(f"    {line}" for line in self.log_tail)])


class FailureLog:
    """Failures of the job's pods, recorded while it runs: once the operator gives up it deletes
    the pods (and their logs) before the job reads Failed."""

    def __init__(self, core_api, name: str, namespace: str):
        self.core_api, self.name, self.namespace = core_api, name, namespace
        self.failures: dict[tuple[str, int], ReplicaFailure] = {}

    def _log_tail(self, pod: str, previous: bool) -> list[str]:
        try:
            text = self.core_api.read_namespaced_pod_log(
                pod, self.namespace, container=CONTAINER, tail_lines=LOG_LINES, previous=previous
            )
        except Exception as err:  # noqa: BLE001 — a missing log must not hide the failure itself
            return [f"(log unavailable: {type(err).__name__})"]
        return str(text or "").rstrip("\n").splitlines()[-LOG_LINES:]

    def record(self) -> list[ReplicaFailure]:
        """Look at the job's pods now; return the failures not seen before."""
        if self.core_api is None:
            return []
        try:
            pods = self.core_api.list_namespaced_pod(
                self.namespace, label_selector=f"{constants.JOB_NAME_LABEL}={self.name}"
            ).items
        except Exception as err:  # noqa: BLE001 — reading pods is a diagnosis: never fail the wait on it
            if not transient(err):
                print(f"cannot list the pods of {self.name}: {err}", file=sys.stderr, flush=True)
            return []
        new = []
        for pod in pods:
            for status in (pod.status.container_statuses or []) if pod.status else []:
                if status.name != CONTAINER:
                    continue
                current = status.state.terminated if status.state else None
                last = status.last_state.terminated if status.last_state else None
                for terminated, previous in ((current, False), (last, True)):
                    if terminated is None or terminated.exit_code == 0:
                        continue
                    key = (pod.metadata.name, int(status.restart_count or 0) - (1 if previous else 0))
                    if key in self.failures:
                        continue
                    failure = ReplicaFailure(
                        pod=pod.metadata.name,
                        reason=terminated.reason or "",
                        exit_code=terminated.exit_code,
                        message=terminated.message or "",
                        log_tail=self._log_tail(pod.metadata.name, previous),
                    )
                    self.failures[key] = failure
                    new.append(failure)
            if pod.status and pod.status.reason in ("Evicted", "Preempting", "OutOfcpu", "OutOfmemory"):
                key = (pod.metadata.name, -1)
                if key not in self.failures:
                    self.failures[key] = ReplicaFailure(
                        pod.metadata.name, pod.status.reason, None, pod.status.message or ""
                    )
                    new.append(self.failures[key])
        return new

    def summary(self) -> str:
        return "\n".join(f.describe() for f in self.failures.values())


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
    """Wait for Succeeded or Failed, reporting each change of state and each replica failure;
    raise with the job's reason and every failure seen (exit code, reason, last log lines)."""
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout
    failures = FailureLog(getattr(client, "core_api", None), name, namespace)
    seen = None
    while True:
        try:
            job = retrying(
                lambda: client.get_job(name=name, namespace=namespace, job_kind=JOB_KIND),
                what=f"reading PyTorchJob {namespace}/{name}",
            )
        except Exception as err:  # noqa: BLE001
            if gone(err):
                raise PtrError(
                    f"PyTorchJob {namespace}/{name} is gone (deleted while the step waited)"
                ) from None
            raise
        for failure in failures.record():
            report(f"PyTorchJob {namespace}/{name}: replica failed: {failure.describe()}")
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
            why = f"PyTorchJob {namespace}/{name} failed: {reason or 'Failed'}: {message}".rstrip(": ")
            recorded = failures.summary()
            raise PtrError(f"{why}\n{recorded}" if recorded else why)
        if time.monotonic() > deadline:
            recorded = failures.summary()
            raise PtrError(
                f"PyTorchJob {namespace}/{name} did not finish within {timeout:.0f}s (last state {state})"
                + (f"\n{recorded}" if recorded else "")
            )
        time.sleep(poll)


class Terminated(SystemExit):
    """The step was asked to stop (SIGTERM: the run was terminated, or its pod evicted)."""


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into an exception for the duration, so cleanup code runs (main thread only)."""

    def handler(signum, frame):
        raise Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    job: models.KubeflowOrgV1PyTorchJob, client, *, timeout: float, poll: float = 10.0, report=None
) -> str:
    """Submit and wait. A job that fails, outlives ``timeout`` or whose step is terminated is
    deleted, so nothing keeps holding GPUs; a successful one is left to ``ttlSecondsAfterFinished``."""
    name, namespace = job.metadata.name, job.metadata.namespace
    with _sigterm_raises():
        submit(job, client)
        try:
            return wait(client, name, namespace, timeout=timeout, poll=poll, report=report)
        except BaseException:
            print(f"deleting PyTorchJob {namespace}/{name}", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                delete(client, name, namespace)
            raise
