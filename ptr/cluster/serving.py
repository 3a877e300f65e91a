"""The deploy and promote steps on a cluster: the candidate's InferenceService, and production
following the champion from the version's own folder.

Manifests come from :func:`ptr.serve.manifests.inference_service` (with the run's correlation labels,
the workload account, scheduling and probes added here); :mod:`ptr.cluster.inference` applies them and
waits until the new model serves.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ptr import storage
from ptr.cluster import RUN_ID_LABEL, inference
from ptr.cluster.names import label_value, resource_name
from ptr.cluster.settings import Cluster
from ptr.errors import PtrError
from ptr.serve.manifests import PORT, inference_service


def under_mount(cluster: Cluster, path: str) -> str:
    """``path`` relative to the shared volume's mount (what a ``pvc://`` storage URI names)."""
    mount = cluster.storage.mount_path.rstrip("/") + "/"
    if not path.startswith(mount):
        raise PtrError(f"model {path} is not on the shared volume mounted at {mount}")
    return path[len(mount) :]


STARTUP_PERIOD_S = 10
PROGRESS_MARGIN_S = 120  # Knative's progress deadline must outlast the startup probe's longest wait
KNATIVE_PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"


def _container(predictor: dict) -> dict:
    """The serving container of a predictor: the custom one, or the runtime's model spec."""
    return predictor["containers"][0] if "containers" in predictor else predictor["model"]


def inference_service_for(
    cluster: Cluster, name: str, model: str, *, model_name: str, run_id: str, registration: dict
) -> dict:
    """The InferenceService serving ``model`` (an ``s3://`` prefix or a path on the shared volume)
    as ``model_name``, labelled with the run id and the registered version it serves.

    It runs as the workload account (no API rights; it lists the S3 secret, from which KServe's storage
    initializer takes its credentials). The Hugging Face runtime keeps KServe's own image (ours has no
    ``huggingfaceserver``). GPU predictors get the config's node selector and tolerations. A startup
    probe gives a multi-GB model ``ready_timeout_s`` to load, and Knative's progress deadline is set
    beyond it (its default, 10 minutes, would fail the revision first)."""
    resources = cluster.serve_resources
    storage_uri = (
        model if model.startswith("s3://") else f"pvc://{cluster.storage.pvc}/{under_mount(cluster, model)}"
    )
    labels = {
        RUN_ID_LABEL: label_value(run_id),
        "ptr.model-name": label_value(registration["name"]),
        "ptr.model-version": label_value(str(registration["version"])),
    }
    annotations = {inference.MODE_ANNOTATION: cluster.serving_mode}
    if cluster.serving_mode == "Serverless":
        annotations[KNATIVE_PROGRESS_DEADLINE] = f"{cluster.ready_timeout_s + PROGRESS_MARGIN_S}s"
    isvc = inference_service(
        name,
        storage_uri,
        runtime=cluster.serving_runtime,
        model_name=model_name,
        image=(cluster.gpu_image if resources.gpus else cluster.image)
        if cluster.serving_runtime == "ptr"
        else None,
        resources={"cpu": resources.cpu, "memory": resources.memory},
        gpus=resources.gpus,
        namespace=cluster.namespace,
        service_account=cluster.workload_service_account,
        labels=labels,
        annotations=annotations,
    )
    predictor = isvc["spec"]["predictor"]
    if resources.gpus:
        if cluster.node_selector:
            predictor["nodeSelector"] = dict(cluster.node_selector)
        if cluster.tolerations:
            predictor["tolerations"] = [t.model_dump(exclude_none=True) for t in cluster.tolerations]
    _container(predictor)["startupProbe"] = {
        "httpGet": {"path": "/v2/health/ready", "port": PORT},
        "periodSeconds": STARTUP_PERIOD_S,
        "timeoutSeconds": 5,
        "failureThreshold": max(1, -(-cluster.ready_timeout_s // STARTUP_PERIOD_S)),
    }
    return isvc


def version_folder(cluster: Cluster, name: str, version: str) -> str:
    """Where a registered version is kept for serving: ``models/<name>/<version>`` on the volume (or
    under the S3 prefix), outside the per-run folders that retention deletes."""
    root = cluster.storage.mount_path if cluster.storage.pvc else cluster.storage.s3_uri
    return f"{root.rstrip('/')}/models/{name}/{version}"


def publish_version(cluster: Cluster, model: str, *, name: str, version: str) -> str:
    """Copy a run's exported model to its version's folder (all or nothing); returns that folder."""
    target = version_folder(cluster, name, str(version))
    if cluster.storage.pvc:
        final = Path(target)
        staging = final.with_name(f".{final.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model, staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return target
    with tempfile.TemporaryDirectory() as tmp:  # S3 to S3 through this pod's disk
        local = storage.fetch(model, Path(tmp) / "model")
        storage.publish(local, target)
    return target


def candidate_name(model_name: str, run_id: str) -> str:
    return resource_name(f"{model_name}-candidate", run_id)


def deploy_candidate(
    cluster: Cluster, model: str, *, model_name: str, run_id: str, registration: dict
) -> dict:
    """Create or update the candidate's InferenceService and wait until it is Ready. Returns the
    endpoint: ``{model_name, model_type, url, name, namespace, action}`` (``model_type`` is the
    protocol evaluation speaks: ``kserve``, or ``openai`` for KServe's vLLM runtime)."""
    isvc = inference_service_for(
        cluster,
        candidate_name(model_name, run_id),
        model,
        model_name=model_name,
        run_id=run_id,
        registration=registration,
    )
    result = inference.deploy(inference.custom_api(), isvc, timeout=cluster.ready_timeout_s)
    endpoint = {"model_name": model_name, "model_type": "kserve", **result}
    if cluster.serving_runtime == "huggingface":  # KServe's vLLM runtime speaks the OpenAI protocol
        endpoint.update(model_type="openai", url=f"{result['url'].rstrip('/')}/openai/v1")
    return endpoint


def remove_candidate(cluster: Cluster, *, model_name: str, run_id: str) -> bool:
    """Delete the run's candidate InferenceService (its GPU goes back); False when it is not there."""
    return inference.remove(inference.custom_api(), candidate_name(model_name, run_id), cluster.namespace)


def follow_champion(cluster: Cluster, champion: dict, *, model_name: str, run_id: str) -> dict:
    """Roll the production InferenceService out to ``champion["model"]`` (the version's own folder)
    and wait until the new model serves there."""
    isvc = inference_service_for(
        cluster,
        cluster.production_service,
        champion["model"],
        model_name=model_name,
        run_id=run_id,
        registration=champion,
    )
    return inference.deploy(inference.custom_api(), isvc, timeout=cluster.ready_timeout_s)
