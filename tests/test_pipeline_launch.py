"""The local train launcher: torchrun with N processes on this machine, gloo, the cores shared."""

from __future__ import annotations

import json

import pytest

from ptr.errors import PtrError
from ptr.pipeline import launch


def test_n_local_processes_join_one_gloo_group(tmp_path):
    launch.run_local(["--out", tmp_path], nproc=2, module="tests.support.dist_probe")
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["rank"] for s in seen] == [0, 1] and {s["world"] for s in seen} == {2}
    assert {s["sum"] for s in seen} == {1.0} and {s["backend"] for s in seen} == {"gloo"}
    assert {s["DS_ACCELERATOR"] for s in seen} == {"cpu"} and [s["LOCAL_RANK"] for s in seen] == ["0", "1"]


def test_a_failing_rank_fails_the_step(tmp_path):
    with pytest.raises(PtrError, match="torchrun exited with status"):
        launch.run_local(["--out", tmp_path, "--fail_rank", "1"], nproc=2, module="tests.support.dist_probe")


def test_command_runs_the_trainer_standalone():
    command = launch.torchrun_command(["--max_steps", "2"], 3)
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "3",
        "-m",
        "ptr.train",
        "--max_steps",
        "2",
    ]
    with pytest.raises(PtrError, match="nproc_per_node must be ≥ 1"):
        launch.run_local([], 0)
