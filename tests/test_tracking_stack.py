"""Integration: the local stack (SeaweedFS S3 + MLflow server with artifacts proxied to S3) on free
127.0.0.1 ports, one per module: runs land in S3, versions are registered, promotion and refusal are
decided by their evaluations, and models load back by alias. Stopped by pid; nothing may survive."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ptr.devstack import Stack
from tests.conftest import run_ptr
from tests.support.eval_runs import log_eval_run
from tests.support.procs import free_port

NAME = "ptr-tiny"


@pytest.fixture(scope="module")
def stack(tiny_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    stack = Stack(root / "stack")
    with pytest.MonkeyPatch.context() as mp:
        env = stack.up(mlflow_port=free_port(), s3_port=free_port())
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("PTR_TRACKING", "PTR_RUN_ID", "PTR_MODEL_VERSION", "RANK"):
            mp.delenv(key, raising=False)
        mp.setenv("PTR_LOCAL_DIR", str(root / ".ptr"))  # nothing may fall back to a local store
        mp.setenv("PTR_CACHE", str(root / "cache"))  # tiny_path was built before this
        mp.setenv("PTR_EXPERIMENT", "stack-test")
        pids = stack.running()
        try:
            yield stack
        finally:
            stack.down()
    assert not stack.running()
    for pid in pids.values():  # the whole process group of each service is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not (root / ".ptr").exists()


def _listening(pids: set[int]) -> list[str]:
    """host:port of every TCP socket in LISTEN state held by ``pids`` (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                addr, port = fields[1].split(":")
                if width == 8:
                    host = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    host = "v6:" + addr
                found.append(f"{host}:{int(port, 16)}")
    return found


def _group(pgid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.add(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def _s3_keys(bucket: str = "mlflow") -> list[str]:
    from ptr import storage

    pages = storage.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_stack_is_loopback_only_and_up_is_idempotent(stack):
    running = stack.running()
    assert set(running) == {"weed", "mlflow"}
    addresses = _listening(set().union(*(_group(pid) for pid in running.values())))
    assert len(addresses) >= 7  # SeaweedFS master, volume, filer, S3 (+ gRPC) and MLflow
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    env = dict(os.environ)
    again = stack.up()
    assert stack.running() == running
    assert all(env[k] == v for k, v in again.items())


def test_run_artifacts_land_in_s3(stack, tmp_path):
    from ptr.tracking import stage_run

    report = tmp_path / "summary.json"
    report.write_text('{"examples": 3}')
    with stage_run("encode", {"max_length": 64}) as run:
        run.log_artifact(report, "encode")
        run.log_dataset(report, name="summary")
    keys = [k for k in _s3_keys() if run.run_id in k]
    assert [k for k in keys if k.endswith("encode/summary.json")], keys
    from ptr import storage

    (key,) = [k for k in keys if k.endswith("encode/summary.json")]
    assert storage.fetch(f"s3://mlflow/{key}").read_text() == '{"examples": 3}'


def _variant(tiny_path: str, dest: Path, scale: float) -> Path:
    """A copy of tiny-random with its embedding scaled: a different model with the same shape."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_path, dest)
    weights = load_file(dest / "model.safetensors")
    key = next(k for k in weights if "embed" in k)
    weights[key] = weights[key] * scale
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _scores(p: list[float], n: int, seed: int) -> list[list[float]]:
    """Per-question 0/1 results for each round: round r is right with probability p[r], and a later
    round keeps every earlier success (so models differ consistently, question by question)."""
    u = np.random.default_rng(seed).random(n)
    return [(u < q).astype(float).tolist() for q in p]


def _embedding(model) -> np.ndarray:
    return model.get_input_embeddings().weight.detach().numpy().copy()


def test_register_promote_refuse_and_load_by_alias(stack, tiny_path, tmp_path, capsys):
    from mlflow import MlflowClient

    from ptr.models import load_model
    from ptr.tracking.cli import promote_main, register_main

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    gate = ["--name", NAME, "--primary", "gsm8k.round3", "--guard", "mmlu.round1:0.02", "--n_boot", "2000"]
    mmlu = _scores([0.5], 150, seed=9)

    # v1 through the real CLI entry point; the first evaluated model becomes champion.
    proc = run_ptr("register", "--model_path", tiny_path, "--name", NAME, "--run_id", "flow-1")
    assert proc.returncode == 0, proc.stderr
    assert f"models:/{NAME}/1" in proc.stdout
    log_eval_run(f"models:/{NAME}@candidate", {"gsm8k": _scores([0.2, 0.25, 0.3], 300, seed=1), "mmlu": mmlu})
    assert promote_main(gate) == 0

    # v2: clearly better on the primary metric, guard held → promoted.
    v2 = _variant(tiny_path, tmp_path / "v2", 1.5)
    assert register_main(["--model_path", str(v2), "--name", NAME, "--run_id", "flow-2"]) == 0
    log_eval_run(f"models:/{NAME}@candidate", {"gsm8k": _scores([0.3, 0.45, 0.6], 300, seed=1), "mmlu": mmlu})
    assert promote_main(gate) == 0

    # v3: worse than the champion (v2) → kept, exit 3, and it says why.
    v3 = _variant(tiny_path, tmp_path / "v3", 0.5)
    assert register_main(["--model_path", str(v3), "--name", NAME, "--run_id", "flow-3"]) == 0
    log_eval_run(f"models:/{NAME}@candidate", {"gsm8k": _scores([0.3, 0.4, 0.45], 300, seed=1), "mmlu": mmlu})
    capsys.readouterr()
    assert promote_main(gate) == 3
    err = capsys.readouterr().err
    assert "champion kept: not better on gsm8k.round3" in err

    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "3"
    tags = {v: client.get_model_version(NAME, v).tags for v in ("1", "2", "3")}
    assert [tags[v]["ptr.run_id"] for v in ("1", "2", "3")] == ["flow-1", "flow-2", "flow-3"]
    assert (
        tags["2"]["ptr.promotion.decision"] == "promoted"
        and tags["2"]["ptr.promotion.champion_before"] == "1"
    )
    assert float(tags["2"]["ptr.promotion.lo"]) > 0
    assert tags["3"]["ptr.promotion.decision"] == "kept" and "not better" in tags["3"]["ptr.promotion.reason"]
    assert tags["1"]["ptr.promotion.replaced_by"] == "2"

    # The weights live in S3, and each alias loads its own version back.
    assert len([k for k in _s3_keys() if k.endswith("model/model.safetensors")]) == 3
    champion, _ = load_model(f"models:/{NAME}@champion", dtype="float32")
    candidate, _ = load_model(f"models:/{NAME}@candidate", dtype="float32")
    base, _ = load_model(tiny_path, dtype="float32")
    np.testing.assert_allclose(_embedding(champion), _embedding(base) * 1.5, rtol=1e-6)
    np.testing.assert_allclose(_embedding(candidate), _embedding(base) * 0.5, rtol=1e-6)
