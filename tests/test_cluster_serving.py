"""The deploy and promote steps on a cluster: the InferenceServices they build (validated against the
KServe CRD in ../shared/crds), where production's model lives, and the promotion order.

No Kubernetes API server or KServe can run here: the InferenceService calls of the promote step are
replaced by recorders (and say so); the manifests are checked against the CRD and these upstream facts:
KServe takes the storage initializer's S3 credentials from the predictor's service account
(kserve pkg/credentials/s3/s3_secret.go, v0.15); the Hugging Face runtime's image is KServe's own
(config/runtimes/kserve-huggingfaceserver.yaml); Knative (>= 1.15, knative/serving#15309) accepts a
startup probe, and its progress deadline (annotation serving.knative.dev/progress-deadline, default
600 s) must outlast it.
"""

from __future__ import annotations

import json
import types

import pytest
import yaml

from ptr.cluster import serving
from ptr.cluster.settings import Cluster, Resources, Storage
from ptr.errors import PtrError
from ptr.pipeline.config import load_config
from ptr.pipeline.steps import promotion as promotion_step
from tests.support.k8s import REPO, validate_custom

RUN_ID = "3f2a9c4e-5b1d-4e8f-9a7c-2d6e8b0f1a3c"
REGISTRATION = {"name": "ptr-qwen", "version": "7"}


def _cluster(**update) -> Cluster:
    return load_config(REPO / "pipelines/configs/cluster-example.yaml").run.kube.model_copy(update=update)


def _isvc(cluster: Cluster, model="/mnt/ptr/models/ptr-qwen/7") -> dict:
    return serving.inference_service_for(
        cluster, "ptr-production", model, model_name="ptr-qwen", run_id=RUN_ID, registration=REGISTRATION
    )


