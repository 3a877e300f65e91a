"""InferenceServices on a cluster: create or update, then wait until KServe reports them Ready.

The manifests themselves come from :func:`ptr.serve.manifests.inference_service`; this module only
talks to the API server (create, get, patch — what the pipeline's Role allows).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ptr.errors import PtrError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def custom_api():
    """CustomObjectsApi from the in-cluster service account (or ~/.kube/config outside a cluster)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _not_found(err) -> bool:
    return getattr(err, "status", None) == 404


def apply(api, isvc: dict) -> str:
    """Create the InferenceService, or merge-patch it when it exists (a new revision rolls out).
    Returns ``created`` or ``updated``."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if not _not_found(err):
            raise PtrError(
                f"cannot read InferenceService {namespace}/{name}: {err.status} {err.reason}"
            ) from None
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, isvc)
        return "created"
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, isvc)
    return "updated"


def _ready(status: dict) -> tuple[bool, str]:
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    if ready.get("status") == "True":
        return True, "Ready"
    failing = [c for c in conditions.values() if c.get("status") == "False"]
    why = "; ".join(f"{c['type']}: {c.get('reason') or ''} {c.get('message') or ''}".strip() for c in failing)
    return False, why or "waiting for conditions"


def wait_ready(
    api,
    name: str,
    namespace: str,
    *,
    timeout: float,
    poll: float = 5.0,
    generation: int | None = None,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Wait until Ready (for ``generation`` when given, so an update is not mistaken for the old
    revision); return the object's status. On timeout raise with the failing conditions."""
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout
    last = None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status") or {}
        current = generation is None or status.get("observedGeneration", 0) >= generation
        ready, why = _ready(status)
        if why != last:
            last = why
            report(f"InferenceService {namespace}/{name}: {why}")
        if ready and current:
            return status
        if time.monotonic() > deadline:
            raise PtrError(f"InferenceService {namespace}/{name} not ready within {timeout:.0f}s: {why}")
        time.sleep(poll)


def deploy(api, isvc: dict, *, timeout: float, poll: float = 5.0) -> dict:
    """Create or update, then wait for readiness. Returns ``{name, namespace, url, action}``; ``url`` is
    the in-cluster address (``status.address.url``), which pipeline steps can reach."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    action = apply(api, isvc)
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    generation = (obj.get("metadata") or {}).get("generation")
    status = wait_ready(api, name, namespace, timeout=timeout, poll=poll, generation=generation)
    url = (status.get("address") or {}).get("url") or status.get("url")
    if not url:
        raise PtrError(f"InferenceService {namespace}/{name} is Ready but reports no URL")
    return {"name": name, "namespace": namespace, "url": url, "action": action}
