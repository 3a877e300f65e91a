"""InferenceService deploy/update and the wait for readiness. No Kubernetes API server can run on this
machine: a recorder stands in for CustomObjectsApi and answers as the API server and KServe would."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from ptr.cluster import inference
from ptr.errors import PtrError


class FakeApi:
    def __init__(self, existing=None, statuses=()):
        self.obj = existing
        self.statuses = list(statuses)
        self.calls = []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", name))
        if self.obj is None:
            raise ApiException(status=404, reason="Not Found")
        if self.statuses:
            self.obj["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return self.obj

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
        self.calls.append(("create", body["metadata"]["name"]))
        self.obj = {**body, "metadata": {**body["metadata"], "generation": 1}}

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.calls.append(("patch", name))
        generation = self.obj["metadata"].get("generation", 1) + 1
        self.obj = {**self.obj, **body, "metadata": {**body["metadata"], "generation": generation}}


ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "ptr-candidate", "namespace": "ptr", "labels": {"ptr.run_id": "r1"}},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "ptr"}, "storageUri": "s3://b/m"}}},
}


def _ready(generation, url="http://ptr-candidate.ptr.svc.cluster.local"):
    return {
        "observedGeneration": generation,
        "conditions": [{"type": "Ready", "status": "True"}],
        "address": {"url": url},
    }


def test_creates_when_absent_and_waits_until_ready():
    api = FakeApi(
        statuses=[
            {"conditions": [{"type": "PredictorReady", "status": "False", "reason": "Pulling"}]},
            _ready(1),
        ]
    )
    result = inference.deploy(api, ISVC, timeout=30, poll=0)
    assert result == {
        "name": "ptr-candidate",
        "namespace": "ptr",
        "url": "http://ptr-candidate.ptr.svc.cluster.local",
        "action": "created",
    }
    assert ("create", "ptr-candidate") in api.calls


def test_updates_when_present_and_ignores_the_old_revisions_readiness():
    api = FakeApi(existing={**ISVC, "metadata": {**ISVC["metadata"], "generation": 4}, "status": _ready(4)})
    # The old revision (generation 4) still reports Ready; the update (generation 5) comes up later.
    api.statuses = [_ready(4), _ready(4), _ready(5, "http://new")]
    result = inference.deploy(api, ISVC, timeout=30, poll=0)
    assert result["action"] == "updated" and result["url"] == "http://new"
    assert ("patch", "ptr-candidate") in api.calls and not [c for c in api.calls if c[0] == "create"]


def test_timeout_names_the_failing_condition():
    failing = {
        "conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed", "message": "OOMKilled"}
        ]
    }
    api = FakeApi(statuses=[failing])
    with pytest.raises(PtrError, match="not ready within 0s: PredictorReady: RevisionFailed OOMKilled"):
        inference.deploy(api, ISVC, timeout=0, poll=0)


def test_other_api_errors_are_reported():
    class Forbidden(FakeApi):
        def get_namespaced_custom_object(self, *a):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(PtrError, match="403 Forbidden"):
        inference.apply(Forbidden(), ISVC)