@pytest.mark.parametrize("runtime", ["ptr", "huggingface"])
def test_predictors_run_as_the_workload_account_on_the_gpu_nodes(runtime):
    """Items 2, 12, 14: the workload account (it carries the S3 secret for the storage initializer),
    the config's node selector and tolerations (GPU nodes are tainted), a startup probe sized by
    ready_timeout_s and a Knative progress deadline beyond it."""
    cluster = _cluster(serving_runtime=runtime)
    isvc = _isvc(cluster)
    validate_custom(isvc)
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "ptr-workload"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert predictor["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    container = predictor["containers"][0] if runtime == "ptr" else predictor["model"]
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= cluster.ready_timeout_s
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    deadline = int(annotations["serving.knative.dev/progress-deadline"].removesuffix("s"))
    assert deadline > probe["periodSeconds"] * probe["failureThreshold"]
    assert isvc["spec"]["predictor"]["model" if runtime == "huggingface" else "containers"]


def test_the_huggingface_runtime_keeps_kserves_image():
    """Item 13: our image has no huggingfaceserver; the runtime's own image must run."""
    model = _isvc(_cluster(serving_runtime="huggingface"))["spec"]["predictor"]["model"]
    assert "image" not in model and model["modelFormat"] == {"name": "huggingface"}
    container = _isvc(_cluster(serving_runtime="ptr"))["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example.com/ptr/ptr-gpu:0.1.0"


def test_raw_mode_and_cpu_predictors():
    isvc = _isvc(_cluster(serving_mode="RawDeployment", serve_resources=Resources(cpu="2", memory="8Gi")))
    validate_custom(isvc)
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment"}
    predictor = isvc["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor  # CPU pods go anywhere


def test_committed_examples_follow_the_builder():
    for runtime in ("ptr", "huggingface"):
        example = yaml.safe_load((REPO / f"manifests/examples/inferenceservice-{runtime}.yaml").read_text())
        assert example["spec"]["predictor"]["serviceAccountName"] == "ptr-workload"
        assert ("image" in str(example["spec"]["predictor"])) == (runtime == "ptr")


def test_production_serves_the_versions_own_folder(tmp_path):
    """Item 16: production must not serve a run's scratch folder, which retention deletes."""
    cluster = Cluster(storage=Storage(pvc="ptr-work", mount_path=str(tmp_path)))
    run_model = tmp_path / "runs" / RUN_ID / "output/ptr/final"
    run_model.mkdir(parents=True)
    (run_model / "config.json").write_text("{}")
    served = serving.publish_version(cluster, str(run_model), name="ptr-qwen", version="7")
    assert served == f"{tmp_path}/models/ptr-qwen/7" and (tmp_path / "models/ptr-qwen/7/config.json").exists()
    assert "/runs/" not in served
    uri = _isvc(cluster, served)["spec"]["predictor"]["containers"][0]["env"][0]["value"]
    assert uri == "pvc://ptr-work/models/ptr-qwen/7"
    # publishing again replaces the folder whole
    (run_model / "config.json").write_text('{"v": 2}')
    serving.publish_version(cluster, str(run_model), name="ptr-qwen", version="7")
    assert (tmp_path / "models/ptr-qwen/7/config.json").read_text() == '{"v": 2}'
    s3 = Cluster(storage=Storage(s3_uri="s3://bucket/ptr"))
    assert serving.version_folder(s3, "ptr-qwen", "7") == "s3://bucket/ptr/models/ptr-qwen/7"


class _Recorder:
    """Stands in for the cluster calls of the promote step (no API server or MLflow server here)."""

    def __init__(self, monkeypatch, *, promoted=True, rollout_fails=False):
        self.calls = []
        self.rollout_fails = rollout_fails
        decision = types.SimpleNamespace(reason="better on gsm8k.round3")
        promotion = types.SimpleNamespace(
            promoted=promoted,
            decision=decision,
            report={},
            name="ptr-qwen",
            candidate="7",
            champion_before="6",
        )

        def run_promote(name, **kw):
            self.calls.append(("decide", kw["move_alias"]))
            return promotion

        monkeypatch.setattr(promotion_step, "run_promote", run_promote)
        monkeypatch.setattr(promotion_step, "summary", lambda report: "")
        monkeypatch.setattr(promotion_step, "crown", lambda *a: self.calls.append(("crown", *a)))
        monkeypatch.setattr(
            promotion_step.cluster_serving,
            "publish_version",
            lambda cluster, model, name, version: (
                self.calls.append(("publish", model)) or f"/mnt/ptr/models/{name}/{version}"
            ),
        )
        monkeypatch.setattr(promotion_step.cluster_serving, "follow_champion", self.follow)
        monkeypatch.setattr(
            promotion_step.cluster_serving,
            "remove_candidate",
            lambda cluster, model_name, run_id: self.calls.append(("remove candidate", run_id)),
        )

    def follow(self, cluster, champion, model_name, run_id):
        self.calls.append(("rollout", champion["model"]))
        if self.rollout_fails:
            raise PtrError("InferenceService ptr/ptr-production cannot serve the new model")
        return {"name": "ptr-production", "action": "updated"}


def _promote_step(tmp_path, monkeypatch):
    for name in ("PTR_RUN_ID", "PTR_EXPERIMENT", "PTR_RUN_LABEL"):  # the step sets them: put them back
        monkeypatch.setenv(name, "")
    registration = {**REGISTRATION, "model": f"/mnt/ptr/runs/{RUN_ID}/output/ptr/final", "run_id": RUN_ID}
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg/registration.json").write_text(json.dumps(registration))
    run = load_config(REPO / "pipelines/configs/cluster-example.yaml").run.model_dump(mode="json")
    base, results = tmp_path / "base", tmp_path / "results"  # evaluations: none needed, a champion exists
    return promotion_step.promote(
        run,
        {"primary": "gsm8k.round3"},
        str(tmp_path / "reg"),
        str(base),
        str(results),
        str(tmp_path / "out"),
        RUN_ID,
    )


def test_promotion_rolls_production_out_before_the_alias_moves(tmp_path, monkeypatch):
    """Item 16: the champion alias is what other consumers follow; it moves only once production
    serves the new version, from the version's folder. Item 11: the candidate goes either way."""
    recorder = _Recorder(monkeypatch)
    decision = _promote_step(tmp_path, monkeypatch)
    assert [c[0] for c in recorder.calls] == ["decide", "publish", "rollout", "crown", "remove candidate"]
    assert recorder.calls[0] == ("decide", False)  # the gate does not move the alias itself
    assert recorder.calls[2] == ("rollout", "/mnt/ptr/models/ptr-qwen/7")
    assert recorder.calls[3] == ("crown", "ptr-qwen", "7", "6")
    assert decision["production"]["action"] == "updated"


def test_a_failed_rollout_leaves_the_alias_and_removes_the_candidate(tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch, rollout_fails=True)
    with pytest.raises(PtrError, match="cannot serve the new model"):
        _promote_step(tmp_path, monkeypatch)
    assert [c[0] for c in recorder.calls] == ["decide", "publish", "rollout", "remove candidate"]


def test_a_kept_champion_touches_nothing_but_the_candidate(tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch, promoted=False)
    assert _promote_step(tmp_path, monkeypatch)["promoted"] is False
    assert [c[0] for c in recorder.calls] == ["decide", "remove candidate"]
