"""The pipeline compiles, its DAG is the PTR order, each component is a thin lightweight Python
component on the project image calling one step, cluster settings land in the platform spec, and the
submission path to Kubeflow Pipelines works up to the API call (no KFP API server can run here: a
recorder stands in for kfp.Client)."""

from __future__ import annotations

import types

import pytest
import yaml

from pipelines import run as runner
from pipelines.ptr_pipeline import compile_pipeline
from ptr.errors import PtrError
from ptr.pipeline.config import PipelineConfig, load_config
from tests.support.k8s import REPO

ORDER = ["queries", "thoughts", "encode", "train", "register", "deploy", "evaluate", "promote"]


def _compiled(tmp_path, config: PipelineConfig):
    docs = list(yaml.safe_load_all(compile_pipeline(config, tmp_path / "p.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _upstream(spec) -> dict[str, set[str]]:
    tasks = spec["root"]["dag"]["tasks"]
    names = {key: t["taskInfo"]["name"] for key, t in tasks.items()}
    graph = {}
    for key, task in tasks.items():
        deps = set(task.get("dependentTasks", []))
        for arg in task.get("inputs", {}).get("artifacts", {}).values():
            deps.add(arg["taskOutputArtifact"]["producerTask"])
        graph[names[key]] = {names[d] for d in deps}
    return graph


def test_dag_is_the_ptr_order(tmp_path):
    spec, _ = _compiled(tmp_path, PipelineConfig())
    graph = _upstream(spec)
    for before, after in zip(ORDER, ORDER[1:], strict=False):
        assert before in graph[after] or (after == "evaluate" and "deploy" in graph[after]), (before, after)
    assert graph["evaluate-base"] == set() and "evaluate-base" in graph["evaluate"]
    assert graph["promote"] == {"register", "evaluate", "evaluate-base"}  # no champion: the base is the bar
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "run",
        "data",
        "train",
        "evaluate",
        "promote",
    }
    assert all(
        p["parameterType"] == "STRUCT" for p in spec["root"]["inputDefinitions"]["parameters"].values()
    )
    assert (
        spec["root"]["outputDefinitions"]["artifacts"]["Output"]["artifactType"]["schemaTitle"]
        == "system.Markdown"
    )


def test_components_are_thin_and_install_nothing(tmp_path):
    spec, _ = _compiled(tmp_path, PipelineConfig())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 9
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "ptr:0.1.0"
        program = " ".join(container["command"])
        assert "pip install" not in program  # the image holds kfp and ptr
        assert "from ptr.pipeline import steps" in program
        body = program.split("def ", 1)[1]
        assert body.count("steps.") == 1, body  # one step call per component
        assert body.count("import ") == 1, body  # and nothing else of ptr: the step validates its input


def test_cluster_settings_reach_every_task(tmp_path):
    config = load_config(REPO / "pipelines/configs/cluster-example.yaml")
    spec, platform = _compiled(tmp_path, config)
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert (
        images["exec-make-thoughts"]
        == images["exec-evaluate-base"]
        == "registry.example.com/ptr/ptr-gpu:0.1.0"
    )
    assert images["exec-train-model"] == "registry.example.com/ptr/ptr:0.1.0"
    gpu = executors["exec-make-thoughts"]["container"]["resources"]["accelerator"]
    assert gpu["resourceCount"] == "1"
    for name, e in executors.items():
        env = {v["name"]: v["value"] for v in e["container"].get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == "http://ptr-mlflow:5000", name
        assert env["AWS_ENDPOINT_URL"] == "http://ptr-s3:8333", name  # item 12: S3 wherever it is used
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for name, settings in k8s.items():
        assert settings["pvcMount"][0]["mountPath"] == "/mnt/ptr", name
        keys = {m["secretKey"] for m in settings["secretAsEnv"][0]["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert k8s["exec-make-thoughts"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert "nodeSelector" not in k8s["exec-register-model"]


class FakeKfpClient:
    """Records what kfp.Client would send to the Kubeflow Pipelines API."""

    def __init__(self):
        self.calls = []

    def create_run_from_pipeline_package(self, package, **kwargs):
        self.calls.append({"package": yaml.safe_load_all(open(package).read()).__next__(), **kwargs})
        return types.SimpleNamespace(run_id="run-123")


def test_submission_compiles_with_the_config_and_prints_the_url():
    config = load_config(REPO / "pipelines/configs/cluster-example.yaml", {"train": {"max_steps": 9}})
    client = FakeKfpClient()
    url = runner.submit(config, "https://kfp.example.com/pipeline", client=client, run_name="r", env={})
    assert url == "https://kfp.example.com/_/pipeline/?ns=ptr#/runs/details/run-123"  # the dashboard's link
    (call,) = client.calls
    assert (
        call["arguments"]["train"]["max_steps"] == 9 and call["arguments"]["run"]["runtime"] == "kubernetes"
    )
    assert call["service_account"] == "ptr-pipeline" and call["experiment_name"] == "ptr"
    assert call["namespace"] == "ptr"  # item 3: multi-user KFP runs in the profile namespace
    assert call["package"]["pipelineInfo"]["name"] == "ptr"


def test_standalone_submission_names_no_namespace():
    """Item 3: standalone KFP runs everything in its own namespace and takes none from the client."""
    config = load_config(
        REPO / "pipelines/configs/cluster-example.yaml",
        {
            "run": {
                "cluster": {
                    **load_config(REPO / "pipelines/configs/cluster-example.yaml").run.kube.model_dump(),
                    "namespace": "kubeflow",
                    "kfp_mode": "standalone",
                }
            }
        },
    )
    client = FakeKfpClient()
    url = runner.submit(config, "http://127.0.0.1:8080", client=client, run_name="r", env={})
    assert client.calls[0]["namespace"] is None and url == "http://127.0.0.1:8080/#/runs/details/run-123"


def test_submission_refuses_a_local_config():
    with pytest.raises(PtrError, match="run.runtime: kubernetes"):
        runner.submit(
            load_config(REPO / "pipelines/configs/local.yaml"), "http://kfp", client=FakeKfpClient()
        )
