"""Process-group setup for every way the trainer is launched.

* ``torchrun`` and the ``deepspeed`` launcher set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.
* A Kubeflow PyTorchJob sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK with one process per pod:
  LOCAL_RANK is then derived (RANK mod LOCAL_WORLD_SIZE when given, else 0).
* A plain ``python -m ptr.train`` is a world of one on a free local port.

The backend is NCCL on CUDA and gloo on the CPU (with ``DS_ACCELERATOR=cpu``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from ptr.procs import free_port


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def prepare_environment(local_rank: int | None = None) -> list[str]:
    """Fill the variables torch.distributed and DeepSpeed read; must run before deepspeed is imported.

    Returns the names it added."""
    env = os.environ
    before = set(env)
    if local_rank is not None and "LOCAL_RANK" not in env:  # the deepspeed launcher's --local_rank
        env["LOCAL_RANK"] = str(local_rank)
    if "RANK" not in env and "WORLD_SIZE" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    if "LOCAL_RANK" not in env:
        per_node = int(env.get("LOCAL_WORLD_SIZE", "0") or 0)
        env["LOCAL_RANK"] = str(int(env["RANK"]) % per_node if per_node else 0)
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "DS_ACCELERATOR" not in env:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    return sorted(set(env) - before)


def init() -> Dist:
    """Start (or join) the process group through DeepSpeed."""
    import deepspeed
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel on every new Python or
        # torch path (minutes on a busy machine). Only its inference tensor-parallel all-reduce uses it;
        # training collectives go through torch.distributed, so the build is skipped.
        # (importlib: ``import deepspeed.comm.torch as m`` would bind the torch module that
        # deepspeed.comm re-exports under that name.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    return Dist(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=f"cuda:{local_rank}" if cuda else "cpu",
    )
