"""``ptr cluster check`` against a cluster that has everything a run needs, then one case per ✗.

No Kubernetes API server can run on this machine: the recorded fake API of tests/support/k8s.py stands
in for it. Its RBAC is the rendered ``manifests/overlays/gpu`` (so the check and the manifests answer
to the same table, ptr.cluster.rbac.STEP_NEEDS), and it answers SubjectAccessReviews by evaluating
those objects; 404 for a resource type it does not know, as the API server does for a missing CRD.
"""

from __future__ import annotations

import copy
import types

import pytest
import yaml

from ptr.cluster import check
from tests.support.k8s import REPO, FakeKube, api_error, kustomize

CONFIG = REPO / "pipelines/configs/cluster-example.yaml"
NS = "ptr"


@pytest.fixture(scope="module")
def overlay_rbac() -> list[dict]:
    rendered = kustomize(REPO / "manifests/overlays/gpu")
    return [o for o in rendered if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def _gpu_node(name, *, gpus=4, labels=None, taints=None):
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.present": "true", **(labels or {})}},
        "spec": {
            "taints": taints if taints is not None else [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"}},
    }


@pytest.fixture
def cluster(overlay_rbac) -> FakeKube:
    """Everything cluster-example.yaml needs, as `kubectl apply -k manifests/overlays/gpu` plus the
    README's secret commands and KFP's profile controller leave it."""
    fake = FakeKube()
    fake.rbac = copy.deepcopy(overlay_rbac)
    fake.crds = {
        "pytorchjobs.kubeflow.org",
        "inferenceservices.serving.kserve.io",
        "servingruntimes.serving.kserve.io",
        "profiles.kubeflow.org",
    }
    fake.core[("namespace", "", NS)] = {
        "metadata": {"name": NS, "labels": {"pipelines.kubeflow.org/enabled": "true"}}
    }
    for account in ("ptr-pipeline", "ptr-workload"):
        fake.core[("serviceaccount", NS, account)] = {"metadata": {"name": account, "namespace": NS}}
    fake.core[("persistentvolumeclaim", NS, "ptr-work")] = {
        "metadata": {"name": "ptr-work"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs-csi"},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteMany"]},
    }
    fake.core[("secret", NS, "ptr-s3-credentials")] = {
        "metadata": {
            "name": "ptr-s3-credentials",
            "annotations": {"serving.kserve.io/s3-endpoint": "ptr-s3:8333"},
        },
        "data": {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eQ=="},
    }
    fake.core[("secret", NS, "mlpipeline-minio-artifact")] = {
        "metadata": {"name": "mlpipeline-minio-artifact"},
        "data": {"accesskey": "eA==", "secretkey": "eQ=="},
    }
    fake.core[("configmap", NS, "kfp-launcher")] = {"metadata": {"name": "kfp-launcher"}, "data": {}}
    fake.nodes = [
        _gpu_node("gpu-a"),
        _gpu_node("gpu-b"),
        {"metadata": {"name": "cpu-a"}, "status": {"allocatable": {"cpu": "8"}}},
    ]
    return fake


class FakeKfp:
    """Stands in for kfp.Client (no KFP API server here): answers list_experiments or raises."""

    def __init__(self, error=None):
        self.error, self.calls = error, []

    def __call__(self, host, *, mode, namespace, env):
        self.calls.append((host, mode, namespace))
        return self

    def list_experiments(self, **kw):
        if self.error:
            raise self.error
        return types.SimpleNamespace(experiments=[])


def _check(fake, tmp_path, capsys, *, edit=None, kfp=None, host="https://kubeflow.example.com/pipeline"):
    config = yaml.safe_load(CONFIG.read_text())
    if edit:
        edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    apis = check.Apis(fake, fake, fake, fake)
    argv = ["--config", str(path)] + (["--kfp-host", host] if host else [])
    code = check.main(argv, apis=apis, kfp_connect=kfp or FakeKfp())
    out = capsys.readouterr()
    return code, out.out, out.err


def _failed(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("✗")]


def test_a_ready_cluster_passes(cluster, tmp_path, capsys):
    code, out, _ = _check(cluster, tmp_path, capsys)
    assert code == 0, out
    assert not _failed(out)
    assert "✓ step account ptr-pipeline may do what a run does: all" in out
    assert "✓ workload account ptr-workload has no API rights" in out
    assert "✓ nodes for training (2 node(s)): 4 × nvidia.com/gpu each: 2 fit" in out
    sars = [c for c in cluster.calls if c[0] == "sar"]
    assert {c[1] for c in sars} == {
        "system:serviceaccount:ptr:ptr-pipeline",
        "system:serviceaccount:ptr:ptr-workload",
    }
    assert {"namespace": "ptr", "verb": "get", "group": "", "resource": "pods", "subresource": "log"} in [
        c[3] for c in sars
    ]


def test_no_cluster_is_one_line_and_exit_2(cluster, tmp_path, capsys):
    cluster.errors["read_namespace"] = [ConnectionRefusedError("connection refused")]
    code, out, err = _check(cluster, tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("✗ cannot reach the cluster")


def test_bad_config_names_the_field(cluster, tmp_path, capsys):
    code, _, err = _check(
        cluster, tmp_path, capsys, edit=lambda c: c["run"]["cluster"].update(kfp_mode="both")
    )
    assert code == 2 and "run.cluster.kfp_mode" in err


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("namespace-missing", "✗ namespace ptr: does not exist"),
        ("namespace-unlabelled", "not a KFP profile namespace"),
        ("crd-missing", "✗ CRD pytorchjobs.kubeflow.org: not installed"),
        ("profile-missing", "✗ CRD profiles.kubeflow.org: not installed"),
        (
            "step-right-missing",
            "cannot create workflowtaskresults.argoproj.io, patch workflowtaskresults.argoproj.io",
        ),
        (
            "workload-has-rights",
            "✗ workload account ptr-workload has no API rights: it can create pytorchjobs",
        ),
        ("rbac-unreadable", "may not ask the API server"),
        ("account-missing", "✗ service account ptr-workload: does not exist"),
        ("pvc-pending", "✗ volume ptr-work: Pending (storageClassName nfs-csi)"),
        ("pvc-rwo", "✗ volume ptr-work: access modes ReadWriteOnce"),
        ("secret-missing", "✗ secret ptr-s3-credentials: does not exist"),
        ("secret-key-missing", "✗ secret ptr-s3-credentials: lacks AWS_SECRET_ACCESS_KEY"),
        (
            "s3-endpoint-annotation",
            "tells KServe's storage initializer the S3 endpoint: no serving.kserve.io/s3-endpoint",
        ),
        ("kfp-secret-missing", "✗ KFP artifact secret mlpipeline-minio-artifact: absent"),
        ("image-bare", "✗ run.cluster.image names a registry: ptr:0.1.0 would be pulled from Docker Hub"),
        ("kfp-unauthorized", "✗ Kubeflow Pipelines answers: https://kubeflow.example.com/pipeline: 401"),
        ("kfp-no-host", "✗ Kubeflow Pipelines answers: no KFP endpoint given"),
        ("taint-not-tolerated", "taint nvidia.com/gpu:NoSchedule not tolerated"),
        ("label-missing", "lacks labels nvidia.com/gpu.present=true"),
        ("too-few-nodes", "✗ nodes for training (2 node(s)): 4 × nvidia.com/gpu each: 1 of 2 needed fit"),
        ("nodes-unlistable", "✗ GPU nodes: cannot list nodes"),
    ],
)
def test_each_problem_is_one_cross_with_its_fix(case, expected, cluster, tmp_path, capsys):
    edit, kfp, host = None, None, "https://kubeflow.example.com/pipeline"
    if case == "namespace-missing":
        del cluster.core[("namespace", "", NS)]
    elif case == "namespace-unlabelled":
        cluster.core[("namespace", "", NS)]["metadata"]["labels"] = {}
    elif case == "crd-missing":
        cluster.crds.discard("pytorchjobs.kubeflow.org")
    elif case == "profile-missing":
        cluster.crds.discard("profiles.kubeflow.org")
    elif case == "step-right-missing":
        (role,) = [o for o in cluster.rbac if o["kind"] == "Role"]
        role["rules"] = [r for r in role["rules"] if "argoproj.io" not in r["apiGroups"]]
    elif case == "workload-has-rights":
        cluster.rbac.append(
            {
                "kind": "RoleBinding",
                "metadata": {"name": "oops", "namespace": NS},
                "roleRef": {"kind": "Role", "name": "ptr-pipeline", "apiGroup": "rbac.authorization.k8s.io"},
                "subjects": [{"kind": "ServiceAccount", "name": "ptr-workload", "namespace": NS}],
            }
        )
    elif case == "rbac-unreadable":
        cluster.sar_forbidden = True
        cluster.list_namespaced_role = lambda *a, **k: (_ for _ in ()).throw(api_error(403))
    elif case == "account-missing":
        del cluster.core[("serviceaccount", NS, "ptr-workload")]
    elif case == "pvc-pending":
        cluster.core[("persistentvolumeclaim", NS, "ptr-work")]["status"] = {"phase": "Pending"}
    elif case == "pvc-rwo":
        pvc = cluster.core[("persistentvolumeclaim", NS, "ptr-work")]
        pvc["status"]["accessModes"] = pvc["spec"]["accessModes"] = ["ReadWriteOnce"]
    elif case == "secret-missing":
        del cluster.core[("secret", NS, "ptr-s3-credentials")]
    elif case == "secret-key-missing":
        del cluster.core[("secret", NS, "ptr-s3-credentials")]["data"]["AWS_SECRET_ACCESS_KEY"]
    elif case == "s3-endpoint-annotation":
        cluster.core[("secret", NS, "ptr-s3-credentials")]["metadata"]["annotations"] = {}

        def edit(c):
            c["run"]["cluster"]["storage"] = {"s3_uri": "s3://ptr-runs/ptr"}

    elif case == "kfp-secret-missing":
        del cluster.core[("secret", NS, "mlpipeline-minio-artifact")]
    elif case == "image-bare":

        def edit(c):
            c["run"]["cluster"]["image"] = "ptr:0.1.0"

    elif case == "kfp-unauthorized":
        kfp = FakeKfp(api_error(401, "Unauthorized"))
    elif case == "kfp-no-host":
        host = None
    elif case == "taint-not-tolerated":

        def edit(c):
            c["run"]["cluster"]["tolerations"] = []

    elif case == "label-missing":
        for node in cluster.nodes[:2]:
            node["metadata"]["labels"] = {}
    elif case == "too-few-nodes":
        cluster.nodes[1]["status"]["allocatable"]["nvidia.com/gpu"] = "2"
    elif case == "nodes-unlistable":
        cluster.errors["list_node"] = [api_error(403)]
    code, out, err = _check(cluster, tmp_path, capsys, edit=edit, kfp=kfp, host=host)
    assert code == 2, out + err
    failed = _failed(out)
    assert any(expected in line for line in failed), (expected, failed)
    index = out.splitlines().index(next(line for line in failed if expected in line))
    assert out.splitlines()[index + 1].startswith("    fix: "), "every ✗ carries its fix"


def test_rbac_read_directly_when_subject_access_reviews_are_forbidden(cluster, tmp_path, capsys):
    cluster.sar_forbidden = True
    code, out, _ = _check(cluster, tmp_path, capsys)
    assert code == 0, out
    assert "(Roles and RoleBindings read)" in out


def test_registry_and_toleration_rules():
    assert check.registry_qualified("registry.example.com/ptr/ptr:0.1.0")
    assert check.registry_qualified("localhost:5000/ptr:1") and check.registry_qualified("localhost/ptr:1")
    assert not check.registry_qualified("ptr:0.1.0") and not check.registry_qualified("team/ptr:1")
    from ptr.cluster.settings import Toleration

    taint = types.SimpleNamespace(key="nvidia.com/gpu", value="present", effect="NoSchedule")
    assert check.tolerates([Toleration(key="nvidia.com/gpu", operator="Exists")], taint)
    assert check.tolerates([Toleration(key="nvidia.com/gpu", operator="Equal", value="present")], taint)
    assert not check.tolerates([Toleration(key="nvidia.com/gpu", operator="Equal", value="x")], taint)
    assert not check.tolerates([Toleration(key="other", operator="Exists")], taint)
    assert not check.tolerates([Toleration(key="nvidia.com/gpu", effect="NoExecute")], taint)


def test_cli_and_make_target_reach_it():
    from ptr import cli

    assert cli.COMMANDS["cluster"][0] == "ptr.cluster.check:cluster_main"
    assert "ptr cluster check --config" in (REPO / "Makefile").read_text()
