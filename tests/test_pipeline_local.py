"""The whole pipeline on this machine, reduced: kfp.local's SubprocessRunner runs every component —
queries → thoughts → encode → train (torchrun, 2 gloo ranks) → register → deploy (ptr serve on
127.0.0.1) → evaluate → promote, with the base model's evaluation beside them — on tiny-random, a
few steps, with a real MLflow store (sqlite) under the test's folder.

The thought data is imported (``data.thoughts_input``, in the paper's ``{question, output1, …}``
layout): tiny-random writes noise that seldom ends a turn, so every answer it wrote would be dropped
as truncated. Generation itself is tested in tests/test_thoughts.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines import run as runner
from ptr.pipeline.config import load_config
from ptr.procs import pid_alive

STAGES = (
    "ptr.data.thoughts",
    "ptr.encode.cli",
    "ptr.train.cli",
    "ptr.evaluate.cli",
    "ptr.serve.cli",
    "ptr.tracking.cli",
)
for _stage in STAGES:  # the pipeline wires the stages together: it runs once all of them exist
    pytest.importorskip(_stage, reason=f"stage module {_stage} is not on this branch yet")

TINY = {
    "run": {"runtime": "local", "experiment": "ptr-test", "model_name": "ptr-tiny", "seed": 0},
    "data": {},  # thoughts_input: written by the fixture
    "train": {
        "base_model": "tiny-random",
        "max_length": 256,
        "max_steps": 2,
        "nproc_per_node": 2,
        "deepspeed_overrides": {"train_micro_batch_size_per_gpu": 1},
    },
    "evaluate": {"tasks": ["arith"], "rounds": 2, "limit": 3, "max_new_tokens": 16},
    "promote": {"primary": "arith.round2"},
}


N_RECORDS = 16


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import random

    from tests.support.thought_shards import arithmetic_example

    tmp = tmp_path_factory.mktemp("pipeline")
    rng, records = random.Random(0), []
    for _ in range(N_RECORDS):
        question, thoughts, answer = arithmetic_example(rng)
        thoughts = (thoughts + [f"So {question[8:-1]} is about {answer.split()[-1]}"])[:2]
        records.append(
            {"question": question, **{f"output{i}": t for i, t in enumerate([*thoughts, answer], 1)}}
        )
    (tmp / "paper.json").write_text(json.dumps(records))
    config = {**TINY, "data": {"thoughts_input": str(tmp / "paper.json")}}
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PTR_RUN_ID", "PTR_EXPERIMENT")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        result = runner.run_local(load_config(None, config), pipeline_root=tmp / "runs")
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result, tmp


def test_every_step_produced_its_artifact(finished):
    result, _ = finished
    run_dir = Path(result["run_dir"])
    queries = next(run_dir.glob("make-queries/queries"))  # skipped: the thoughts are imported
    assert json.loads((queries / "queries.summary.json").read_text())["records"] == 0
    thoughts = [
        json.loads(line)
        for line in next(run_dir.glob("make-thoughts/thoughts"))
        .joinpath("thoughts.jsonl")
        .read_text()
        .splitlines()
    ]
    assert len(thoughts) == N_RECORDS and all(len(t["thoughts"]) == 2 and t["kept"] for t in thoughts)
    assert (next(run_dir.glob("encode-thoughts/shards")) / "ptr" / "meta.json").exists()
    location = json.loads(next(run_dir.glob("train-model/model")).joinpath("location.json").read_text())
    assert (Path(location["model"]) / "config.json").exists()
    assert result["registration"]["version"] == "1" and result["registration"]["name"] == "ptr-tiny"


def test_report_puts_base_and_trained_side_by_side(finished):
    result, _ = finished
    lines = result["report"].splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert header == "| task | n | base r1 | base r2 | base Δ | trained r1 | trained r2 | trained Δ |"
    row = next(line for line in lines if line.startswith("| arith"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and all(c != "—" for c in cells[2:])
    summary = runner.summary(result, "ptr-test")
    assert "MLflow: tracking URI sqlite:///" in summary and "promoted to champion" in summary


def test_local_server_was_stopped(finished):
    result, _ = finished
    endpoint = json.loads(
        next(Path(result["run_dir"]).glob("deploy-model/endpoint/endpoint.json")).read_text()
    )
    assert endpoint["mode"] == "local" and endpoint["url"].startswith("http://127.0.0.1:")
    assert not pid_alive(endpoint["pid"])


def test_mlflow_correlates_the_run(finished):
    import mlflow

    result, tmp = finished
    run_id = result["registration"]["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ptr-test")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ptr.run_id` = '{run_id}'")
    stages = {r.data.tags.get("ptr.stage") for r in runs}
    assert {"pipeline", "thoughts", "encode", "train", "register", "eval", "promote"} <= stages, stages
    (parent,) = [r for r in runs if r.data.tags.get("ptr.stage") == "pipeline"]
    children = [r for r in runs if r.info.run_id != parent.info.run_id]
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in children)
    evals = [r for r in children if r.data.tags.get("ptr.stage") == "eval"]
    assert len(evals) == 2 and all("eval.arith.round2" in r.data.metrics for r in evals)
    version = client.get_model_version("ptr-tiny", "1")
    assert version.tags.get("ptr.run_id") == run_id
    assert str(client.get_model_version_by_alias("ptr-tiny", "champion").version) == "1"
