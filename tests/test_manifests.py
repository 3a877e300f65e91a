"""manifests/: every overlay renders with the real kustomize (``kubectl kustomize``) on a fresh clone and
validates (core kinds with kubernetes-validate, custom resources against ../shared/crds); the RBAC gives
the step account what KFP and the steps need and the workload account nothing; images are
registry-qualified; no Secret is shipped; the shared volume is usable by uid 1000; the rendered
examples match what the code generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ptr.cluster import rbac
from tests.support.k8s import REPO, kustomize, validate_core, validate_custom

OVERLAYS = {"cpu": "ptr", "gpu": "ptr", "gpu-standalone": "kubeflow"}  # overlay -> namespace
MULTI_USER = {"cpu", "gpu"}
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
CUSTOM_KINDS = {"PyTorchJob", "InferenceService"}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(REPO / "manifests/overlays" / request.param)


def _by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _pod_specs(objects: list[dict]) -> list[dict]:
    specs = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]
    return specs + [
        o["spec"]["jobTemplate"]["spec"]["template"]["spec"] for o in objects if o["kind"] == "CronJob"
    ]


def test_every_object_validates(overlay):
    name, rendered = overlay
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
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == OVERLAYS[name]
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "Job"} <= kinds
    assert {"PersistentVolumeClaim", "ServingRuntime", "ConfigMap"} <= kinds


def test_validation_catches_a_broken_object(overlay):
    deployment = _by_kind(overlay[1], "Deployment")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(Exception, match="imagePullPolice"):
        validate_core(broken)


def test_step_account_has_what_kfp_and_the_steps_need(overlay):
    """Item 1. KFP v2's driver and launcher read the ``kfp-launcher`` ConfigMap and the
    ``mlpipeline-minio-artifact`` Secret of the run's namespace (kubeflow/pipelines
    backend/src/v2/config/env.go, KFP 2.x), and Argo's executor creates/patches
    ``workflowtaskresults`` (argo-workflows docs/workflow-rbac.md, >= 3.4) — KFP's own
    ``pipeline-runner`` Role (manifests/kustomize/base/pipeline/pipeline-runner-role.yaml) grants these.
    Today's Role has none of them. The RBAC rules are evaluated as the API server's authorizer does."""
    name, rendered = overlay
    namespace = OVERLAYS[name]
    assert rbac.missing(rendered, namespace, "ptr-pipeline", rbac.STEP_NEEDS) == []
    kfp = {(n.verb, n.resource, n.name) for n in rbac.KFP_NEEDS}
    assert {("get", "configmaps", "kfp-launcher"), ("get", "secrets", "mlpipeline-minio-artifact")} <= kfp
    assert ("create", "workflowtaskresults", "") in kfp and ("patch", "workflowtaskresults", "") in kfp
    # no more than that: other secrets and configmaps stay out of reach, and nothing cluster-wide
    for extra in (
        rbac.Need("get", "", "secrets", name="ptr-s3-credentials"),
        rbac.Need("list", "", "secrets"),
        rbac.Need("get", "", "configmaps", name="other"),
        rbac.Need("create", "", "pods"),
        rbac.Need("create", "", "pods", subresource="exec"),
    ):
        assert not rbac.allowed(rendered, namespace, "ptr-pipeline", extra), extra
    assert not _by_kind(rendered, "ClusterRole") and not _by_kind(rendered, "ClusterRoleBinding")
    (binding,) = _by_kind(rendered, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ptr-pipeline", "namespace": namespace}]


def test_rbac_reader_tells_allowed_from_denied():
    """The evaluator itself: resourceNames restrict, a subresource is its own resource, bindings in other
    namespaces and other accounts do not count."""
    objects = [
        {
            "kind": "Role",
            "metadata": {"name": "r", "namespace": "a"},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            ],
        },
        {
            "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "r", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "a"}],
        },
    ]
    assert rbac.allowed(objects, "a", "sa", rbac.Need("get", "", "secrets", name="s1"))
    assert not rbac.allowed(objects, "a", "sa", rbac.Need("get", "", "secrets", name="s2"))
    assert not rbac.allowed(objects, "a", "sa", rbac.Need("get", "", "pods", subresource="log"))
    assert not rbac.allowed(objects, "a", "other", rbac.Need("get", "", "pods"))
    assert not rbac.allowed(objects, "b", "sa", rbac.Need("get", "", "pods"))


def test_workload_account_has_no_api_rights(overlay):
    """Item 2: training replicas and model servers run as ptr-workload, which no binding names and
    which mounts no token; the step account reads pods, their logs and events (item 9)."""
    name, rendered = overlay
    namespace = OVERLAYS[name]
    account = _one(rendered, "ServiceAccount", "ptr-workload")
    assert account["automountServiceAccountToken"] is False
    assert rbac.granted_rules(rendered, namespace, "ptr-workload") == []
    for need in rbac.WORKLOAD_FORBIDDEN:
        assert not rbac.allowed(rendered, namespace, "ptr-workload", need)
    for need in (
        rbac.Need("list", "", "pods"),
        rbac.Need("get", "", "pods", subresource="log"),
        rbac.Need("list", "", "events"),
    ):
        assert rbac.allowed(rendered, namespace, "ptr-pipeline", need)
    # KServe's storage initializer takes the S3 credentials from the predictor account's secrets
    assert account["secrets"] == [{"name": "ptr-s3-credentials"}]
    for spec in _pod_specs(rendered):
        assert spec.get("serviceAccountName") == "ptr-workload"


def test_kfp_modes(overlay):
    """Item 3. Multi-user: the namespace carries ``pipelines.kubeflow.org/enabled: "true"``, the label
    KFP's pipelines-profile-controller selects to provision kfp-launcher and the artifact Secret
    (kubeflow/pipelines manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py).
    Standalone: everything goes to KFP's own namespace, which the overlay does not create."""
    name, rendered = overlay
    namespaces = _by_kind(rendered, "Namespace")
    if name in MULTI_USER:
        (namespace,) = namespaces
        assert namespace["metadata"]["name"] == OVERLAYS[name]
        assert namespace["metadata"]["labels"]["pipelines.kubeflow.org/enabled"] == "true"
    else:
        assert namespaces == [] and OVERLAYS[name] == "kubeflow"


