"""Process-group setup for every way the trainer is launched.

* ``torchrun`` and the ``deepspeed`` launcher set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.
* A Kubeflow PyTorchJob sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK with one process per pod:
  LOCAL_RANK is then derived (RANK mod LOCAL_WORLD_SIZE when given, else 0).
* A plain ``python -m ptr.train`` is a world of one on a free local port.

The backend is NCCL on CUDA and gloo on the CPU (with ``DS_ACCELERATOR=cpu``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
from dataclasses import dataclass

from ptr.procs import free_port

WORLD_DEFAULT_MODULES = ("torch.distributed.nn.functional", "torch.distributed._shard.sharded_tensor.reshard")


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
    # Modules that bind the world group as a default argument when imported (torch.distributed.nn's
    # collectives, sharded-tensor resharding: ``group=group.WORLD``) keep it alive past its destruction
    # when first imported after it exists; imported before, their default is None (the world group at
    # call time). DeepSpeed and transformers import them during training.
    for module in WORLD_DEFAULT_MODULES:
        with contextlib.suppress(ImportError):  # the second is private: another torch may move it
            importlib.import_module(module)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    return Dist(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=f"cuda:{local_rank}" if cuda else "cpu",
    )


def shutdown() -> None:
    """Destroy the process groups now, while the interpreter is whole, and free them.

    A group is a C++ object whose gloo threads run until the last Python reference to it is dropped. Left
    to interpreter exit, that happens during finalization, and a rank then aborts now and then after a
    run that succeeded ("terminate called without an active exception", exit -6). What holds the groups
    after training: DeepSpeed's group cache (``deepspeed.utils.groups._WORLD_GROUP``, released by
    ``deepspeed.comm.destroy_process_group``, not by torch's) and ZeRO-3's forward stack
    (``parameter_offload.FWD_MODULE_STACK``, a module global that keeps the model, and through its
    hooks the engine and each parameter's ``ds_process_group``, for the life of the process) and the
    ``functools.lru_cache`` on ZeRO-3's ``PartitionedParameterCoordinator.__params_to_release``, whose
    class-level cache keys on the coordinator and the model's modules (DeepSpeed 0.19)."""
    import deepspeed.comm
    import torch.distributed as torch_dist

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    elif torch_dist.is_initialized():  # joined before this process imported DeepSpeed
        torch_dist.destroy_process_group()
    zero3 = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    if zero3 is not None:  # no forward is running: the stack holds only the top modules it never pops
        zero3.FWD_MODULE_STACK.clear()
    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    if coordinator is not None:  # its methods' class-level lru_caches are keyed by (and keep) instances
        for method in vars(coordinator.PartitionedParameterCoordinator).values():
            for cache in _lru_caches(method):
                cache.cache_clear()
    gc.collect()  # the engine, model and groups sit in reference cycles (hooks, closures)


def _lru_caches(function, depth: int = 3) -> list:
    """The ``functools.lru_cache`` wrappers inside a (possibly decorated) function: DeepSpeed wraps the
    cache in its NVTX decorator, a closure without ``__wrapped__``."""
    if hasattr(function, "cache_clear"):
        return [function]
    if depth == 0 or not callable(function):
        return []
    inner = [cell.cell_contents for cell in getattr(function, "__closure__", None) or ()]
    return [cache for f in inner for cache in _lru_caches(f, depth - 1)]
