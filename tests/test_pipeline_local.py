"""The whole pipeline on this machine, reduced: kfp.local's SubprocessRunner runs every component —
queries → thoughts → encode → train (torchrun, 2 gloo ranks) → register → deploy (ptr serve on
127.0.0.1) → evaluate → promote, with the base model's evaluation beside them — on tiny-random, a
few steps, with a real MLflow store (sqlite) under the test's folder. Then the same pipeline runs
again under another name: every stage with the same inputs is reused from the stage cache, and
``ptr compare`` reads both runs back from MLflow.

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
from tests.support import mlflow_ui

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
    "run": {
        "runtime": "local",
        "experiment": "ptr-test",
        "model_name": "ptr-tiny",
        "name": "tiny",
        "seed": 0,
    },
    "data": {},  # thoughts_input: written by the fixture
    "train": {
        "base_model": "tiny-random",
        "max_length": 256,
        "max_steps": 2,
        "nproc_per_node": 2,
        "deepspeed_overrides": {"train_micro_batch_size_per_gpu": 1},
    },
    "evaluate": {"tasks": ["arith"], "rounds": 3, "limit": 3, "max_new_tokens": 16},
    "promote": {"primary": "arith.round3"},
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
    config = {**TINY, "data": {"thoughts_input": str(tmp / "paper.json"), "num_thoughts": 2}}
    again = {**config, "run": {**TINY["run"], "name": "again"}}
    names = ("MLFLOW_TRACKING_URI", "PTR_RUN_ID", "PTR_EXPERIMENT", "PTR_RUN_LABEL", "PTR_LOCAL_DIR")
    before = {k: os.environ.get(k) for k in (*names, "PTR_STAGE_CACHE")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["PTR_LOCAL_DIR"] = str(tmp / "state")  # the stage cache and step times
    os.environ["PTR_STAGE_CACHE"] = "on"
    try:
        result = runner.run_local(load_config(None, config), pipeline_root=tmp / "runs")
        second = runner.run_local(load_config(None, again), pipeline_root=tmp / "runs-again")
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result["again"] = second
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
    assert header == (
        "| task | n | base r1 | base r2 | base r3 | base Δ2 | base Δ3 "
        "| trained r1 | trained r2 | trained r3 | trained Δ2 | trained Δ3 |"
    )
    row = next(line for line in lines if line.startswith("| arith"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and all(c != "—" for c in cells[2:])
    summary = runner.summary(result, "ptr-test")
    assert "MLflow: tracking URI sqlite:///" in summary


def test_with_no_champion_the_gate_compares_with_the_base_model(finished):
    """The first candidate is no longer promoted whatever it scored: it must beat the base model's
    evaluation of its own run on the primary metric (paired bootstrap, lower bound above min_delta)."""
    result, _ = finished
    decision = result["decision"]
    assert "base model" in decision["reason"], decision
    assert decision["promoted"] == decision["reason"].startswith("better than the base model")


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
    assert len(evals) == 2 and all("eval.arith.round3" in r.data.metrics for r in evals)
    # children say what they evaluated: not two runs named "eval"
    assert sorted(r.info.run_name for r in evals) == ["eval base · tiny-random", "eval trained · ptr-tiny v1"]
    version = client.get_model_version("ptr-tiny", "1")
    assert version.tags.get("ptr.run_id") == run_id
    assert version.tags.get("ptr.promotion.decision") in ("promoted", "kept")


def test_mlflow_ui_opens_the_experiment_on_its_runs_and_parents_carry_the_headline(finished):
    """MLflow 3's UI reads an experiment's kind from the experiment tag ``mlflow.experimentKind``
    (mlflow/server/js of MLflow 3.17: ``custom_model_development`` opens the runs, not GenAI traces).
    The parent run carries what the runs table compares without expanding it."""
    import mlflow

    result, tmp = finished
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ptr-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run_id = result["registration"]["run_id"]
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ptr.run_id` = '{run_id}' and tags.`ptr.stage` = 'pipeline'",
    )
    assert parent.info.run_name == f"tiny {run_id}" and parent.data.tags["ptr.label"] == "tiny"
    metrics = parent.data.metrics
    evals = {
        r.data.tags["ptr.eval_name"]: r.data.metrics
        for r in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`ptr.stage` = 'eval'",
        )
    }
    for k in (1, 2, 3):
        assert metrics[f"candidate.arith.round{k}"] == evals["trained"][f"eval.arith.round{k}"]
        assert metrics[f"base.arith.round{k}"] == evals["base"][f"eval.arith.round{k}"]
        assert metrics[f"vs_base.arith.round{k}"] == pytest.approx(
            metrics[f"candidate.arith.round{k}"] - metrics[f"base.arith.round{k}"]
        )
    assert metrics["candidate.arith.delta3"] == evals["trained"]["eval.arith.delta3"]
    assert metrics["promoted"] == float(result["decision"]["promoted"])
    assert parent.data.tags["ptr.promotion.decision"] == (
        "promoted" if result["decision"]["promoted"] else "kept"
    )
    assert {"time.train_s", "time.evaluate_base_s", "time.evaluate_trained_s"} <= set(metrics)
    params = parent.data.params
    assert (
        params["train.layout"] == "ptr" and params["evaluate.rounds"] == "3" and params["run.name"] == "tiny"
    )


def test_a_second_run_reuses_every_stage_whose_inputs_are_the_same(finished):
    """Same data, model and settings under another run name: thoughts, encoding, training and both
    evaluations come from the stage cache (keyed by content, not by run), and are tracked in the new
    run as if they had run there."""
    import mlflow

    result, tmp = finished
    times = [json.loads(line) for line in (tmp / "state" / "step-times.jsonl").read_text().splitlines()]
    by_run: dict[str, dict[str, bool]] = {}
    for line in times:
        by_run.setdefault(line["name"], {})[line["step"]] = line["reused"]
    cached = ("thoughts", "encode", "train", "evaluate_base", "evaluate_trained")
    assert not any(by_run["tiny"][step] for step in cached), by_run
    assert all(by_run["again"][step] for step in cached), by_run
    first, second = result["registration"], result["again"]["registration"]
    assert (first["version"], second["version"]) == ("1", "2")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    evals = client.search_runs(
        [client.get_experiment_by_name("ptr-test").experiment_id],
        filter_string=f"tags.`ptr.run_id` = '{second['run_id']}' and tags.`ptr.stage` = 'eval'",
    )
    assert len(evals) == 2 and all(r.data.tags.get("ptr.reused") for r in evals)
    (trained,) = [r for r in evals if r.data.tags["ptr.eval_name"] == "trained"]
    assert trained.info.run_name == "eval trained · ptr-tiny v2"  # the new version, same weights


def test_compare_reads_both_runs_back_from_mlflow(finished, monkeypatch):
    """``ptr compare`` regenerates the table, metrics.json and the figure from MLflow alone."""
    from ptr.tracking.compare import compare, read_rows

    result, tmp = finished
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    out = compare("ptr-test", None, tmp / "report")
    rows = read_rows(tmp / "report" / "metrics.json")
    assert {(r["model"], r["round"]) for r in rows} == {
        (m, k) for m in ("base", "tiny", "again") for k in (1, 2, 3)
    }
    assert all(r["n"] == 3 and r["task"] == "arith" for r in rows)
    later = [r for r in rows if r["round"] > 1]
    assert all(r["fixed"] + r["broken"] <= r["n"] for r in later)
    tiny = {r["round"]: r for r in rows if r["model"] == "tiny"}
    again = {r["round"]: r for r in rows if r["model"] == "again"}
    assert tiny == {k: {**r, "model": "tiny"} for k, r in again.items()}  # reused: the same answers
    assert (
        "| arith | base | 3 |" in out["table"] and (tmp / "report" / "score_vs_round.png").stat().st_size > 0
    )
    assert out["run_id"]


@pytest.mark.slow  # a browser beside an MLflow server: about a minute, in make test-slow
@pytest.mark.skipif(
    mlflow_ui.chromium() is None, reason="no chromium on this machine (apt-get install chromium)"
)
def test_the_mlflow_ui_shows_pipeline_runs_side_by_side(finished, tmp_path):
    """In a real browser (headless Chromium): the experiment's link opens on its runs, whose table
    lists the two pipeline runs by name with their headline figures as columns, no row expanded.
    MLflow 3.17 decides what an experiment opens on by the UI's workflow switch (GenAI by default),
    so the link carries ``workflowType=machine_learning`` (mlflow/server/js: useExperimentKind)."""
    import mlflow

    result, tmp = finished
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("ptr-test")
    with mlflow_ui.mlflow_server(uri) as url:
        browser = mlflow_ui.Browser()
        try:
            page = mlflow_ui.runs_page(url, experiment.experiment_id)
            browser.open(page, until="Run Name")  # the runs table, not the GenAI overview
            mlflow_ui.show_columns(
                browser, experiment.experiment_id, ["metrics.candidate.arith.round3", "params.train.layout"]
            )
            text = browser.open(None, until="candidate.arith")
            for run in (result, result["again"]):
                assert f" {run['registration']['run_id']}" in text  # "tiny <id>", "again <id>"
            assert "train.layout" in text and "\nptr\n" in text
            browser.screenshot(tmp_path / "runs.png")
        finally:
            browser.close()
    assert (tmp_path / "runs.png").stat().st_size > 10_000
