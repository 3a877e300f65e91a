"""Serving and evaluation steps: deploy the candidate, evaluate the base model and the candidate over
R rounds, and report them side by side."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ptr.cluster import serving as cluster_serving
from ptr.errors import PtrError
from ptr.evaluate.runner import evaluate as run_evaluate
from ptr.evaluate.runner import track_saved
from ptr.evaluate.task_registry import get_task
from ptr.files import write_json
from ptr.models import resolve
from ptr.pipeline import local_serve, stage_cache
from ptr.pipeline.config import Evaluate, Promote, Run, section
from ptr.pipeline.report import comparison_table, read_metrics
from ptr.pipeline.steps.common import (
    announce,
    cache_for,
    describe_run,
    model_location,
    read_record,
    set_context,
    timed,
)
from ptr.tracking.gate import parse_metric


def deploy(
    run: dict, evaluate: dict, model_dir: str, registration_dir: str, out_dir: str, run_id: str
) -> dict:
    """Local: ``ptr serve`` on 127.0.0.1, batching as ``evaluate.batch_size`` says (stopped by
    :func:`evaluate`). Cluster: the candidate's InferenceService, created or updated, waited for until
    Ready. Writes ``endpoint.json``."""
    run, evaluate = section("run", run), section("evaluate", evaluate)
    set_context(run, run_id)
    model = model_location(model_dir)
    registration = read_record(registration_dir, "registration.json")
    out = Path(out_dir)
    if run.runtime == "local":
        with timed("deploy", run, run_id):
            served = local_serve.start(model, run.model_name, out, max_batch_size=evaluate.batch_size)
        record = {"mode": "local", "model_type": "kserve", "model": model, **served}
    else:
        endpoint = cluster_serving.deploy_candidate(
            run.kube, model, model_name=run.model_name, run_id=run_id, registration=registration
        )
        record = {"mode": "kubernetes", **endpoint}
    # Which registered version answers here: evaluation tags its run with it, promotion reads that.
    record["model_version"] = f"{registration['name']}/{registration['version']}"
    write_json(out / "endpoint.json", record)
    return record


def available_tasks(evaluate: Evaluate) -> tuple[list[str], dict[str, str], str | None]:
    """Tasks whose data is found (each task names the folder it reads, see ``Task.data_folder``); the
    rest are skipped with a reason when ``skip_missing_data``, else they fail the step."""
    data_dir = evaluate.data_dir or os.environ.get("PTR_DATA_DIR")
    kept, skipped = [], {}
    for task in evaluate.tasks:
        folder = get_task(task).data_folder
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


def _promotion_has_data(evaluate: Evaluate, promote: Promote) -> None:
    _, skipped, data_dir = available_tasks(evaluate)
    for name in (promote.primary, *promote.guards):
        task = parse_metric(name).task
        if task in skipped:
            raise PtrError(
                f"promote uses {name}, but task {task} has no data here ({skipped[task]}): the run could "
                f"never promote. Stage the data under {data_dir or 'evaluate.data_dir'} (README, 'Evaluation "
                "data') or choose another promote.primary"
            )


def _evaluate(
    evaluate: Evaluate,
    run: Run,
    run_id: str,
    out: Path,
    save_name: str,
    model_dir: Callable[[], str | Path],
    **model,
) -> dict[str, str]:
    """Evaluate, or reuse an evaluation of the same model (by content: ``model_dir()``, asked only when
    the stage cache is in use) with the same settings and data; either way the evaluation is tracked
    as this run's. Returns the tasks skipped and why."""
    tasks, skipped, data_dir = available_tasks(evaluate)
    config = evaluate.eval_config(
        tasks=tasks, output_path=str(out), save_name=save_name, seed=run.seed, data_dir=data_dir, **model
    )
    announce("eval", config)
    step = f"evaluate_{save_name}"
    settings = config.model_dump(
        mode="json", exclude={"model_path", "model_name", "endpoint", "output_path", "data_dir"}
    )
    folders = [Path(data_dir) / folder for t in tasks if data_dir and (folder := get_task(t).data_folder)]
    cache = cache_for(
        "evaluate",
        run,
        settings,
        lambda: {"model": stage_cache.digest([model_dir()]), "data": stage_cache.digest(folders)},
    )
    with timed(step, run, run_id) as timer:
        if cache.reuse(out) is not None:
            timer.reused = True
            track_saved(config, note=f"stage cache {cache.entry}")
        else:
            run_evaluate(config)
            cache.keep(out, {"tasks": tasks})
    return skipped


def evaluate_base(
    run: dict, evaluate: dict, train: dict, out_dir: str, run_id: str, promote: dict | None = None
) -> dict:
    """The base model (``train.base_model``), asked and asked to refine, for the side-by-side table
    and for the gate while there is no champion. It runs first, beside the data steps, so a promotion
    metric whose task has no data fails the run here, before training. Reused across runs with the
    same base model, tasks and settings (the stage cache)."""
    run, evaluate, train = section("run", run), section("evaluate", evaluate), section("train", train)
    set_context(run, run_id)
    describe_run(evaluate=evaluate)
    if promote is not None:
        _promotion_has_data(evaluate, section("promote", promote))
    out = Path(out_dir)
    skipped = _evaluate(
        evaluate,
        run,
        run_id,
        out,
        "base",
        lambda: resolve(train.base_model),
        model_path=train.base_model,
        model_type=evaluate.base_model_type,
    )
    write_json(out / "skipped.json", skipped)
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
    endpoint = read_record(endpoint_dir, "endpoint.json")
    os.environ["PTR_MODEL_VERSION"] = endpoint["model_version"]
    try:
        skipped = _evaluate(
            evaluate,
            run,
            run_id,
            out,
            "trained",
            lambda: endpoint["model"],
            model_path=endpoint["model_name"],
            model_type=endpoint["model_type"],
            endpoint=endpoint["url"],
        )
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
