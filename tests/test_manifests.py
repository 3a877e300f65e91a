"""manifests/: the kustomizations render with the real kustomize, every object validates (core kinds
with kubernetes-validate, custom resources against ../shared/crds), RBAC is exactly what the pipeline
uses, no secret value is committed, and the rendered examples match what the code generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.k8s import REPO, kustomize, validate_core, validate_custom

KUSTOMIZATIONS = ["manifests/base", "manifests/overlays/cpu", "manifests/overlays/gpu"]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
CUSTOM_KINDS = {"PyTorchJob", "InferenceService"}


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict]:
    return kustomize(REPO / request.param)


def _by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_every_object_validates(rendered):
    kinds = set()
    for obj in rendered:
        kinds.add(obj["kind"])
        if obj["kind"] == "ServingRuntime":
            # No ServingRuntime CRD in ../shared/crds: validate its containers as a Pod's would be.
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {"containers": obj["spec"]["containers"]},
            }
            validate_core(pod)
            assert obj["apiVersion"] == "serving.kserve.io/v1alpha1"
            assert {"name": "ptr", "version": "1", "autoSelect": True} in obj["spec"]["supportedModelFormats"]
        else:
            validate_core(obj)
        assert obj["metadata"].get("namespace", "ptr") == "ptr"
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "Secret"} <= kinds
    assert {"PersistentVolumeClaim", "ServingRuntime", "ConfigMap"} <= kinds


def test_validation_catches_a_broken_object(rendered):
    deployment = _by_kind(rendered, "Deployment")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(Exception, match="imagePullPolice"):
        validate_core(broken)


def test_rbac_allows_exactly_what_the_pipeline_uses(rendered):
    (role,) = _by_kind(rendered, "Role")
    verbs = ["create", "get", "list", "watch", "patch", "delete"]
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": verbs},
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": verbs},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["ptr-s3-credentials", "ptr-mlflow-credentials"],
            "verbs": ["get"],
        },
    ]
    (binding,) = _by_kind(rendered, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ptr-pipeline", "namespace": "ptr"}]
    assert not _by_kind(rendered, "ClusterRole") and not _by_kind(rendered, "ClusterRoleBinding")


def test_secrets_are_templates_without_values(rendered):
    secrets = _by_kind(rendered, "Secret")
    assert secrets
    for secret in secrets:
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert values and all(v == "" for v in values.values()), secret["metadata"]["name"]


def test_mlflow_runs_with_sqlite_on_a_volume_and_artifacts_on_s3(rendered):
    (deployment,) = _by_kind(rendered, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args and "--serve-artifacts" in args
    assert {"name": "backend", "mountPath": "/mlflow"} in container["volumeMounts"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (service,) = _by_kind(rendered, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_gpu_overlay_serves_with_vllm_on_a_gpu():
    (runtime,) = _by_kind(kustomize(REPO / "manifests/overlays/gpu"), "ServingRuntime")
    container = runtime["spec"]["containers"][0]
    assert container["image"].startswith("ptr-gpu:") and "--backend=vllm" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"] == ["ptr"] and container["args"][0] == "serve"  # the patch kept the base
    assert "--backend=transformers" not in container["args"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path):
    (obj,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert obj["kind"] in CUSTOM_KINDS
    validate_custom(obj)
    assert obj["metadata"]["labels"]["ptr.run_id"]


def test_no_secret_value_in_any_committed_manifest_or_pipeline():
    files = [
        *REPO.glob("manifests/**/*.yaml"),
        *REPO.glob("pipelines/compiled/*.yaml"),
        *REPO.glob("pipelines/configs/*.yaml"),
    ]
    assert files
    pattern = re.compile(
        r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|password|token)\s*[:=]\s*['\"]?([^'\"\s{}\[\]]+)", re.I
    )
    for path in files:
        for match in pattern.finditer(path.read_text()):
            # A key name mapped to itself (secret key → env var) names a secret, it holds no value; a
            # comment may show a placeholder ("...", "$VAR").
            value = match[2]
            assert value in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "...") or value.startswith("$"), (
                f"{path}: {match[0]}"
            )


def test_examples_and_compiled_pipeline_do_not_drift():
    from pipelines import examples

    rendered = examples.render()
    assert examples.EXAMPLES / "pytorchjob-2node.yaml" in rendered
    for path, content in rendered.items():
        assert path.exists(), f"{path} is missing: run `make manifests`"
        assert examples.same(path.read_text(), content), (
            f"{path.relative_to(REPO)} drifted from the code: run `make manifests`"
        )
