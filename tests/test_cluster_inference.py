"""InferenceService create/replace and the wait for the rollout. No Kubernetes API server can run on this
machine: the recorded fake API of tests/support/k8s.py stands in for CustomObjectsApi and AppsV1Api
and answers with the statuses KServe writes (kserve/kserve pkg/apis/serving/v1beta1/
inference_service_status.go, v0.15: PropagateStatus copies the Knative Service's observedGeneration and
revisions, PropagateRawStatus the Deployment's observedGeneration and Available condition,
PropagateModelStatus sets modelStatus.transitionStatus BlockedByFailedLoad with lastFailureInfo)."""

from __future__ import annotations

import copy

import pytest

from ptr.cluster import inference
from ptr.errors import PtrError
from tests.support.k8s import FakeKube, api_error

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "ptr-candidate", "namespace": "ptr", "labels": {"ptr.run_id": "r1"}},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "ptr"}, "storageUri": "s3://b/m"}}},
}
KEY = ("serving.kserve.io", "inferenceservices", "ptr", "ptr-candidate")
URL = "http://ptr-candidate.ptr.svc.cluster.local"


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr("ptr.cluster.api.time.sleep", lambda s: None)
    monkeypatch.setattr(inference.time, "sleep", lambda s: None)


def _serverless(created, ready, *, is_ready=True, generation=1, url=URL, **extra):
    """An InferenceService status as KServe writes it in serverless mode; observedGeneration is the
    Knative Service's, unrelated to the InferenceService's generation."""
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}],
        "components": {"predictor": {"latestCreatedRevision": created, "latestReadyRevision": ready}},
        "address": {"url": url},
        **extra,
    }


OLD_SPEC = {"predictor": {"model": {"modelFormat": {"name": "ptr"}, "storageUri": "s3://b/old"}}}


def _existing(fake, status, spec=OLD_SPEC):
    obj = copy.deepcopy(ISVC)
    obj["metadata"].update(generation=4, resourceVersion="40")
    obj["spec"] = copy.deepcopy(spec)
    fake.add(*KEY[:2], obj)
    fake.custom[KEY]["status"] = status


def test_creates_when_absent_and_waits_until_the_revision_is_ready():
    fake = FakeKube()
    original = fake.create_namespaced_custom_object

    def create(*args, **kw):
        obj = original(*args, **kw)
        fake.statuses[KEY] = [
            _serverless(None, None, is_ready=False),
            _serverless("ptr-candidate-predictor-00001", None, is_ready=False),
            _serverless("ptr-candidate-predictor-00001", "ptr-candidate-predictor-00001"),
        ]
        return obj

    fake.create_namespaced_custom_object = create
    lines = []
    result = inference.deploy(fake, ISVC, timeout=30, poll=0, report=lines.append)
    assert result == {"name": "ptr-candidate", "namespace": "ptr", "url": URL, "action": "created"}
    assert lines[-1].endswith("revision ptr-candidate-predictor-00001 ready")


def test_an_update_waits_for_the_new_revision_not_the_old_ready_one():
    """Item 15: after an update the old revision stays Ready and KServe's observedGeneration is the
    Knative Service's, so "Ready at observedGeneration >= generation" can be the old pod. Only a new
    revision that is latest-created and latest-ready counts."""
    fake = FakeKube()
    old = _serverless("p-00003", "p-00003", generation=7)
    _existing(fake, old)
    fake.statuses[KEY] = [
        old,  # read before the update
        old,  # KServe has not reconciled yet: everything still says Ready, generation 7 >= anything
        _serverless("p-00004", "p-00003", generation=8),  # new revision created, old one serving
        _serverless("p-00004", "p-00003", generation=8),
        _serverless("p-00004", "p-00004", generation=8, url="http://new"),
    ]
    lines = []
    result = inference.deploy(fake, ISVC, timeout=30, poll=0, report=lines.append)
    assert result["action"] == "updated" and result["url"] == "http://new"
    assert any("newer than p-00003" in line for line in lines)
    assert any("p-00004 not ready" in line for line in lines)


def test_an_update_replaces_the_spec_with_the_resource_version():
    """Item 16: a merge patch keeps keys the new spec no longer has (a runtime or resource switch);
    the update is a PUT carrying the resourceVersion read (a conflict re-reads)."""
    fake = FakeKube()
    stale_spec = {
        "predictor": {"containers": [{"name": "kserve-container", "image": "old"}], "minReplicas": 1}
    }
    _existing(fake, _serverless("p-00001", "p-00001"), spec=stale_spec)
    fake.errors["replace_namespaced_custom_object"] = [api_error(409)]
    rollout = inference.apply(fake, ISVC)
    assert rollout == inference.Rollout("updated", revision="p-00001")
    assert fake.custom[KEY]["spec"] == ISVC["spec"]  # containers gone: replaced, not merged
    assert [c[0] for c in fake.calls].count("replace") == 2 and "patch" not in [c[0] for c in fake.calls]


