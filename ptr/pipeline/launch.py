"""Training on one machine: ``torchrun`` with N local processes on the gloo backend (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ptr.errors import PtrError

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(train_args: list[str], nproc: int, module: str = "ptr.train") -> list[str]:
    """``--standalone`` picks a free rendezvous port on 127.0.0.1, so parallel runs do not collide."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "-m",
        module,
        *map(str, train_args),
    ]


def local_env(nproc: int) -> dict[str, str]:
    """CPU training: DeepSpeed's CPU accelerator (gloo), the cores shared among the processes."""
    cores = os.cpu_count() or 1
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // nproc))),
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    # A source checkout (not an installed package) must be importable in the spawned ranks too.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_local(train_args: list[str], nproc: int, module: str = "ptr.train") -> None:
    """Run the trainer under torchrun; raise with the exit status when any rank fails."""
    if nproc < 1:
        raise PtrError(f"nproc_per_node must be ≥ 1, got {nproc}")
    command = torchrun_command(train_args, nproc, module)
    print("running:", " ".join(command), file=sys.stderr, flush=True)
    code = subprocess.call(command, env=local_env(nproc))
    if code != 0:
        raise PtrError(f"training failed: torchrun exited with status {code}")
