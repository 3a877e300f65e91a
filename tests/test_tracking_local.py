"""ptr.tracking without a server: off by default, and the local sqlite store under .ptr/ (the
fallback that keeps every command working offline) for stage runs, the registry and promotion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptr.errors import PtrError
from tests.conftest import REPO, run_ptr
from tests.support.eval_runs import log_eval_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_tracking_is_off_and_free_unless_configured(monkeypatch):
    import ptr.tracking as t

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PTR_TRACKING", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("PTR_LOCAL_DIR", "/somewhere/.ptr")
    assert not t.enabled() and t.tracking_uri() is None
    assert t.tracking_uri(fallback=True) == "sqlite:////somewhere/.ptr/mlflow.db"
    monkeypatch.setenv("PTR_TRACKING", "local")
    assert t.enabled() and t.tracking_uri() == "sqlite:////somewhere/.ptr/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert t.tracking_uri() == "http://127.0.0.1:1"
    monkeypatch.setenv("RANK", "1")  # only rank 0 of a distributed job logs
    assert not t.enabled()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("PTR_TRACKING", "off")
    assert not t.enabled() and t.tracking_uri(fallback=True) == "http://127.0.0.1:1"

    # A stage with tracking off gets a handle that does nothing, and MLflow is never imported.
    code = (
        "import sys, ptr.tracking as t\n"
        "with t.stage_run('train', {'lr': 1}, tags=t.describe_model('tiny-random')) as run:\n"
        "    run.log_metrics({'loss': 1.0}, step=1); run.log_artifact('/nonexistent'); run.log_dataset('x')\n"
        "print(run.run_id, 'mlflow' in sys.modules)\n"
    )
    env = {
        k: v for k, v in __import__("os").environ.items() if k not in ("MLFLOW_TRACKING_URI", "PTR_TRACKING")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["None", "False"]


def test_describe_model_for_served_versions(monkeypatch):
    from ptr.tracking import describe_model

    monkeypatch.setenv("PTR_MODEL_VERSION", "ptr-qwen/7")
    assert describe_model("http://svc/v1") == {
        "ptr.model_ref": "http://svc/v1",
        "ptr.model_name": "ptr-qwen",
        "ptr.model_version": "7",
    }
    with pytest.raises(PtrError, match="expected models:/NAME@ALIAS"):
        describe_model("models:/bad@")


@pytest.fixture(scope="module")
def local_store(tiny_path, tmp_path_factory):
    """Tracking on, into a fresh sqlite store (PTR_TRACKING=local), one per module."""
    root = tmp_path_factory.mktemp("local-tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("PTR_RUN_ID", raising=False)
        mp.delenv("PTR_MODEL_VERSION", raising=False)
        mp.delenv("RANK", raising=False)
        mp.setenv("PTR_TRACKING", "local")
        mp.setenv("PTR_LOCAL_DIR", str(root / ".ptr"))
        mp.setenv("PTR_CACHE", str(root / "cache"))  # tiny_path was built before this
        mp.setenv("PTR_EXPERIMENT", "local-test")
        from mlflow import MlflowClient

        from ptr.tracking import tracking_uri

        yield MlflowClient(tracking_uri())


def _download(client, run_id: str, path: str, dst: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(dst)))


def test_pipeline_run_is_parent_of_its_stages(local_store, tmp_path, monkeypatch):
    from ptr.tracking import pipeline_run, stage_run

    client = local_store
    monkeypatch.setenv("PTR_RUN_ID", "pipe-1")
    data = tmp_path / "thoughts.jsonl"
    data.write_text('{"id": 1}\n{"id": 2}\n')
    with stage_run("encode", {"tokenizer": "tiny-random", "pack": {"max_length": 128, "on": True}}) as run:
        run.log_dataset(data, name="thoughts", context="training", tags={"rows": 2})
        run.log_metrics({"encode.examples": 2})
        encode_id = run.run_id
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "".join(
            json.dumps({"step": s, "loss": 3 / s, "nll": 2 / s, "consistency": 0.1, "confidence": 0.5}) + "\n"
            for s in range(1, 6)
        )
        + '{"step": 6, "lo'  # a torn last line, as a killed trainer leaves
    )
    with stage_run("train", {"lr": 1e-4}) as run:
        for s in range(1, 4):
            run.log_metrics({"train.loss": 1.0 / s}, step=s)
        run.log_artifact(log, "train")
        train_id = run.run_id
    eval_id = log_eval_run("tiny-random", {"gsm8k": [[0, 1, 0, 1], [1, 1, 0, 1]], "arc": [[1, 0], [1, 1]]})

    parent = pipeline_run("pipe-1")
    runs = {
        r.info.run_id: r for r in client.search_runs([r.info.experiment_id for r in [client.get_run(parent)]])
    }
    assert runs[parent].data.tags["ptr.run_id"] == "pipe-1" and runs[parent].info.status == "FINISHED"
    for child in (encode_id, train_id, eval_id):
        assert runs[child].data.tags["mlflow.parentRunId"] == parent
        assert runs[child].data.tags["ptr.run_id"] == "pipe-1"
    assert [r for r in runs.values() if r.data.tags.get("ptr.stage") == "pipeline"] == [runs[parent]]

    encode = runs[encode_id]
    assert encode.data.params == {"tokenizer": "tiny-random", "pack.max_length": "128", "pack.on": "True"}
    (dataset_input,) = encode.inputs.dataset_inputs
    assert dataset_input.dataset.name == "thoughts"
    assert json.loads(dataset_input.dataset.source)["uri"] == str(data)
    assert len(dataset_input.dataset.digest) == 16
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training", "rows": "2"}

    history = client.get_metric_history(train_id, "train.loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert _download(client, train_id, "train/loss_curves.png", tmp_path).read_bytes().startswith(PNG)
    assert _download(client, eval_id, "eval/score_vs_round.png", tmp_path).read_bytes().startswith(PNG)
    assert runs[eval_id].data.metrics["eval.gsm8k.round2"] == 0.75

    # Another pipeline run gets its own parent.
    monkeypatch.setenv("PTR_RUN_ID", "pipe-2")
    with stage_run("encode") as run:
        pass
    assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == pipeline_run("pipe-2") != parent


def test_failed_stage_fails_its_parent_and_other_ranks_stay_silent(local_store, monkeypatch):
    from ptr.tracking import NullRun, pipeline_run, stage_run

    monkeypatch.setenv("PTR_RUN_ID", "pipe-fail")
    with pytest.raises(RuntimeError), stage_run("train") as run:
        raise RuntimeError("out of memory")
    assert local_store.get_run(run.run_id).info.status == "FAILED"
    assert local_store.get_run(pipeline_run("pipe-fail")).info.status == "FAILED"
    monkeypatch.setenv("RANK", "3")
    with stage_run("train") as run:
        assert isinstance(run, NullRun)
    with pytest.raises(PtrError, match="PTR_RUN_ID"):
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("PTR_RUN_ID", "bad id'")
        with stage_run("train"):
            pass


def test_register_never_loads_weights_and_loads_back_by_alias(local_store, tiny_path, monkeypatch, tmp_path):
    import safetensors.torch
    import transformers

    from ptr.tracking import describe_model
    from ptr.tracking.model_registry import download_registered_model, register_model
    from ptr.tracking.promote import promote

    def refuse(*args, **kwargs):
        raise AssertionError("registering must not load the weights")

    with monkeypatch.context() as mp:
        mp.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
        mp.setattr(safetensors.torch, "load_file", refuse)
        info = register_model(tiny_path, "tiny-local", ptr_run_id="pipe-reg")
    assert (info["version"], info["uri"]) == ("1", "models:/tiny-local/1")
    mv = local_store.get_model_version_by_alias("tiny-local", "candidate")
    assert str(mv.version) == "1" and mv.tags["ptr.run_id"] == "pipe-reg"
    local = Path(download_registered_model("models:/tiny-local@candidate"))
    # Explicit pins, not inferred (inference would load the model).
    assert f"transformers=={transformers.__version__}" in (local.parent / "requirements.txt").read_text()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert (local / name).read_bytes() == (Path(tiny_path) / name).read_bytes()
    assert download_registered_model("models:/tiny-local/1") == str(local)  # cached per version
    assert describe_model("models:/tiny-local@candidate")["ptr.model_version"] == "1"
    with pytest.raises(PtrError, match="has no alias 'champion'"):
        download_registered_model("models:/tiny-local@champion")
    with pytest.raises(PtrError, match="no registered model 'nope'"):
        download_registered_model("models:/nope/1")

    # Promotion with the local store: the first evaluated model becomes champion.
    with pytest.raises(PtrError, match="no finished evaluation with eval.gsm8k.round2"):
        promote("tiny-local", primary="gsm8k.round2")
    log_eval_run("models:/tiny-local@candidate", {"gsm8k": np.eye(2, 6).tolist()})
    promotion = promote("tiny-local", primary="gsm8k.round2")
    assert promotion.promoted and promotion.champion_before is None
    assert promotion.report["decision"]["promote"] and promotion.report["champion"] is None
    assert str(local_store.get_model_version_by_alias("tiny-local", "champion").version) == "1"
    assert local_store.get_model_version("tiny-local", "1").tags["ptr.promotion.decision"] == "promoted"


def test_with_no_champion_the_candidate_must_beat_the_base_model(local_store, tiny_path):
    """The pipeline hands promote() its base model's evaluation as the reference: no champion no
    longer means "promoted whatever it scored" (the candidate scoring 10% against the base's 30%)."""
    from ptr.tracking import gate
    from ptr.tracking.model_registry import register_model
    from ptr.tracking.promote import Reference, promote

    register_model(tiny_path, "tiny-gate", ptr_run_id="pipe-gate")
    candidate = np.zeros((2, 40))
    candidate[:, :4] = 1.0  # 10% right in both rounds
    log_eval_run("models:/tiny-gate@candidate", {"mmlu": candidate.tolist()})
    metric = gate.parse_metric("mmlu.round2")

    def reference(right: int) -> Reference:
        scores = {f"mmlu-{i}": float(i < right) for i in range(40)}
        return Reference("base model", {metric.key: right / 40}, scores)

    kept = promote("tiny-gate", primary="mmlu.round2", reference=reference(12), n_boot=500)
    assert not kept.promoted and kept.decision.reason.startswith(
        "not better than the base model on mmlu.round2"
    )
    assert kept.report["reference"] == "base model" and kept.decision.primary["champion"] == 0.3
    assert "champion" not in local_store.get_registered_model("tiny-gate").aliases
    promoted = promote("tiny-gate", primary="mmlu.round2", reference=reference(0), n_boot=500)
    assert promoted.promoted and promoted.decision.reason.startswith("better than the base model")
    assert str(local_store.get_model_version_by_alias("tiny-gate", "champion").version) == "1"


def test_cli_errors_are_clear_and_exit_2(tmp_path):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    env = {"PTR_LOCAL_DIR": str(tmp_path / ".ptr"), "MLFLOW_TRACKING_URI": ""}
    proc = run_ptr("register", "--model_path", not_a_model, "--name", "x", env=env)
    assert proc.returncode == 2 and "no config.json" in proc.stderr
    proc = run_ptr("register", "--model_path", tmp_path / "missing", "--name", "x", env=env)
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    proc = run_ptr("promote", "--name", "x", "--primary", "gsm8k", env=env)
    assert proc.returncode == 2 and "expected TASK.roundK" in proc.stderr
    proc = run_ptr(
        "promote", "--name", "x", "--primary", "gsm8k.round1", "--guard", "mmlu.round1:lots", env=env
    )
    assert proc.returncode == 2 and "tolerance" in proc.stderr