def test_an_update_that_changes_nothing_does_not_wait_for_a_new_revision():
    fake = FakeKube()
    _existing(fake, _serverless("p-00002", "p-00002"), spec=ISVC["spec"])
    assert inference.deploy(fake, ISVC, timeout=5, poll=0)["action"] == "unchanged"


def test_a_model_that_cannot_load_fails_at_once():
    """Item 15: KServe marks BlockedByFailedLoad (with the container's exit) for the new revision; the
    wait stops there instead of running to its timeout."""
    fake = FakeKube()
    _existing(fake, _serverless("p-00001", "p-00001"))
    failed = _serverless(
        "p-00002",
        "p-00001",
        modelStatus={
            "transitionStatus": "BlockedByFailedLoad",
            "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "CUDA out of memory", "exitCode": 1},
        },
    )
    fake.statuses[KEY] = [_serverless("p-00001", "p-00001"), failed]
    with pytest.raises(
        PtrError, match="cannot serve the new model: BlockedByFailedLoad: ModelLoadFailed: CUDA out"
    ):
        inference.deploy(fake, ISVC, timeout=3600, poll=0)


def test_a_failed_revision_condition_fails_at_once():
    fake = FakeKube()
    revision_failed = _serverless("p-00001", None, is_ready=False)
    revision_failed["conditions"].append(
        {
            "type": "PredictorConfigurationReady",
            "status": "False",
            "reason": "RevisionFailed",
            "message": "exit 137",
        }
    )
    original = fake.create_namespaced_custom_object

    def create(*args, **kw):
        obj = original(*args, **kw)
        fake.statuses[KEY] = [revision_failed]
        return obj

    fake.create_namespaced_custom_object = create
    with pytest.raises(PtrError, match="PredictorConfigurationReady: RevisionFailed: exit 137"):
        inference.deploy(fake, ISVC, timeout=3600, poll=0)


def _deployment(generation, observed, *, replicas=1, updated=1, available=1, total=1):
    return {
        "metadata": {"name": "ptr-candidate-predictor", "namespace": "ptr", "generation": generation},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {}, "spec": {"containers": [{"name": "c"}]}},
        },
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


def test_raw_mode_waits_until_the_deployment_rolled_out():
    """Item 15, raw mode: KServe's Ready follows the Deployment's Available condition, True while the
    old pod serves; the rollout is done when KServe updated the Deployment and every replica is
    updated and available with no old one left (kubectl rollout status)."""
    raw = copy.deepcopy(ISVC)
    raw["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    fake = FakeKube()
    ready = {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True"}],
        "address": {"url": URL},
    }
    _existing(fake, ready)
    fake.deployments[("ptr", "ptr-candidate-predictor")] = [
        _deployment(3, 3),  # read before the update
        _deployment(3, 3),  # KServe has not touched it yet (old pod Ready)
        _deployment(4, 4, updated=1, available=1, total=2),  # new pod up, old one still there
        _deployment(4, 4, updated=1, available=0, total=1),
        _deployment(4, 4),
    ]
    lines = []
    result = inference.deploy(fake, raw, timeout=30, poll=0, apps=fake, report=lines.append)
    assert result["action"] == "updated"
    assert [line.split(": ", 1)[1] for line in lines] == [
        "waiting for KServe to update the predictor Deployment",
        "1 old replicas still running",
        "0 of 1 updated replicas available",
        "1 replicas updated and available",
    ]


def test_timeout_names_what_it_waited_for():
    fake = FakeKube()
    _existing(fake, _serverless("p-00001", "p-00001"))
    fake.statuses[KEY] = [_serverless("p-00001", "p-00001"), _serverless("p-00002", "p-00001")]
    with pytest.raises(PtrError, match="not rolled out within 0s: revision p-00002 not ready"):
        inference.deploy(fake, ISVC, timeout=0, poll=0)


def test_other_api_errors_are_reported():
    fake = FakeKube()
    fake.errors["get_namespaced_custom_object"] = [api_error(403)]
    with pytest.raises(PtrError, match="403 Forbidden"):
        inference.apply(fake, ISVC)


def test_remove_deletes_and_tolerates_absence():
    fake = FakeKube()
    _existing(fake, {})
    assert inference.remove(fake, "ptr-candidate", "ptr") is True
    assert inference.remove(fake, "ptr-candidate", "ptr") is False
