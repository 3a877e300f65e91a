"""Phase 2 steps: encode the kept thoughts, train (torchrun here, a PyTorchJob on a cluster), register."""

from __future__ import annotations

from pathlib import Path

from ptr.cluster import training as cluster_training
from ptr.encode.encoder import encode as run_encode
from ptr.encode.layout import shortest_thought_turns
from ptr.errors import PtrError
from ptr.files import write_json
from ptr.models import load_tokenizer, resolve
from ptr.pipeline import launch, stage_cache
from ptr.pipeline.config import Train, section
from ptr.pipeline.steps.common import (
    announce,
    cache_for,
    describe_run,
    model_location,
    note_reused,
    set_context,
    timed,
)
from ptr.prompts import REFINE_PROMPT
from ptr.records import iter_jsonl
from ptr.tracking.model_registry import register_model
from ptr.train import ds_config


def encode(run: dict, train: dict, thoughts_dir: str, out_dir: str, run_id: str) -> dict:
    """Shards of the kept thoughts under ``<out_dir>/<layout>``; returns the encoder's summary."""
    run, train = section("run", run), section("train", train)
    set_context(run, run_id)
    describe_run(train=train)
    thoughts = Path(thoughts_dir) / "thoughts.jsonl"
    config = train.encode_config(str(thoughts), str(out_dir), qa_overhead=qa_overhead(train, thoughts))
    announce("encode", config)
    settings = config.model_dump(mode="json", exclude={"input", "output_path", "tokenizer_path", "num_proc"})
    cache = cache_for(
        "encode",
        run,
        settings,
        lambda: {"thoughts": stage_cache.digest([thoughts]), "tokenizer": model_digest(train.base_model)},
    )
    with timed("encode", run, run_id) as timer:
        summary = cache.reuse(out_dir)
        if summary is not None:
            timer.reused = True
            note_reused("encode", summary, cache.entry)
        else:
            summary = run_encode(config)
            cache.keep(out_dir, summary)
    return summary


def qa_overhead(train: Train, thoughts: Path) -> int:
    """For the ``qa`` layout: what the ``ptr`` layout of these records adds at the least, so that both
    layouts keep the same records (:func:`ptr.encode.layout.shortest_thought_turns`)."""
    if train.layout != "qa":
        return 0
    refine_prompt, num_thoughts = REFINE_PROMPT, None
    for _, record in iter_jsonl(thoughts):
        if record.get("kept"):
            refine_prompt = record.get("refine_prompt") or REFINE_PROMPT
            num_thoughts = len(record.get("thoughts") or [])
            break
    if not num_thoughts:
        return 0
    tokenizer = load_tokenizer(resolve(train.base_model))
    return shortest_thought_turns(tokenizer, refine_prompt, num_thoughts)


def model_digest(model_ref: str) -> str:
    """A model by the content of its files (a name such as ``smollm2-135m-instruct`` resolved first)."""
    return stage_cache.digest([resolve(model_ref)])


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def deepspeed_config(train: Train) -> dict | None:
    """The DeepSpeed config to train with: inline, or one shipped in ptr/train/configs/ (the trainer's
    default when neither is given), with ``deepspeed_overrides`` merged over it."""
    spec = train.deepspeed_config
    if spec is None and not train.deepspeed_overrides:
        return None
    if isinstance(spec, dict):
        return _merge(spec, train.deepspeed_overrides)
    try:
        shipped = ds_config.read_shipped(spec)
    except PtrError as err:
        raise PtrError(f"train.deepspeed_config: {err}") from None
    return _merge(shipped, train.deepspeed_overrides)


def train(run: dict, train: dict, shards_dir: str, out_dir: str, run_id: str) -> dict:
    """Local: ``torchrun`` with N processes (gloo). Cluster: a PyTorchJob, waited for to the end.
    Writes ``location.json``: where the exported model is."""
    run, train = section("run", run), section("train", train)
    set_context(run, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = deepspeed_config(train)
    if run.runtime == "local":
        ds_path = None
        if ds is not None:
            ds_path = out / "deepspeed.json"
            write_json(ds_path, ds)
        config = train.train_config(
            shards_dir, str(out / "output"), seed=run.seed, deepspeed_config_path=ds_path and str(ds_path)
        )
        announce("train", config)
        settings = {
            "train": config.model_dump(
                mode="json", exclude={"data_path", "output_path", "deepspeed_config_path", "model_path"}
            ),
            "deepspeed": ds,
            "processes": train.nproc_per_node * train.num_nodes,
        }
        cache = cache_for(
            "train",
            run,
            settings,
            lambda: {
                "shards": stage_cache.digest([shards_dir]),
                "base_model": model_digest(train.base_model),
            },
        )
        with timed("train", run, run_id) as timer:
            record = cache.reuse(out)
            if record is not None:
                timer.reused = True
                note_reused("train", record, cache.entry)
            else:
                launch.run_local(config.to_argv(), train.nproc_per_node * train.num_nodes)
                record = {"save_name": train.save_name}
                cache.keep(out, record, skip=("checkpoints",))
        location = {"model": str((out / "output" / train.save_name / "final").resolve())}
    else:
        config = train.train_config(shards_dir, str(out / "output"), seed=run.seed)
        announce("train", config)
        location = cluster_training.train(
            run.kube,
            config,
            ds=ds,
            shards=Path(shards_dir),
            run_id=run_id,
            nodes=train.num_nodes,
            nproc_per_node=train.nproc_per_node,
            experiment=run.experiment,
        )
    location["run_id"] = run_id
    write_json(out / "location.json", location)
    return location


def register(run: dict, model_dir: str, out_dir: str, run_id: str) -> dict:
    """Log the exported model to MLflow, register a version (alias ``candidate``, tag ``ptr.run_id``)."""
    run = section("run", run)
    set_context(run, run_id)
    model = model_location(model_dir)
    with timed("register", run, run_id):
        info = register_model(model, run.model_name, ptr_run_id=run_id)
    record = {
        "name": info["name"],
        "version": str(info["version"]),
        "uri": info["uri"],
        "model": model,
        "run_id": run_id,
    }
    write_json(Path(out_dir) / "registration.json", record)
    return record
