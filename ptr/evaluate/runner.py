"""Run the tasks on a model for R rounds, score every round, write and track the results.

The runner knows tasks only through :class:`ptr.evaluate.task.Task`: load questions, build prompts,
score outputs. Every input is loaded and checked before the model loads or any file is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptr.errors import InputError, PtrError
from ptr.evaluate.config import EvalConfig, TaskConfig
from ptr.evaluate.registry import expand_tasks, get_task
from ptr.evaluate.results import (
    EvalResults,
    plot_scores,
    prediction_records,
    summarize,
    summary_markdown,
    write_task_files,
)
from ptr.evaluate.task import Doc, Task
from ptr.inference import SamplingParams, refine
from ptr.records import iter_jsonl

PLAIN_STOP = ("\nQuestion:",)  # a plain-text prompt's answer ends where the model starts a new question


def build_tasks(config: EvalConfig) -> list[Task]:
    names = expand_tasks(config.tasks)
    if not names:
        raise PtrError("no tasks given")
    tasks = []
    for name in names:
        cls = get_task(name)
        if cls.needs_data and not config.data_dir and cls.hub is None:
            raise PtrError(f"task {name} needs --data_dir (or PTR_DATA_DIR)")
        tasks.append(
            cls(
                config.task_config(name),
                data_dir=config.data_dir,
                seed=config.seed,
                embedding_model=config.embedding_model,
            )
        )
    return tasks


def make_backend(config: EvalConfig):
    """The generation backend for ``config.model_type``."""
    from ptr.inference import load_backend

    kind = config.model_type
    if kind == "transformers":
        return load_backend(
            "transformers", config.model_path, dtype=config.dtype, batch_size=config.batch_size
        )
    if kind == "vllm":
        return load_backend("vllm", config.model_path, dtype=None if config.dtype == "auto" else config.dtype)
    if not config.endpoint:
        raise PtrError(f"--model_type {kind} needs --endpoint (the server's base URL)")
    if kind == "openai":
        return load_backend("openai", config.model_path or None, endpoint=config.endpoint)
    from ptr.serve.client import KServeBackend  # imported only here: ptr.serve wraps KServe

    return KServeBackend(config.endpoint, config.model_path)


def served_model_name(model_type: str, endpoint: str) -> str:
    """The name of the model a server lists first (``--model_path`` left out for an HTTP model type)."""
    from ptr.inference import load_backend

    if model_type == "openai":
        return load_backend("openai", None, endpoint=endpoint).model_name
    from ptr.serve.client import KServeBackend

    return KServeBackend(endpoint).model_name


def resolve_format(config: EvalConfig, backend) -> str:
    """``auto``: the chat template where the model has one, else the plain ``Question: … Answer:`` text."""
    if config.format_type != "auto":
        return config.format_type
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        return "chat" if getattr(tokenizer, "chat_template", None) else "default"
    return "chat"  # served models (openai, kserve) take messages


def check_context(backend, prompts: dict[str, list]) -> None:
    """Fail before generating anything when a prompt does not fit the model's context (where the
    backend can tell: the transformers backend tokenizes locally)."""
    encode, limit = getattr(backend, "encode", None), getattr(backend, "context_length", None)
    if encode is None or not limit:
        return
    for name, task_prompts in prompts.items():
        for i, prompt in enumerate(task_prompts):
            n = len(encode(prompt))
            if n + 1 > limit:
                raise PtrError(
                    f"task {name}: question {i} makes a prompt of {n} tokens, more than the model's "
                    f"{limit}-token context; lower num_fewshots (or max_document_chars for xsum)"
                )


def _params(config: EvalConfig, task: Task, fmt: str) -> SamplingParams:
    try:
        return SamplingParams(
            max_new_tokens=task.max_new_tokens(config.max_new_tokens),
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            seed=config.seed,
            stop=PLAIN_STOP if fmt == "default" else (),
        )
    except ValueError as err:
        raise PtrError(str(err)) from None


def _run_params(config: EvalConfig) -> dict:
    keep = (
        "model_path model_type format_type tasks rounds max_new_tokens temperature top_p top_k seed "
        "refine_prompt batch_size data_dir embedding_model"
    ).split()
    params = {k: getattr(config, k) for k in keep}
    params["tasks"] = ",".join(config.tasks)
    for name, tc in config.task_configs.items():
        params[f"task.{name}"] = tc.model_dump_json(exclude_defaults=True)
    return params


def evaluate(config: EvalConfig, backend=None) -> EvalResults:
    """Evaluate one model: every task, ``config.rounds`` rounds, files under
    ``<output_path>/<save_name>/``, metrics and files tracked in MLflow when it is configured."""
    from tqdm import tqdm

    from ptr import tracking

    tasks = build_tasks(config)
    docs = {t.name: t.docs() for t in tasks}  # bad data fails here, before the model loads
    for task in tasks:
        task.prepare()
    if backend is None:
        backend = make_backend(config)
    fmt = resolve_format(config, backend)
    prompts = {t.name: [t.prompt(d, fmt) for d in docs[t.name]] for t in tasks}
    params = {t.name: _params(config, t, fmt) for t in tasks}
    check_context(backend, prompts)

    model = config.model_name or config.folder_name()
    out_dir = Path(config.output_path) / config.folder_name()
    results = EvalResults(model, out_dir)
    with tracking.stage_run(
        "eval", _run_params(config), tags=tracking.describe_model(config.model_path)
    ) as run:
        for task in tasks:
            task_docs, task_prompts = docs[task.name], prompts[task.name]
            with tqdm(
                total=len(task_docs) * config.rounds, desc=task.name, unit="gen", file=sys.stderr
            ) as bar:
                completions = refine(
                    backend,
                    task_prompts,
                    config.rounds,
                    params[task.name],
                    refine_prompt=config.refine_prompt,
                    progress=bar.update,
                )
            outputs = [[c[r].text for c in completions] for r in range(config.rounds)]
            scored = [task.score_outputs(outs, task_docs) for outs in outputs]
            result = summarize(task, scored, seed=config.seed, n_boot=config.bootstrap)
            results.tasks[task.name] = result
            records = prediction_records(task.name, task_docs, task_prompts, outputs, scored)
            results.files += write_task_files(
                out_dir, result, records, texts=config.save_infer_texts, metrics=config.save_infer_results
            )
        finish(results, config.plot, note=f"{config.rounds} rounds, format {fmt}, model {config.model_path}")
        run.log_metrics(results.mlflow_metrics())
        for path in results.files:
            run.log_artifact(path, artifact_path="eval")
    return results


def finish(results: EvalResults, plot: bool, note: str = "") -> None:
    """Write summary.md (and the plot) beside the task files."""
    from ptr.jsonl import atomic_path

    path = results.output_dir / "summary.md"
    with atomic_path(path) as tmp:
        tmp.write_text(summary_markdown([results], note), encoding="utf-8")
    results.files.append(path)
    if plot:
        png = plot_scores([results], results.output_dir / "scores.png")
        if png is not None:
            results.files.append(png)


# -- re-scoring saved generations -----------------------------------------------------------------


def read_predictions(path) -> tuple[str, list[Doc], list[list[str]], list]:
    """``(task, docs, outputs[r][i], prompts)`` from a predictions file; errors name file:line:field."""
    path = Path(path)
    task_name, docs, per_doc, prompts = None, [], [], []
    for line, rec in iter_jsonl(path, required=("task", "id", "rounds")):
        if task_name is None:
            task_name = rec["task"]
        elif rec["task"] != task_name:
            raise InputError(
                path, line, f"{rec['task']!r} differs from the file's first task {task_name!r}", field="task"
            )
        rounds = rec["rounds"]
        if not isinstance(rounds, list) or not rounds:
            raise InputError(path, line, "expected a non-empty list", field="rounds")
        outs = []
        for k, r in enumerate(rounds):
            if not isinstance(r, dict) or not isinstance(r.get("output"), str):
                raise InputError(path, line, "needs a string 'output'", field=f"rounds[{k}]")
            outs.append(r["output"])
        if per_doc and len(outs) != len(per_doc[0]):
            raise InputError(
                path, line, f"{len(outs)} rounds where earlier lines have {len(per_doc[0])}", field="rounds"
            )
        doc_data = rec.get("doc") or {}
        if not isinstance(doc_data, dict):
            raise InputError(path, line, "expected an object", field="doc")
        docs.append(Doc(str(rec["id"]), "", rec.get("gold"), doc_data))
        per_doc.append(outs)
        prompts.append(rec.get("prompt"))
    if task_name is None:
        raise InputError(path, None, "no predictions in the file")
    get_task(task_name)
    outputs = [[outs[r] for outs in per_doc] for r in range(len(per_doc[0]))]
    return task_name, docs, outputs, prompts


def score_predictions(
    paths: list,
    *,
    output_dir=None,
    task_configs: dict[str, TaskConfig] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    embedding_model: str = "minilm",
    plot: bool = True,
    model: str | None = None,
) -> EvalResults:
    """Re-extract and re-score saved generations with the current extractors (no model). Writes the
    re-scored predictions, metrics and summary to ``output_dir`` (default: beside the first file)."""
    loaded = [(Path(p), *read_predictions(p)) for p in paths]  # all input checked before any writing
    first: dict[str, Path] = {}
    for path, task_name, *_ in loaded:
        if task_name in first:  # one folder holds one file per task: the second would overwrite the first
            raise PtrError(
                f"{path}: task {task_name} again (also in {first[task_name]}); re-score each in its own call"
            )
        first[task_name] = path
    out_dir = Path(output_dir) if output_dir else loaded[0][0].parent
    results = EvalResults(model or out_dir.name, out_dir)
    for _path, task_name, docs, outputs, prompts in loaded:
        cls = get_task(task_name)
        task = cls((task_configs or {}).get(task_name), seed=seed, embedding_model=embedding_model)
        scored = [task.score_outputs(outs, docs) for outs in outputs]
        result = summarize(task, scored, seed=seed, n_boot=n_boot)
        results.tasks[task_name] = result
        records = prediction_records(task_name, docs, prompts, outputs, scored)
        results.files += write_task_files(out_dir, result, records, texts=True, metrics=True)
    finish(results, plot, note="re-scored from saved predictions")
    return results