def _images(objects: list[dict]) -> list[str]:
    specs = _pod_specs(objects) + [o["spec"] for o in objects if o["kind"] == "ServingRuntime"]
    return [c["image"] for spec in specs for c in spec.get("containers", []) + spec.get("initContainers", [])]


def test_images_are_registry_qualified(overlay):
    """Item 5: a bare ``ptr:0.1.0`` resolves to docker.io/library/ptr; every overlay names a registry."""
    images = _images(overlay[1])
    assert images
    for image in images:
        host = image.split("/")[0]
        assert "/" in image and ("." in host or ":" in host), image
    ours = [i for i in images if "/ptr/ptr" in i]
    assert ours and all(i.startswith("registry.example.com/ptr/") for i in ours)
    # the S3 server runs from its own image, not ours (item 18)
    assert any(i.startswith("docker.io/chrislusf/seaweedfs:") for i in images)


def test_use_registry_rewrites_every_placeholder(tmp_path):
    """Item 5: one documented command (``make use-registry IMAGE_REGISTRY=…``) replaces the placeholder
    in the overlays and the cluster configs; the result still renders."""
    import shutil
    import subprocess
    import sys

    for part in ("manifests", "pipelines/configs"):
        shutil.copytree(REPO / part, tmp_path / part)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "images/use_registry.py"),
            "reg.acme.io/ml",
            "--tag",
            "2.0",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rewritten = [*tmp_path.glob("manifests/overlays/*/*.yaml"), *tmp_path.glob("pipelines/configs/*.yaml")]
    text = "\n".join(p.read_text() for p in rewritten)  # (examples/ are re-rendered by make manifests)
    assert "registry.example.com" not in re.sub(r"#.*", "", text)  # comments may still name it
    images = _images(kustomize(tmp_path / "manifests/overlays/gpu"))
    assert "reg.acme.io/ml/ptr:2.0" in images and "reg.acme.io/ml/ptr-gpu:2.0" in images
    config = yaml.safe_load((tmp_path / "pipelines/configs/cluster-example.yaml").read_text())
    assert config["run"]["cluster"]["image"] == "reg.acme.io/ml/ptr:2.0"
    assert config["run"]["cluster"]["gpu_image"] == "reg.acme.io/ml/ptr-gpu:2.0"


