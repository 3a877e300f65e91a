"""Checkpoints that survive SIGKILL, and the final Hugging Face export.

Layout under ``<output_path>/<save_name>/``::

    checkpoints/step-00000040/   complete checkpoints (``trainer_state.json`` is written last)
        ds/                      DeepSpeed checkpoint: module, optimizer, scheduler (--save_optimizer)
        model.pt                 the module's weights alone (without --save_optimizer)
        rng-00000.pt …           each rank's RNG states
        trainer_state.json       step, data position, world size, scheduler, config hash
    checkpoints/.step-00000050.tmp/   being written; ignored, and removed by the next run
    final/                       the exported model (safetensors, config, tokenizer, chat template)

Every rank writes its part into the temporary folder; after a barrier rank 0 writes
``trainer_state.json`` and renames the folder into place, so a checkpoint is visible only once whole.
(The output path must be shared by all nodes, as a PVC is on a cluster.)
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ptr.errors import PtrError
from ptr.files import write_json

STATE_FILE = "trainer_state.json"
DS_TAG = "ds"
STEP_RE = re.compile(r"^step-(\d{8})$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``auto``: the newest complete checkpoint (None when there is none); else the given folder."""
    if resume is None:
        return None
    if resume == "auto":
        done = complete_checkpoints(run_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise PtrError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE})")
    return path


def read_state(ckpt: Path) -> dict:
    import json

    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def remove_partial(run_dir: Path) -> None:
    """Temporary folders left by a run that was killed while saving (rank 0, before training)."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for stale in root.glob(".step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


# -- RNG --------------------------------------------------------------------------------------


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- weights ----------------------------------------------------------------------------------


def _strip(state_dict: dict, prefix: str = "lm.") -> dict:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def gather_state_dict(engine) -> dict | None:
    """The trained LM's full state dict on rank 0 (None elsewhere). A collective under ZeRO-3."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if dist.get_rank() == 0 else None
    return None if state is None else _strip(state)


def params_digest(engine) -> str:
    """sha256 over this rank's view of every parameter (gathered under ZeRO-3), to compare ranks."""
    import deepspeed

    params = list(engine.module.named_parameters())
    digest = hashlib.sha256()
    with deepspeed.zero.GatheredParameters(
        [p for _, p in params], enabled=engine.zero_optimization_partition_weights()
    ):
        for name, param in sorted(params, key=lambda x: x[0]):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint_weights(path: Path) -> dict:
    """The LM weights of a checkpoint folder (fp32 from a DeepSpeed checkpoint, or model.pt), or of
    an exported model folder (model.safetensors)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(path / "model.safetensors")
    if (path / "model.pt").is_file():
        return _strip(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if (path / DS_TAG).is_dir():
        state = read_state(path)
        if state.get("zero_stage", 0) < 3 and not state.get("low_precision", False):  # full fp32 module
            module = torch.load(
                path / DS_TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
            )
            return _strip(module["module"])
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return _strip(get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG))
    raise PtrError(f"{path}: not a ptr checkpoint (no model.pt or {DS_TAG}/ inside)")


# -- save / restore ---------------------------------------------------------------------------


def save(engine, run_dir: Path, step: int, state: dict, *, save_optimizer: bool, keep: int | None) -> Path:
    """Write checkpoint ``step`` from every rank; visible only once complete. Returns its path."""
    import torch.distributed as dist

    rank = dist.get_rank()
    root = checkpoints_dir(run_dir)
    final, tmp = root / f"step-{step:08d}", root / f".step-{step:08d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    if save_optimizer:
        engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    else:
        weights = gather_state_dict(engine)
        if rank == 0:
            torch.save(weights, tmp / "model.pt")
    torch.save(rng_state(), tmp / f"rng-{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        scheduler = engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None
        write_json(tmp / STATE_FILE, {**state, "optimizer": save_optimizer, "scheduler": scheduler})
        _fsync_dir(tmp)
        if final.exists():  # a newer run re-saving a step an older attempt also reached
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        if keep:
            for old in complete_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def restore(engine, ckpt: Path, *, world_size: int) -> dict:
    """Load a checkpoint into a live engine (module, optimizer, scheduler, this rank's RNG)."""
    import torch.distributed as dist

    state = read_state(ckpt)
    if state["world_size"] != world_size:
        raise PtrError(
            f"{ckpt}: written by {state['world_size']} rank(s), resumed on {world_size}; the data order "
            "and optimizer partitions depend on the world size, so resume with the same number of ranks"
        )
    if state["optimizer"]:
        path, _ = engine.load_checkpoint(
            str(ckpt), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise PtrError(f"{ckpt}: DeepSpeed could not load the checkpoint")
    elif engine.lr_scheduler is not None and state.get("scheduler") is not None:
        engine.lr_scheduler.load_state_dict(state["scheduler"])  # weights were loaded before initialize
    engine.global_steps = state["step"]
    rng = Path(ckpt) / f"rng-{dist.get_rank():05d}.pt"
    set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
