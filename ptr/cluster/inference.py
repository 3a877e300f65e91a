"""InferenceServices on a cluster: create or replace, then wait until the NEW model serves.

Readiness is the rollout itself, not ``Ready`` alone: KServe copies ``status.observedGeneration`` from
the child Knative Service (serverless) or Deployment (raw mode), never from the InferenceService, and
keeps ``Ready`` True while the old pods still answer. So after an update this module waits for

* serverless: a revision newer than the one before the update that is both the latest created and
  the latest ready one (``status.components.predictor``);
* raw mode (``serving.kserve.io/deploymentMode: RawDeployment``): the predictor Deployment updated by
  KServe (its generation moved) with every replica updated and available and no old one left;

and fails fast when KServe reports the new model cannot load (``modelStatus.transitionStatus``
BlockedByFailedLoad or InvalidSpec, or a RevisionFailed condition) instead of waiting out the timeout.

Updates replace the whole object (PUT with the current ``resourceVersion``): a merge patch cannot
remove a key, so switching runtime or resources would keep stale fields. The manifests themselves come
from :func:`ptr.serve.manifests.inference_service`.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ptr.cluster.api import gone, load, retrying, status
from ptr.errors import PtrError

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
RAW_MODES = {"RawDeployment", "Standard"}  # KServe's name for it, before and after 0.15
FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}


def custom_api(context: str | None = None):
    """CustomObjectsApi from the in-cluster service account (or ~/.kube/config outside a cluster)."""
    from kubernetes import client  # heavy: only on a cluster path

    return client.CustomObjectsApi(load(context))


def apps_api(context: str | None = None):
    from kubernetes import client  # heavy: only on a cluster path

    return client.AppsV1Api(load(context))


def raw_mode(isvc: dict) -> bool:
    return ((isvc.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION) in RAW_MODES


def predictor_deployment(name: str) -> str:
    """The Deployment KServe's raw mode creates for a predictor (pkg/constants: PredictorServiceName)."""
    return f"{name}-predictor"


@dataclass(frozen=True)
class Rollout:
    """What must change for an apply to count as rolled out."""

    action: str  # created, updated, unchanged
    revision: str | None = None  # serverless: latest created revision before the update
    deployment_generation: int | None = None  # raw mode: the predictor Deployment's before the update


def _get(api, name: str, namespace: str) -> dict:
    return retrying(
        lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        what=f"reading InferenceService {namespace}/{name}",
    )


def _revision(obj: dict) -> str | None:
    return (((obj.get("status") or {}).get("components") or {}).get("predictor") or {}).get(
        "latestCreatedRevision"
    )


def _deployment_generation(apps, name: str, namespace: str) -> int | None:
    if apps is None:
        return None
    try:
        deployment = retrying(
            lambda: apps.read_namespaced_deployment(predictor_deployment(name), namespace),
            what=f"reading Deployment {namespace}/{predictor_deployment(name)}",
        )
    except Exception as err:  # noqa: BLE001
        if gone(err):
            return None
        raise
    return deployment.metadata.generation


