"""The training recipe: one readable flow from config to exported model.

    setup    process group, DeepSpeed config, data, model (+ LoRA), engine, resume
    loop     for each optimizer step: grad-accumulation micro-batches → engine.backward/step → log → save
    finish   export <output_path>/<save_name>/final, loss plot, summary

The data position, scheduler and RNG states are all functions of the optimizer step plus what a
checkpoint restores, so a resumed run continues with exactly the batches and random numbers an
uninterrupted one would have used.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from pathlib import Path

from ptr.train.config import TrainConfig
from ptr.train.metrics import log_stderr

TERMS = ("loss", "nll", "consistency", "confidence")


def run(cfg: TrainConfig) -> dict:
    from ptr.train import dist as ptr_dist

    ptr_dist.prepare_environment()
    from ptr.train import ds_config

    ds_raw, ds_source = ds_config.load(cfg.deepspeed_config_path)  # bad configs fail before the heavy work
    dist = ptr_dist.init()
    try:
        return _run(cfg, dist, ds_raw, ds_source)
    finally:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _run(cfg: TrainConfig, dist, ds_raw: dict, ds_source: str) -> dict:
    import deepspeed
    import numpy as np
    import torch
    from deepspeed.utils import logger as ds_logger
    from tqdm import tqdm

    from ptr import storage
    from ptr.encode.shards import ShardDataset
    from ptr.errors import PtrError
    from ptr.models import default_dtype, resolve
    from ptr.tracking import stage_run
    from ptr.train import checkpoint, ds_config, export, model
    from ptr.train.data import Batches, max_token_id
    from ptr.train.metrics import MetricsLog, plot

    ds_logger.setLevel("WARNING")
    say = log_stderr if dist.is_main else (lambda _msg: None)
    run_dir = _local_run_dir(cfg)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- data ---------------------------------------------------------------------------------
    dataset = ShardDataset(
        storage.fetch(cfg.data_path), seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
    )
    micro, accum = ds_config.batch_sizes(ds_raw, dist.world_size, ds_source)

    # -- model --------------------------------------------------------------------------------
    model_path = resolve(cfg.model_path)
    attn = model.pick_attention(cfg.attn_implementation, dist.device.startswith("cuda"))
    lm, tokenizer = model.load_causal_lm(model_path, attn)
    vocab = lm.get_input_embeddings().weight.shape[0]
    if (top := max_token_id(dataset)) >= vocab:
        raise PtrError(f"{cfg.data_path}: token id {top} does not fit the model's vocabulary of {vocab}")
    batches = Batches(dataset, micro, accum, tokenizer.pad_token_id)
    total_steps = cfg.max_steps or cfg.max_epochs * batches.steps_per_epoch
    ds = ds_config.resolve(
        ds_raw,
        world_size=dist.world_size,
        total_steps=total_steps,
        on_cpu=dist.device == "cpu",
        bf16_native=default_dtype(dist.device) == torch.bfloat16,
    )
    ds_hash = ds_config.config_hash(ds)

    resume_from = checkpoint.find_resume(run_dir, cfg.resume)
    resume_state = checkpoint.read_state(resume_from) if resume_from else None
    start_weights = None  # (state dict, where from): weights to start from, when not a DeepSpeed resume
    if resume_state is not None and not resume_state["optimizer"]:
        start_weights = checkpoint.load_checkpoint_weights(resume_from), str(resume_from)
    elif cfg.load_ckpt_path and resume_from is None:
        start_weights = checkpoint.load_checkpoint_weights(Path(cfg.load_ckpt_path)), cfg.load_ckpt_path
    lora_weights = start_weights is not None and model.holds_lora(start_weights[0])
    if start_weights is not None and not lora_weights:
        model.load_weights(lm, *start_weights)
    lora = model.lora_config(cfg.lora_config_path, model_path) if cfg.use_lora else None
    if lora is not None:
        lm = model.add_lora(lm, lora)
    if lora_weights:
        model.load_weights(lm, *start_weights)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            lm.enable_input_require_grads()
    objective = model.PackedObjective(lm, cfg.loss_weights, cfg.beta_power)

    # -- engine -------------------------------------------------------------------------------
    engine, _, _, _ = deepspeed.initialize(
        model=objective,
        model_parameters=[p for p in objective.parameters() if p.requires_grad],
        config=ds,
    )
    start_step = 0
    if dist.is_main:
        checkpoint.remove_partial(run_dir)
    if resume_from is not None:
        state = checkpoint.restore(engine, resume_from, world_size=dist.world_size)
        start_step = state["step"]
        say(
            f"resumed from {resume_from} at step {start_step}"
            + (
                ""
                if state["optimizer"]
                else " (weights only: the checkpoint has no optimizer state, so the run is not an exact continuation)"
            )
        )
    elif cfg.resume == "auto":
        say(f"no complete checkpoint under {checkpoint.checkpoints_dir(run_dir)}; starting fresh")

    params = {
        **{k: v for k, v in cfg.model_dump().items() if v is not None},
        "world_size": dist.world_size,
        "total_steps": total_steps,
        "micro_batch": micro,
        "grad_accum": accum,
        "attn_implementation": attn,
        "deepspeed_config_source": ds_source,
        "deepspeed_config_hash": ds_hash,
    }
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from ptr.jsonl import write_json

        write_json(
            run_dir / "config.json", {"train": cfg.model_dump(), "deepspeed": ds, "deepspeed_hash": ds_hash}
        )
        say(f"deepspeed config {ds_source} (sha256 {ds_hash}): {json.dumps(ds, sort_keys=True)}")
        say(
            f"{len(dataset)} sequences, {dist.world_size} rank(s) × micro-batch {micro} × accumulation {accum}; "
            f"{batches.steps_per_epoch} steps/epoch, {total_steps} steps; attention {attn}; "
            f"{'LoRA' if lora else 'full'} fine-tuning"
        )

    tracking = stage_run("train", params) if dist.is_main else contextlib.nullcontext(_NullTracker())
    with tracking as tracker:
        metrics = None
        if dist.is_main:
            write = lambda line: tqdm.write(line, file=sys.stdout)  # noqa: E731 (keeps the bar intact)
            metrics = MetricsLog(run_dir / "metrics.jsonl", tracker, resume_step=start_step, write=write)
        bar = tqdm(
            total=total_steps, initial=start_step, disable=not dist.is_main, file=sys.stderr, desc="train"
        )

        # -- loop -----------------------------------------------------------------------------
        record = {}
        for step in range(start_step, total_steps):
            record = train_step(engine, batches.for_step(step), dist.world_size)
            done = step + 1
            position = batches.position(done)
            record.update(step=done, total_steps=total_steps, epoch=position.epoch)
            if metrics is not None:
                metrics.log(record)
            bar.update(1)
            end_of_epoch = done % batches.steps_per_epoch == 0
            if (cfg.save_steps and done % cfg.save_steps == 0 and done < total_steps) or (
                cfg.save_epochs and end_of_epoch and (done // batches.steps_per_epoch) % cfg.save_epochs == 0
            ):
                state = {
                    "step": done,
                    "epoch": position.epoch,
                    "index_in_epoch": position.index,
                    "world_size": dist.world_size,
                    "zero_stage": engine.zero_optimization_stage(),
                    "low_precision": bool(engine.bfloat16_enabled() or engine.fp16_enabled()),
                    "deepspeed_hash": ds_hash,
                    "loss": record["loss"],
                }
                path = checkpoint.save(
                    engine, run_dir, done, state, save_optimizer=cfg.save_optimizer, keep=cfg.keep_checkpoints
                )
                say(f"checkpoint {path}")
        bar.close()

        # -- finish ---------------------------------------------------------------------------
        digest = checkpoint.params_digest(engine)
        weights = gather_for_export(engine)
        final = run_dir / "final"
        if dist.is_main:
            lm_config = objective.causal_lm().config

            def build():  # the same architecture, for weights gathered under ZeRO-3
                from transformers import AutoModelForCausalLM

                rebuilt = AutoModelForCausalLM.from_config(lm_config, attn_implementation=attn)
                return model.add_lora(rebuilt, lora) if lora is not None else rebuilt

            trained = export.rebuild(build, weights) if weights is not None else objective.lm
            provenance = {
                "base_model": cfg.model_path,
                "data_path": cfg.data_path,
                "data_meta": dataset.meta,
                "steps": total_steps,
                "loss_weights": list(cfg.loss_weights),
                "beta": cfg.beta,
                "lora": bool(lora),
                "lora_merged": bool(lora) and not cfg.save_lora_adapter,
                "deepspeed_hash": ds_hash,
                "params_sha256": digest,
            }
            export.export(
                trained, tokenizer, final, merge_lora=not cfg.save_lora_adapter, provenance=provenance
            )
            storage.publish(final, f"{cfg.output_path.rstrip('/')}/{cfg.save_name}/final")
            png = plot(metrics.records(), run_dir / "loss.png")
            for artifact in (png, run_dir / "metrics.jsonl", run_dir / "config.json"):
                if artifact is not None and Path(artifact).exists():
                    tracker.log_artifact(artifact)
            say(f"exported {final}")
    summary = {
        "event": "done",
        "rank": dist.rank,
        "step": total_steps,
        "loss": record.get("loss"),
        "params_sha256": digest,
        "final": str(final),
    }
    print(json.dumps(summary), flush=True)
    return summary


def train_step(engine, micro_batches, world_size: int) -> dict:
    """One optimizer step: forward/backward each micro-batch, then DeepSpeed steps at the boundary."""
    import torch
    import torch.distributed as dist

    start = time.perf_counter()
    sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
    for batch in micro_batches:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        out = engine(**batch)
        engine.backward(out["loss"])
        engine.step()  # applies the update only after the last micro-batch of the step
        terms = [float(out[k].detach()) for k in TERMS]
        sums += torch.tensor([*terms, float((batch["doc_ids"] >= 0).sum())], dtype=torch.float64)
    dist.all_reduce(sums)  # every rank logs the same global means
    elapsed = time.perf_counter() - start
    means = (sums[: len(TERMS)] / (len(micro_batches) * world_size)).tolist()
    tokens = float(sums[-1])
    grad_norm = engine.get_global_grad_norm()
    return {
        **dict(zip(TERMS, means, strict=True)),
        "lr": float(engine.get_lr()[0]),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "tokens": int(tokens),
        "tokens_per_s": tokens / elapsed,
        "step_time": elapsed,
    }


def gather_for_export(engine):
    """Under ZeRO-3 the weights are sharded: gather them (collective); else rank 0 exports ``lm`` itself."""
    from ptr.train.checkpoint import gather_state_dict

    if engine.zero_optimization_partition_weights():
        return gather_state_dict(engine)
    return None


def _local_run_dir(cfg: TrainConfig) -> Path:
    """Where this run writes: the output path itself, or a local staging folder for s3:// outputs."""
    from ptr import storage
    from ptr.models.cache import cache_root

    if storage.is_remote(cfg.output_path):
        return cache_root() / "train-staging" / cfg.save_name
    return cfg.run_dir


class _NullTracker:
    def log_metrics(self, metrics, step=None):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass
