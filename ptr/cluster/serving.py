"""The deploy and promote steps on a cluster: the candidate's InferenceService, and production
following the champion.

Manifests come from :func:`ptr.serve.manifests.inference_service` (with the run's correlation labels);
:mod:`ptr.cluster.inference` applies them and waits until KServe reports them Ready.
"""

from __future__ import annotations

from ptr.cluster import RUN_ID_LABEL, inference
from ptr.cluster.names import label_value, resource_name
from ptr.cluster.settings import Cluster
from ptr.errors import PtrError
from ptr.serve.manifests import inference_service


def under_mount(cluster: Cluster, path: str) -> str:
    """``path`` relative to the shared volume's mount (what a ``pvc://`` storage URI names)."""
    mount = cluster.storage.mount_path.rstrip("/") + "/"
    if not path.startswith(mount):
        raise PtrError(f"model {path} is not on the shared volume mounted at {mount}")
    return path[len(mount) :]


def inference_service_for(
    cluster: Cluster, name: str, model: str, *, model_name: str, run_id: str, registration: dict
) -> dict:
    """The InferenceService serving ``model`` (an ``s3://`` prefix or a path on the shared volume)
    as ``model_name``, labelled with the run id and the registered version it serves."""
    resources = cluster.serve_resources
    storage_uri = (
        model if model.startswith("s3://") else f"pvc://{cluster.storage.pvc}/{under_mount(cluster, model)}"
    )
    labels = {
        RUN_ID_LABEL: label_value(run_id),
        "ptr.model-name": label_value(registration["name"]),
        "ptr.model-version": label_value(str(registration["version"])),
    }
    return inference_service(
        name,
        storage_uri,
        runtime=cluster.serving_runtime,
        model_name=model_name,
        image=cluster.gpu_image if resources.gpus else cluster.image,
        resources={"cpu": resources.cpu, "memory": resources.memory},
        gpus=resources.gpus,
        namespace=cluster.namespace,
        service_account=cluster.service_account,
        labels=labels,
    )


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


def follow_champion(cluster: Cluster, champion: dict, *, model_name: str, run_id: str) -> dict:
    """Point the production InferenceService at the champion's model (a new revision rolls out)."""
    isvc = inference_service_for(
        cluster,
        cluster.production_service,
        champion["model"],
        model_name=model_name,
        run_id=run_id,
        registration=champion,
    )
    return inference.deploy(inference.custom_api(), isvc, timeout=cluster.ready_timeout_s)