def apply(api, isvc: dict, *, apps=None, attempts: int = 5) -> Rollout:
    """Create the InferenceService, or replace it (PUT with the current resourceVersion; a conflict
    re-reads and tries again). Returns what the rollout must show."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    for _ in range(attempts):
        try:
            current = _get(api, name, namespace)
        except Exception as err:  # noqa: BLE001
            if not gone(err):
                raise PtrError(f"cannot read InferenceService {namespace}/{name}: {_why(err)}") from None
            retrying(
                lambda: api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, isvc),
                what=f"creating InferenceService {namespace}/{name}",
            )
            return Rollout("created")
        body = copy.deepcopy(isvc)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        before = Rollout(
            "updated",
            revision=_revision(current),
            deployment_generation=_deployment_generation(apps, name, namespace) if raw_mode(isvc) else None,
        )
        try:
            replaced = api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
        except Exception as err:  # noqa: BLE001
            if status(err) == 409:  # changed since we read it: read again
                continue
            raise PtrError(f"cannot update InferenceService {namespace}/{name}: {_why(err)}") from None
        generation = (replaced.get("metadata") or {}).get("generation")
        if generation is not None and generation == current["metadata"].get("generation"):
            return Rollout("unchanged")  # same spec: nothing new will roll out
        return before
    raise PtrError(f"InferenceService {namespace}/{name} kept changing under {attempts} updates")


def _why(err: BaseException) -> str:
    return f"{getattr(err, 'status', '')} {getattr(err, 'reason', '') or err}".strip()


def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _failure(obj: dict) -> str | None:
    """KServe's word that the model cannot come up (pkg/apis/serving/v1beta1/inference_service_status.go:
    PropagateModelStatus sets BlockedByFailedLoad with lastFailureInfo from the failing container)."""
    model = (obj.get("status") or {}).get("modelStatus") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model.get("lastFailureInfo") or {}
        parts = [model["transitionStatus"], info.get("reason"), info.get("message")]
        if info.get("exitCode"):
            parts.append(f"exit code {info['exitCode']}")
        return ": ".join(p for p in parts if p)
    for cond in _conditions(obj).values():
        if cond.get("status") == "False" and cond.get("reason") == "RevisionFailed":
            return f"{cond['type']}: RevisionFailed: {cond.get('message') or ''}".rstrip(": ")
    return None


def _waiting_for(obj: dict) -> str:
    failing = [c for c in _conditions(obj).values() if c.get("status") != "True"]
    why = "; ".join(f"{c['type']}: {c.get('reason') or ''} {c.get('message') or ''}".strip() for c in failing)
    return why or "waiting for conditions"


@dataclass(frozen=True)
class State:
    done: bool  # the new model serves
    why: str  # what it waits for (or what is ready)
    current: bool = True  # the status already describes the new model (failures then count)


def serverless_state(obj: dict, rollout: Rollout) -> State:
    """Rolled out when the latest created revision is newer than the one before the update, is the
    latest ready one, and the service is Ready."""
    predictor = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if rollout.action == "updated" and (not created or created == rollout.revision):
        return State(False, f"waiting for a revision newer than {rollout.revision}", current=False)
    if not created or created != ready:
        return State(False, f"revision {created or '(none yet)'} not ready (ready: {ready or 'none'})")
    if _conditions(obj).get("Ready", {}).get("status") != "True":
        return State(False, _waiting_for(obj))
    return State(True, f"revision {created} ready")


def raw_state(obj: dict, deployment, rollout: Rollout) -> State:
    """Rolled out as ``kubectl rollout status`` reads the predictor's Deployment, once KServe has
    updated it."""
    if deployment is None:
        return State(False, "waiting for the predictor Deployment", current=False)
    meta, spec, st = deployment.metadata, deployment.spec, deployment.status
    if rollout.action == "updated" and rollout.deployment_generation is not None:
        if (meta.generation or 0) <= rollout.deployment_generation:
            return State(False, "waiting for KServe to update the predictor Deployment", current=False)
    if (st.observed_generation or 0) < (meta.generation or 0):
        return State(False, "Deployment update not observed yet", current=False)
    wanted = spec.replicas if spec.replicas is not None else 1
    updated, available, total = st.updated_replicas or 0, st.available_replicas or 0, st.replicas or 0
    if updated < wanted:
        return State(False, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return State(False, f"{total - updated} old replicas still running")
    if available < updated:
        return State(False, f"{available} of {updated} updated replicas available")
    if _conditions(obj).get("Ready", {}).get("status") != "True":
        return State(False, _waiting_for(obj))
    return State(True, f"{available} replicas updated and available")


def wait_ready(
    api,
    name: str,
    namespace: str,
    *,
    timeout: float,
    rollout: Rollout = Rollout("created"),
    raw: bool = False,
    apps=None,
    poll: float = 5.0,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Wait until the rollout is complete; return the InferenceService's status. Fails at once on a
    model KServe reports cannot load, and on timeout with what it was waiting for."""
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    deadline = time.monotonic() + timeout
    last = None
    while True:
        obj = _get(api, name, namespace)
        if raw:
            deployment = None
            try:
                deployment = retrying(
                    lambda: apps.read_namespaced_deployment(predictor_deployment(name), namespace),
                    what=f"reading Deployment {namespace}/{predictor_deployment(name)}",
                )
            except Exception as err:  # noqa: BLE001
                if not gone(err):
                    raise
            state = raw_state(obj, deployment, rollout)
        else:
            state = serverless_state(obj, rollout)
        failure = _failure(obj) if state.current and not state.done else None
        if failure:
            raise PtrError(f"InferenceService {namespace}/{name} cannot serve the new model: {failure}")
        if state.why != last:
            last = state.why
            report(f"InferenceService {namespace}/{name}: {state.why}")
        if state.done:
            return obj.get("status") or {}
        if time.monotonic() > deadline:
            raise PtrError(
                f"InferenceService {namespace}/{name} not rolled out within {timeout:.0f}s: {state.why}"
            )
        time.sleep(poll)


def deploy(api, isvc: dict, *, timeout: float, apps=None, poll: float = 5.0, report=None) -> dict:
    """Create or replace, then wait for the rollout. Returns ``{name, namespace, url, action}``;
    ``url`` is the in-cluster address (``status.address.url``), which pipeline steps can reach."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    raw = raw_mode(isvc)
    if raw and apps is None:
        apps = apps_api()
    rollout = apply(api, isvc, apps=apps)
    state = wait_ready(
        api, name, namespace, timeout=timeout, rollout=rollout, raw=raw, apps=apps, poll=poll, report=report
    )
    url = (state.get("address") or {}).get("url") or state.get("url")
    if not url:
        raise PtrError(f"InferenceService {namespace}/{name} is ready but reports no URL")
    return {"name": name, "namespace": namespace, "url": url, "action": rollout.action}


def remove(api, name: str, namespace: str) -> bool:
    """Delete an InferenceService (its pods and GPUs go with it); ``False`` when it was not there."""
    try:
        retrying(
            lambda: api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
            what=f"deleting InferenceService {namespace}/{name}",
        )
    except Exception as err:  # noqa: BLE001
        if gone(err):
            return False
        raise
    return True
