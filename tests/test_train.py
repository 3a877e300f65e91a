"""`ptr train` end to end on tiny-random: DeepSpeed on the CPU (gloo), real processes.

* kill-and-resume: a run SIGKILLed at fixed points (before any checkpoint, inside a step, right after a
  checkpoint) and resumed with ``--resume auto`` after each ends with the same weights as a run never
  stopped;
* two nodes: two ``torchrun --nnodes 2`` processes on 127.0.0.1 agree on losses and parameters, and
  export a model that ``ptr refine`` loads;
* LoRA from scratch (merged export) and from a checkpoint (adapter export).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptr.prompts import REFINE_PROMPT
from ptr.train.checkpoint import load_checkpoint_weights
from tests.conftest import REPO
from tests.support.procs import free_port

STEPS = 12  # crosses the 11-step epoch of the corpus below, so resume also crosses an epoch boundary
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
FP32_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01}},
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_num_steps": 3,
            "warmup_type": "linear",
            "total_num_steps": "auto",
            "warmup_max_lr": "auto",
        },
    },
    "zero_optimization": {"stage": 2},
    "bf16": {"enabled": False},
}


def train_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ptr", "train", *map(str, args)]


def run_train(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_cmd(*args),
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def done_line(stdout: str) -> dict:
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith('{"event": "done"')]
    assert lines, stdout[-2000:]
    return lines[-1]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_weight_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_path):
    from ptr.models import load_tokenizer
    from tests.support.thought_shards import write_corpus

    return write_corpus(
        tmp_path_factory.mktemp("corpus") / "c", load_tokenizer(tiny_path), n_docs=48, pack_to=160
    )


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_path):
    """Shards written by `ptr encode` (its Python entry) from thought records, as the pipeline makes them."""
    from ptr.encode import EncodeConfig, encode
    from tests.support.thought_shards import arithmetic_example

    work = tmp_path_factory.mktemp("encoded")
    rng = random.Random(0)
    with open(work / "thoughts.jsonl", "w") as f:
        for i in range(40):
            question, thoughts, answer = arithmetic_example(rng)
            record = {
                "id": f"q{i}",
                "query": question,
                "thoughts": [
                    {"round": t, "model": "weak", "text": text} for t, text in enumerate(thoughts, 1)
                ],
                "answer": {"model": "strong", "text": answer},
                "kept": True,
            }
            f.write(json.dumps(record) + "\n")
    cfg = EncodeConfig(tokenizer_path=tiny_path, output_path=str(work), input=str(work / "thoughts.jsonl"),
                       corpus_name="thoughts", max_length=256, merge_data=True, num_proc=1)  # fmt: skip
    encode(cfg)
    return work / "thoughts"


@pytest.fixture(scope="module")
def fp32_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "fp32.json"
    path.write_text(json.dumps(FP32_CONFIG))
    return path


@pytest.fixture(scope="module")
def common(corpus, fp32_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return ["--model_path", "tiny-random", "--data_path", corpus, "--output_path", out,
            "--deepspeed_config_path", fp32_config, "--seed", 7]  # fmt: skip


@pytest.fixture(scope="module")
def reference(common):
    """An uninterrupted run, started in the background so other runs overlap with it."""
    out = Path(common[5])
    log = open(out / "reference.log", "w")  # noqa: SIM115 (closed when the run is awaited)
    proc = subprocess.Popen(
        train_cmd(*common, "--save_name", "reference", "--max_steps", STEPS, "--save_steps", 2),
        stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO, start_new_session=True,
    )  # fmt: skip

    def result() -> Path:
        if proc.wait(timeout=600) != 0:
            raise AssertionError((out / "reference.log").read_text()[-4000:])
        log.close()
        return out / "reference"

    yield result
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Where the killed run is stopped, in order (one run killed three times, resumed after each), and the
# step its next run must resume from. Checkpoints every 2 steps.
KILL_POINTS = {
    "early": 0,  # after step 1, before any checkpoint: the next run starts fresh
    "mid_step": 4,  # as step 5 is logged, so inside step 6: back to checkpoint 4, steps 5 and 6 redone
    "after_checkpoint": 8,  # as soon as checkpoint 8 is complete: nothing is redone
}


def _kill_due(point: str, run_dir: Path) -> bool:
    if point == "after_checkpoint":
        return (run_dir / "checkpoints" / "step-00000008" / "trainer_state.json").is_file()
    path = run_dir / "metrics.jsonl"
    return path.exists() and path.read_text().count("\n") >= {"early": 1, "mid_step": 5}[point]


@pytest.fixture(scope="module")
def kill_chain(common, reference):
    """One run SIGKILLed at each of KILL_POINTS in turn, resumed with ``--resume auto`` after each,
    and finally left to finish: per point, what the run had logged when killed and where the next run
    resumed. One chain of runs shares the set-up cost among the three points; it starts after the
    reference run (``reference``), so the two overlap."""
    out = Path(common[5])
    run_dir = out / "killed"
    args = [*common, "--save_name", "killed", "--max_steps", STEPS, "--save_steps", 2]
    seen, resume = {}, []
    for point in [*KILL_POINTS, None]:
        log_path = out / f"killed-{point or 'last'}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                train_cmd(*args, *resume), stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO,
                start_new_session=True,
            )  # fmt: skip
            try:
                deadline = time.time() + 600
                while point and time.time() < deadline and proc.poll() is None:
                    if _kill_due(point, run_dir):
                        os.killpg(proc.pid, signal.SIGKILL)
                        break
                    time.sleep(0.005)
            finally:
                returncode = proc.wait(timeout=600)
        text = log_path.read_text()
        if seen:  # where this run picked up after the previous kill
            previous = list(seen.values())[-1]
            previous["resumed_at"] = (
                int(text.split(" at step ")[1].split()[0]) if "resumed from" in text else 0
            )
        if point is None:
            assert returncode == 0, text[-4000:]
            break
        seen[point] = {"returncode": returncode, "logged": metrics(run_dir), "log": text}
        resume = ["--resume", "auto"]
    return seen


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_a_fixed_point_resumes_from_its_last_checkpoint(kill_chain, reference, point):
    got = kill_chain[point]
    assert got["returncode"] == -signal.SIGKILL, (
        f"the run ended before the {point} kill:\n{got['log'][-2000:]}"
    )
    steps = [r["step"] for r in got["logged"]]
    if point == "early":
        assert steps == [1]
    elif point == "mid_step":
        assert steps == [1, 2, 3, 4, 5]  # killed within step 6, not between steps
    else:
        assert steps[-1] in (8, 9)
    assert got["resumed_at"] == KILL_POINTS[point]
    # What the killed run logged is what the uninterrupted run logged at the same steps.
    want = {r["step"]: r for r in metrics(reference())}
    for r in got["logged"]:
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], abs=1e-6), r["step"]


def test_killed_three_times_ends_where_an_uninterrupted_run_ends(kill_chain, reference, common):
    run_dir = Path(common[5]) / "killed"
    ref = reference()
    assert max_weight_diff(ref / "final", run_dir / "final") <= 1e-6
    got, want = metrics(run_dir), metrics(ref)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # steps redone after a kill appear once
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == pytest.approx(
            b["lr"], abs=1e-12
        )


def test_reference_run_exports_a_model_refine_loads(reference, tiny_path):
    from transformers import AutoModelForCausalLM

    from ptr.inference import SamplingParams
    from ptr.inference.hf import TransformersBackend

    run_dir = reference()
    final = run_dir / "final"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "ptr_train.json",
    ):
        assert (final / name).is_file(), name
    # Tied embeddings survive: one tensor in the file, one parameter in the loaded model.
    weights = load_file(final / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    base = load_file(Path(tiny_path) / "model.safetensors")
    assert (weights["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]).abs().max() > 1e-3

    backend = TransformersBackend(str(final), dtype="float32")
    [completion] = backend.generate(
        [[{"role": "user", "content": "What is 3 * 4?"}]], SamplingParams(max_new_tokens=5)
    )
    assert completion.completion_tokens > 0

    records = metrics(run_dir)
    assert len(records) == STEPS
    for key in ("loss", "nll", "consistency", "confidence", "lr", "grad_norm", "tokens_per_s", "step_time"):
        assert all(isinstance(r[key], float) for r in records), key
    assert records[-1]["nll"] < records[0]["nll"]
    assert (run_dir / "loss.png").stat().st_size > 1000
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == [
        f"step-{s:08d}" for s in range(2, STEPS, 2)
    ]  # the last step is the export, not a checkpoint


def test_two_nodes_agree_on_losses_and_parameters(encoded, tmp_path):
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "ptr.train", "--model_path", "tiny-random", "--data_path", str(encoded),
            "--output_path", str(tmp_path), "--save_name", "two", "--max_steps", "4", "--save_steps", "2",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    rank0, rank1 = (done_line(out) for out, _ in outputs)
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["loss"] == rank1["loss"]
    assert rank0["params_sha256"] == rank1["params_sha256"]
    assert "2 rank(s)" in outputs[0][1] and "another tokenizer" not in outputs[0][1]
    records = metrics(tmp_path / "two")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["loss"] == rank0["loss"]
    # Each step's tokens are summed over both ranks: more than either rank's micro-batches hold alone.
    assert all(r["tokens"] > 0 for r in records)
    assert "loss weights λ1,λ2,λ3 = 0.8,0.1,0.1 from the corpus" in outputs[0][1]  # encode's ptr weights
    final = tmp_path / "two" / "final"
    provenance = json.loads((final / "ptr_train.json").read_text())
    assert provenance["params_sha256"] == rank0["params_sha256"]
    # What evaluation and serving need to present the model with what it was trained on.
    assert provenance["refine_prompt"] == REFINE_PROMPT and provenance["loss_weights"] == [0.8, 0.1, 0.1]
    assert provenance["layout"]["kind"] == "ptr_chat" and provenance["layout"]["chat_template"] is True
    from ptr.models import load_tokenizer

    eos = json.loads((final / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    # the chat template's end of turn, where trained answers end
    assert load_tokenizer(final).convert_tokens_to_ids("<|im_end|>") in eos

    from tests.conftest import run_ptr

    refined = run_ptr("refine", "--model_path", tmp_path / "two" / "final", "--rounds", "2",
                      "--question", "What is 6 * 7?", "--max_new_tokens", "4", "--dtype", "float32")  # fmt: skip
    assert refined.returncode == 0, refined.stderr[-2000:]
    assert "Round 2" in refined.stdout


def threads_after_train(stdout: str) -> list[str]:
    """The threads tests/support/train_then_threads.py found running once training had returned."""
    [threads] = [json.loads(x)["threads"] for x in stdout.splitlines() if "threads_after_train" in x]
    assert threads, stdout[-2000:]  # the main thread at least: the probe read /proc
    return [t for t in threads if "gloo" in t or "tcpstore" in t]


@pytest.fixture(scope="module")
def qa_z3_run(corpus, fp32_config, tmp_path_factory):
    """One short run carries two checks: ZeRO-3 with LoRA, ``ptr train``'s ``main`` in the process
    (tests/support/train_then_threads.py), on a copy of the corpus whose meta.json says it was encoded
    as qa (λ = 1,0,0). Returns the finished process, its output folder and the corpus copy."""
    out = tmp_path_factory.mktemp("qa-z3")
    qa = out / "qa"
    shutil.copytree(corpus, qa)
    meta = json.loads((qa / "meta.json").read_text())
    (qa / "meta.json").write_text(json.dumps({**meta, "loss_weights": [1.0, 0.0, 0.0]}))
    config = {**json.loads(fp32_config.read_text()), "zero_optimization": {"stage": 3}}
    (out / "z3.json").write_text(json.dumps(config))
    args = ["--model_path", "tiny-random", "--data_path", qa, "--output_path", out, "--save_name", "z3",
            "--deepspeed_config_path", out / "z3.json", "--max_steps", 2, "--use_lora"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, REPO / "tests/support/train_then_threads.py", *map(str, args)],
        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, out / "z3", qa


def test_an_answer_only_corpus_trains_with_its_own_weights(qa_z3_run):
    """A corpus encoded as qa carries λ = 1,0,0 in its meta.json; without --loss_weights the run uses
    them, so its loss is its NLL term alone."""
    proc, run_dir, qa = qa_z3_run
    assert f"loss weights λ1,λ2,λ3 = 1,0,0 from the corpus ({qa}/meta.json)" in proc.stderr
    records = metrics(run_dir)
    assert len(records) == 2
    assert all(r["loss"] == pytest.approx(r["nll"], rel=1e-6) and r["consistency"] != 0 for r in records)
    assert json.loads((run_dir / "final" / "ptr_train.json").read_text())["loss_weights"] == [1, 0, 0]


def test_a_finished_run_leaves_no_process_group_alive(qa_z3_run):
    """ZeRO-3 with LoRA, ``ptr train``'s ``main`` in the process: once it returns, no gloo or TCPStore
    thread is left. Before ``ptr.train.dist.shutdown`` this run left two groups' threads running (DeepSpeed's
    cached world group, ZeRO-3's forward stack and lru_cache keeping the engine, torch.distributed.nn's
    default arguments), for interpreter finalization to destroy; two ranks then aborted now and then after
    a run that succeeded ("terminate called without an active exception", exit -6)."""
    proc, _, _ = qa_z3_run
    assert done_line(proc.stdout)["step"] == 2
    assert threads_after_train(proc.stdout) == []


def test_lora_from_scratch_and_from_a_checkpoint(common, reference, tiny_path, monkeypatch):
    out = Path(common[5])
    mlflow_uri = (out / "mlruns").as_uri()  # a local MLflow store: with a tracking URI, metrics go to MLflow
    mlflow_env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "PTR_EXPERIMENT": "lora",
    }
    full_ckpt = reference() / "checkpoints" / "step-00000004"
    runs = {  # both at once: from scratch (adapter kept apart), and from a full fine-tuning checkpoint (merged)
        "scratch": (["--use_lora", "--save_lora_adapter"], mlflow_env),
        "from_ckpt": (["--use_lora", "--load_ckpt_path", full_ckpt], {}),
    }
    procs = {
        name: subprocess.Popen(
            train_cmd(*common, "--save_name", name, "--max_steps", 3, *flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**ENV, **env},
            cwd=REPO,
        )  # fmt: skip
        for name, (flags, env) in runs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-4000:]}"

    base = load_file(Path(tiny_path) / "model.safetensors")
    adapter = out / "scratch" / "final"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "model.safetensors").exists()
    from ptr.models import load_model

    model, _ = load_model(str(adapter), dtype="float32", device="cpu")  # transformers loads it through peft
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert json.loads((adapter / "ptr_train.json").read_text())["lora_merged"] is False

    merged = load_file(out / "from_ckpt" / "final" / "model.safetensors")
    assert merged.keys() == base.keys()  # merged: a plain model, no adapter tensors
    ckpt_weights = load_checkpoint_weights(full_ckpt)
    emb, q = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[emb], ckpt_weights[emb])  # frozen under LoRA: the checkpoint's, not the base's
    assert not torch.equal(merged[emb], base[emb])
    assert (merged[q] - ckpt_weights[q]).abs().max() > 1e-5  # LoRA's update is merged into the weight

    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("lora").experiment_id])
    assert run.info.run_name == "train" and run.data.params["use_lora"] == "True"
    for term in ("loss", "nll", "consistency", "confidence", "lr", "grad_norm", "tokens_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, term)] == [1, 2, 3], term
    assert {"loss.png", "metrics.jsonl"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_zero3_lora_two_ranks_resume_exactly(corpus, fp32_config, tmp_path):
    """ZeRO-3 shards parameters and optimizer state across ranks; resume must still be exact.

    The resumed run goes through tests/support/train_then_threads.py (``ptr train``'s ``main`` in the
    process, then the threads still running): once training returns, no process group may be left for
    interpreter finalization to destroy. This run once ended with a rank aborted after success ("terminate
    called without an active exception", exit -6): ZeRO-3 kept the groups alive past
    ``destroy_process_group`` (see ``ptr.train.dist.shutdown``)."""
    config = {**json.loads(fp32_config.read_text()), "zero_optimization": {"stage": 3}}
    (tmp_path / "z3.json").write_text(json.dumps(config))

    def two_ranks(name, *extra, entry=None):
        port, procs = free_port(), []
        for rank in (0, 1):  # a PyTorchJob's environment: no LOCAL_RANK, one process per pod
            env = {
                **ENV,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": "2",
                "RANK": str(rank),
            }
            env.pop("LOCAL_RANK", None)
            cmd = train_cmd("--model_path", "tiny-random", "--data_path", corpus, "--output_path", tmp_path,
                            "--save_name", name, "--deepspeed_config_path", tmp_path / "z3.json",
                            "--max_steps", 6, "--use_lora", *extra)  # fmt: skip
            if entry is not None:  # `python -m ptr train ARGS` → `python ENTRY ARGS`
                cmd = [sys.executable, str(entry), *cmd[4:]]
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
                )
            )
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (_, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-4000:]
        return [done_line(o) for o, _ in outs], [o for o, _ in outs]

    full, _ = two_ranks("z3", "--save_steps", 3)
    assert full[0]["params_sha256"] == full[1]["params_sha256"]
    (tmp_path / "z3b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "z3" / "checkpoints" / "step-00000003", tmp_path / "z3b" / "checkpoints" / "step-00000003"
    )
    resumed, stdouts = two_ranks(
        "z3b", "--resume", "auto", entry=REPO / "tests/support/train_then_threads.py"
    )
    assert resumed[0]["params_sha256"] == full[0]["params_sha256"]
    assert [threads_after_train(out) for out in stdouts] == [[], []]
    assert max_weight_diff(tmp_path / "z3" / "final", tmp_path / "z3b" / "final") <= 1e-6


@pytest.mark.slow
def test_data_from_and_export_to_s3(s3_store, corpus, fp32_config, tmp_path):
    """A real S3 store (SeaweedFS on 127.0.0.1): shards read from s3://, the export published to s3://."""
    import os

    from ptr import storage

    s3_env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_S3", "PTR_TRACKING"))}

    storage.publish(corpus, "s3://ptr/train-test/corpus")
    run_train("--model_path", "tiny-random", "--data_path", "s3://ptr/train-test/corpus",
              "--output_path", "s3://ptr/train-test/runs", "--save_name", "s3run", "--max_steps", 2,
              "--deepspeed_config_path", fp32_config, env=s3_env)  # fmt: skip
    back = storage.fetch("s3://ptr/train-test/runs/s3run/final", tmp_path / "back")
    assert (back / "model.safetensors").is_file() and (back / "tokenizer.json").is_file()
