"""The training recipe: one readable flow from config to exported model.

    setup    data, model (+ LoRA), DeepSpeed engine, resume from a checkpoint
    train    for each optimizer step: micro-batches → engine.backward / engine.step → log → checkpoint
    finish   export <output_path>/<save_name>/final, loss plot, summary

The data position, scheduler and RNG states are all functions of the optimizer step plus what a
checkpoint restores, so a resumed run continues with exactly the batches and random numbers an
uninterrupted one would have used.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ptr import storage
from ptr.cache import cache_root
from ptr.encode.layout import tokenizer_hash
from ptr.encode.shards import ShardDataset
from ptr.errors import PtrError
from ptr.files import write_json
from ptr.models import default_dtype, load_tokenizer, resolve
from ptr.tracking import NullRun, stage_run
from ptr.train import checkpoint, ds_config, export, packed_model
from ptr.train import dist as ptr_dist
from ptr.train.config import TrainConfig, resolve_loss_weights
from ptr.train.data import Batches, max_token_id
from ptr.train.metrics import MetricsLog, log_stderr, plot

TERMS = ("loss", "nll", "consistency", "confidence")


def train(cfg: TrainConfig) -> dict:
    """Validate the DeepSpeed config, join the process group, train, and leave the environment as found."""
    added = ptr_dist.prepare_environment()
    try:
        ds_raw, ds_source = ds_config.load(cfg.deepspeed_config_path)  # bad configs fail before heavy work
        dist = ptr_dist.init()
        recipe = None
        try:
            recipe = Recipe(cfg, dist, ds_raw, ds_source)
            recipe.setup()
            with recipe.tracking() as tracker:  # an MLflow run on rank 0 when tracking is configured
                recipe.train(tracker)
                return recipe.finish(tracker)
        finally:
            if recipe is not None:
                recipe.close()
            recipe = None  # the last reference to the model and engine, before the groups are freed
            ptr_dist.shutdown()
    finally:
        for key in added:  # a caller's later subprocesses must not inherit a world of one
            os.environ.pop(key, None)


def train_step(engine, micro_batches, world_size: int) -> dict:
    """One optimizer step: forward and backward each micro-batch; DeepSpeed updates at the boundary."""
    import torch
    import torch.distributed as dist

    start = time.perf_counter()
    sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=engine.device)
    for batch in micro_batches:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        out = engine(**batch)
        engine.backward(out["loss"])
        engine.step()  # applies the update only after the last micro-batch of the step
        tokens = (batch["doc_ids"] >= 0).sum()
        sums += torch.stack([*(out[k].detach().double() for k in TERMS), tokens.double()])
    dist.all_reduce(sums)  # every rank logs the same global means
    elapsed = time.perf_counter() - start
    sums = sums.cpu()
    means = (sums[: len(TERMS)] / (len(micro_batches) * world_size)).tolist()
    grad_norm = engine.get_global_grad_norm()
    return {
        **dict(zip(TERMS, means, strict=True)),
        "lr": float(engine.get_lr()[0]),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "tokens": int(sums[-1]),
        "tokens_per_s": float(sums[-1]) / elapsed,
        "step_time": elapsed,
        "peak_mem_mb": peak_memory_mb(engine.device),
    }


class Recipe:
    def __init__(self, cfg: TrainConfig, dist, ds_raw: dict, ds_source: str):
        self.cfg, self.dist, self.ds_raw, self.ds_source = cfg, dist, ds_raw, ds_source
        self.say = log_stderr if dist.is_main else (lambda _msg: None)
        self.run_dir = local_run_dir(cfg)
        self.start_step, self.last = 0, {}

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        import deepspeed
        import torch
        from deepspeed.utils import logger as ds_logger

        cfg, dist = self.cfg, self.dist
        ds_logger.setLevel("WARNING")
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.dataset = ShardDataset(
            local_data(cfg.data_path, dist), seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
        )
        weights, source = resolve_loss_weights(cfg.loss_weights, self.dataset.metas, cfg.data_path)
        self.cfg = cfg = cfg.model_copy(update={"loss_weights": weights})
        self.say(f"loss weights λ1,λ2,λ3 = {','.join(f'{w:g}' for w in weights)} from {source}")
        self.micro, self.accum = ds_config.batch_sizes(self.ds_raw, dist.world_size, self.ds_source)
        self.model_path = resolve(cfg.model_path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.batches = Batches(self.dataset, self.micro, self.accum, self.tokenizer.pad_token_id)
        encoded_with = self.dataset.meta.get("tokenizer", {}).get("hash")
        if dist.is_main and encoded_with and len(encoded_with) == 64:
            if tokenizer_hash(self.tokenizer) != encoded_with:
                self.say(
                    f"warning: {cfg.data_path} was encoded with another tokenizer than {cfg.model_path}'s"
                )
        self.total_steps = cfg.max_steps or cfg.max_epochs * self.batches.steps_per_epoch
        self.ds = ds_config.resolve(
            self.ds_raw,
            world_size=dist.world_size,
            total_steps=self.total_steps,
            on_cpu=dist.device == "cpu",
            bf16_native=default_dtype(dist.device) == torch.bfloat16,
        )
        self.ds_hash = ds_config.config_hash(self.ds)

        resume_from = checkpoint.find_resume(self.run_dir, cfg.resume)
        self.objective = self._build_model(resume_from)
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.objective,
            model_parameters=[p for p in self.objective.parameters() if p.requires_grad],
            config=self.ds,
        )
        if dist.is_main:
            checkpoint.remove_partial(self.run_dir)
        if resume_from is not None:
            state = checkpoint.restore(self.engine, resume_from, world_size=dist.world_size)
            self.start_step = state["step"]
            inexact = (
                ""
                if state["optimizer"]
                else " (weights only: no optimizer state, so not an exact continuation)"
            )
            self.say(f"resumed from {resume_from} at step {self.start_step}{inexact}")
        elif cfg.resume == "auto":
            self.say(
                f"no complete checkpoint under {checkpoint.checkpoints_dir(self.run_dir)}; starting fresh"
            )
        self._describe()

    def _build_model(self, resume_from):
        """The LM (+ LoRA) with the weights this run starts from, wrapped in the objective."""
        cfg, ds = self.cfg, self.ds
        low_precision = bool(ds.get("bf16", {}).get("enabled") or ds.get("fp16", {}).get("enabled"))
        self.attn = packed_model.pick_attention(
            cfg.attn_implementation, self.dist.device.startswith("cuda"), low_precision
        )
        lm = packed_model.load_causal_lm(self.model_path, self.attn)
        vocab = lm.get_input_embeddings().weight.shape[0]
        if (top := max_token_id(self.dataset)) >= vocab:
            raise PtrError(f"{cfg.data_path}: token id {top} does not fit the model's vocabulary of {vocab}")

        start = None  # (state dict, where from), unless DeepSpeed restores the module itself
        if resume_from is not None and not checkpoint.read_state(resume_from)["optimizer"]:
            start = checkpoint.load_checkpoint_weights(resume_from), str(resume_from)
        elif cfg.load_ckpt_path and resume_from is None:
            start = checkpoint.load_checkpoint_weights(Path(cfg.load_ckpt_path)), cfg.load_ckpt_path
        lora_start = start is not None and packed_model.holds_lora(start[0])
        if cfg.use_lora and cfg.save_lora_adapter and start is not None and not lora_start:
            raise PtrError(
                f"--save_lora_adapter: an adapter is stored over --model_path, but this run starts from the full "
                f"weights of {start[1]}; export merged (drop the flag), or pass that model as --model_path"
            )
        if start is not None and not lora_start:
            packed_model.load_weights(lm, *start)
        self.lora = packed_model.lora_config(cfg.lora_config_path, self.model_path) if cfg.use_lora else None
        if self.lora is not None:
            lm = packed_model.add_lora(lm, self.lora)
        if lora_start:
            packed_model.load_weights(lm, *start)
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora is not None:
                lm.enable_input_require_grads()
        return packed_model.PackedObjective(
            lm, cfg.loss_weights, cfg.beta_power
        ).train()  # from_pretrained gives eval mode

    def _describe(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            self.run_dir / "config.json",
            {"train": self.cfg.model_dump(), "deepspeed": self.ds, "deepspeed_hash": self.ds_hash},
        )
        self.say(
            f"deepspeed config {self.ds_source} (sha256 {self.ds_hash}): {json.dumps(self.ds, sort_keys=True)}"
        )
        self.say(
            f"{len(self.dataset)} sequences, {self.dist.world_size} rank(s) × micro-batch {self.micro} × "
            f"accumulation {self.accum}; {self.batches.steps_per_epoch} steps/epoch, {self.total_steps} steps; "
            f"attention {self.attn}; {'LoRA' if self.lora else 'full'} fine-tuning"
        )

    # -- train ----------------------------------------------------------------------------------

    def train(self, tracker) -> None:
        self.metrics = None
        if self.dist.is_main:
            tracker.log_dataset(
                self.cfg.data_path, name=self.dataset.meta.get("corpus_name"), context="training"
            )
            write = lambda line: tqdm.write(line, file=sys.stdout)  # noqa: E731 (keeps the bar intact)
            self.metrics = MetricsLog(
                self.run_dir / "metrics.jsonl", tracker, resume_step=self.start_step, write=write
            )
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            disable=not self.dist.is_main,
            file=sys.stderr,
            desc="train",
        )
        for step in range(self.start_step, self.total_steps):
            record = train_step(self.engine, self.batches.for_step(step), self.dist.world_size)
            done = step + 1
            record.update(step=done, total_steps=self.total_steps, epoch=self.batches.position(done).epoch)
            if self.metrics is not None:
                self.metrics.log(record)
            bar.update(1)
            self.last = record
            if self._checkpoint_due(done):
                self._save(done)
        bar.close()

    def _checkpoint_due(self, done: int) -> bool:
        cfg, per_epoch = self.cfg, self.batches.steps_per_epoch
        by_steps = cfg.save_steps and done % cfg.save_steps == 0
        by_epochs = cfg.save_epochs and done % per_epoch == 0 and (done // per_epoch) % cfg.save_epochs == 0
        return bool(by_steps or by_epochs) and done < self.total_steps  # the last step is the export

    def _save(self, done: int) -> None:
        position, engine = self.batches.position(done), self.engine
        state = {
            "step": done,
            "epoch": position.epoch,
            "index_in_epoch": position.index,
            "world_size": self.dist.world_size,
            "zero_stage": engine.zero_optimization_stage(),
            "low_precision": bool(engine.bfloat16_enabled() or engine.fp16_enabled()),
            "deepspeed_hash": self.ds_hash,
            "loss": self.last["loss"],
        }
        path = checkpoint.save(
            engine,
            self.run_dir,
            done,
            state,
            save_optimizer=self.cfg.save_optimizer,
            keep=self.cfg.keep_checkpoints,
        )
        self.say(f"checkpoint {path}")

    def tracking(self):
        if not self.dist.is_main:
            return contextlib.nullcontext(NullRun())
        params = {
            **{k: v for k, v in self.cfg.model_dump().items() if v is not None},
            "world_size": self.dist.world_size,
            "total_steps": self.total_steps,
            "micro_batch": self.micro,
            "grad_accum": self.accum,
            "attn_implementation": self.attn,
            "deepspeed_config_source": self.ds_source,
            "deepspeed_config_hash": self.ds_hash,
        }
        return stage_run("train", params, tags={"ptr.base_model": self.cfg.model_path})

    # -- finish ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the engine's hooks on the model and its optimizer's buffers (DeepSpeed's own teardown),
        and the references to them, so ``ptr_dist.shutdown`` can free the process groups they hold."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.destroy()
        self.engine = self.objective = None

    def finish(self, tracker) -> dict:
        cfg, engine = self.cfg, self.engine
        digest = checkpoint.params_digest(engine)
        # Under ZeRO-3 every rank holds a shard: gather (a collective); else rank 0 exports its copy.
        gathered = (
            checkpoint.gather_state_dict(engine) if engine.zero_optimization_partition_weights() else None
        )
        final = self.run_dir / "final"
        if self.dist.is_main:
            lm_config, attn, lora = self.objective.causal_lm().config, self.attn, self.lora

            def build():
                from transformers import AutoModelForCausalLM

                rebuilt = AutoModelForCausalLM.from_config(lm_config, attn_implementation=attn)
                return packed_model.add_lora(rebuilt, lora) if lora is not None else rebuilt

            trained = export.rebuild(build, gathered) if gathered is not None else self.objective.lm
            meta = self.dataset.meta
            provenance = {
                "base_model": cfg.model_path,
                "data_path": cfg.data_path,
                "data_meta": meta,
                # what the model saw in training, for evaluation and serving to default to
                "refine_prompt": meta.get("refine_prompt", meta.get("layout", {}).get("refine_prompt")),
                "layout": meta.get("layout"),
                "steps": self.total_steps,
                "loss_weights": list(cfg.loss_weights),
                "beta": cfg.beta,
                "lora": bool(lora),
                "lora_merged": bool(lora) and not cfg.save_lora_adapter,
                "deepspeed_hash": self.ds_hash,
                "params_sha256": digest,
            }
            export.export(
                trained,
                self.tokenizer,
                final,
                merge_lora=not cfg.save_lora_adapter,
                provenance=provenance,
                stop_tokens=export.stop_token_ids(self.tokenizer, trained, meta),
            )
            storage.publish(final, f"{cfg.output_path.rstrip('/')}/{cfg.save_name}/final")
            png = plot(self.metrics.records(), self.run_dir / "loss.png")
            for artifact in (png, self.run_dir / "metrics.jsonl", self.run_dir / "config.json"):
                if artifact is not None and Path(artifact).exists():
                    tracker.log_artifact(artifact)
            self.say(f"exported {final}")
        summary = {
            "event": "done",
            "rank": self.dist.rank,
            "step": self.total_steps,
            "loss": self.last.get("loss"),
            "params_sha256": digest,
            "final": str(final),
        }
        print(json.dumps(summary), flush=True)
        return summary


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated on CUDA; peak resident set size of this process on the CPU."""
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def local_data(data_path: str, dist) -> Path:
    """The corpus on local disk: an ``s3://`` corpus is downloaded once per node (by its local rank 0)."""
    import hashlib

    import torch.distributed as torch_dist

    if not storage.is_remote(data_path):
        return Path(data_path)
    dest = cache_root() / "train-data" / hashlib.sha256(data_path.encode()).hexdigest()[:16]
    if dist.local_rank == 0:
        storage.fetch(data_path, dest)
    torch_dist.barrier()
    return dest


def local_run_dir(cfg: TrainConfig) -> Path:
    """Where this run writes: the output path itself, or a local staging folder for s3:// outputs."""
    if storage.is_remote(cfg.output_path):
        return cache_root() / "train-staging" / cfg.save_name
    return cfg.run_dir