def test_no_secret_is_shipped(overlay):
    """Item 18: ``kubectl apply -k`` must not overwrite the credentials a user created: no overlay
    carries a Secret; the pods that need one name it, and the kubelet retries their start until it
    exists (no manual restart)."""
    rendered = overlay[1]
    assert _by_kind(rendered, "Secret") == []
    mlflow = _one(rendered, "Deployment", "ptr-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "ptr-s3-credentials"}} in mlflow["envFrom"]


def test_mlflow_store_takes_its_writers(overlay):
    """Item 18: sqlite takes one writer, so MLflow runs one worker and one replica; artifacts go to the
    bucket the S3 component creates."""
    rendered = overlay[1]
    deployment = _one(rendered, "Deployment", "ptr-mlflow")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args and "--workers=1" in args
    assert "--serve-artifacts" in args
    config = _one(rendered, "ConfigMap", "ptr-mlflow")["data"]
    bucket = config["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    s3 = _one(rendered, "Deployment", "ptr-s3")["spec"]["template"]["spec"]["containers"][0]
    assert "ptr-mlflow ptr-data" in " ".join(s3["args"]) and bucket == "ptr-mlflow"
    assert config["MLFLOW_S3_ENDPOINT_URL"] == "http://ptr-s3:8333"
    service = _one(rendered, "Service", "ptr-s3")
    assert service["spec"]["ports"][0]["port"] == 8333
    mlflow_service = _one(rendered, "Service", "ptr-mlflow")
    assert mlflow_service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_shared_volume_is_writable_by_uid_1000(overlay):
    """Item 19: storageClassName is a knob of every overlay; NFS-backed ReadWriteMany volumes ignore
    fsGroup, so a one-shot job gives the volume's folders to the images' uid 1000."""
    rendered = overlay[1]
    pvc = _one(rendered, "PersistentVolumeClaim", "ptr-work")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"]
    job = _one(rendered, "Job", "ptr-work-init")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert "chown 1000:1000 /mnt/ptr" in container["args"][0] and "/mnt/ptr/data" in container["args"][0]
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "ptr-work"}} in job["volumes"]
    users = re.findall(r"--uid (\d+)", (REPO / "images/Dockerfile.gpu").read_text())
    assert users == ["1000"]


def test_run_folders_have_a_retention_that_spares_the_served_models(overlay):
    """Item 11: runs/<run id>/ is scratch once a run ends; a nightly CronJob deletes folders older
    than its -mtime, only under runs/ (production serves models/<name>/<version>/)."""
    cron = _one(overlay[1], "CronJob", "ptr-work-retention")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["args"][0]
    assert command.startswith("find /mnt/ptr/runs -mindepth 1 -maxdepth 1") and re.search(
        r"-mtime \+\d+", command
    )
    assert "/mnt/ptr/models" not in command and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert {"name": "work", "persistentVolumeClaim": {"claimName": "ptr-work"}} in spec["volumes"]


def test_data_loader_puts_benchmark_data_where_the_evaluate_steps_read_it():
    """Item 20: manifests/tools/data-loader.yaml mounts the work volume at the example config's mount
    path; ``kubectl cp`` into it lands under evaluate.data_dir."""
    (pod,) = [d for d in yaml.safe_load_all((REPO / "manifests/tools/data-loader.yaml").read_text()) if d]
    validate_core(pod)
    config = yaml.safe_load((REPO / "pipelines/configs/cluster-example.yaml").read_text())
    mount = config["run"]["cluster"]["storage"]["mount_path"]
    (container,) = pod["spec"]["containers"]
    assert container["volumeMounts"] == [{"name": "work", "mountPath": mount}]
    assert (
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == config["run"]["cluster"]["storage"]["pvc"]
    )
    assert config["evaluate"]["data_dir"] == f"{mount}/data" and "/mnt/ptr/data" in container["command"][-1]
    assert "/" in container["image"] and container["image"].split("/")[0] == "docker.io"


def test_gpu_overlays_serve_with_vllm_on_a_gpu():
    for name in ("gpu", "gpu-standalone"):
        (runtime,) = _by_kind(kustomize(REPO / "manifests/overlays" / name), "ServingRuntime")
        container = runtime["spec"]["containers"][0]
        assert container["image"] == "registry.example.com/ptr/ptr-gpu:0.1.0"
        assert "--backend=vllm" in container["args"] and "--backend=transformers" not in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["command"] == ["ptr"] and container["args"][0] == "serve"  # the patch kept the base


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
        r"(?<![A-Za-z])(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|password|token)\s*[:=]\s*['\"]?([^'\"\s{}\[\]]+)",
        re.I,
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
