"""Run the tasks on a model for R rounds, score every round, write and track the results.

The runner knows tasks only through :class:`ptr.evaluate.task.Task`: load questions, build prompts,
score outputs. Every input is loaded and checked before the model loads or any file is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ptr import tracking
from ptr.errors import InputError, PtrError
from ptr.evaluate.config import EvalConfig, TaskConfig, default_model_name
from ptr.evaluate.results import (
    EvalResults,
    load_results,
    plot_scores,
    prediction_records,
    summarize,
    summary_markdown,
    write_task_files,
)
from ptr.evaluate.task import Doc, Task
from ptr.evaluate.task_registry import expand_tasks, get_task
from ptr.files import atomic_path
from ptr.inference import (
    Backend,
    BackendOptions,
    SamplingParams,
    check_format,
    load_backend,
    refine,
    refine_prompt_for,
)
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


def backend_options(config: EvalConfig) -> BackendOptions:
    return BackendOptions(
        dtype=config.dtype,
        batch_size=config.batch_size,
        endpoint=config.endpoint,
        kv_cache_gib=config.kv_cache_gib,
        gpu_memory_share=config.gpu_memory_share,
    )


def make_backend(config: EvalConfig) -> Backend:
    """The generation backend for ``config.model_type`` (for a served model, ``model_path`` is its name
    on the server)."""
    return load_backend(config.model_type, config.model_path or None, backend_options(config))


def served_model_name(model_type: str, endpoint: str) -> str:
    """The name of the model a server lists first (``--model_path`` left out for an HTTP model type)."""
    return load_backend(model_type, None, BackendOptions(endpoint=endpoint)).model_name


def resolve_format(config: EvalConfig, backend: Backend) -> str:
    """``auto``: the chat template where the model has one, else the plain ``Question: … Answer:`` text;
    a chat-trained model asked in the plain layout gets a warning."""
    fmt = config.format_type
    if fmt == "auto":
        if backend.tokenizer is not None:
            fmt = "chat" if backend.chat_template else "default"
        else:
            fmt = "chat"  # served models (openai, kserve) take messages
    check_format(backend, fmt)
    return fmt


def check_context(backend: Backend, prompts: dict[str, list]) -> None:
    """Fail before generating anything when a prompt does not fit the model's context (where the
    backend can tell: a local model's tokenizer)."""
    limit = backend.context_length
    if not limit:
        return
    for name, task_prompts in prompts.items():
        for i, prompt in enumerate(task_prompts):
            n = backend.prompt_tokens(prompt)
            if n is not None and n + 1 > limit:
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


def _run_params(config: EvalConfig, refine_prompt: str | None) -> dict:
    keep = (
        "model_path model_type format_type tasks rounds max_new_tokens temperature top_p top_k seed "
        "batch_size data_dir embedding_model"
    ).split()
    params = {k: getattr(config, k) for k in keep}
    params["refine_prompt"] = refine_prompt or "(the server's default)"
    params["tasks"] = ",".join(config.tasks)
    for name, tc in config.task_configs.items():
        params[f"task.{name}"] = tc.model_dump_json(exclude_defaults=True)
    return params


def evaluate(config: EvalConfig, backend=None) -> EvalResults:
    """Evaluate one model: every task, ``config.rounds`` rounds, files under
    ``<output_path>/<save_name>/``, metrics and files tracked in MLflow when it is configured."""
    tasks = build_tasks(config)
    docs = {t.name: t.docs() for t in tasks}  # bad data fails here, before the model loads
    for task in tasks:
        task.prepare()
    if backend is None:
        backend = make_backend(config)
    refine_prompt = refine_prompt_for(backend, config.refine_prompt)
    fmt = resolve_format(config, backend)
    prompts = {t.name: [t.prompt(d, fmt) for d in docs[t.name]] for t in tasks}
    params = {t.name: _params(config, t, fmt) for t in tasks}
    check_context(backend, prompts)

    model = config.model_name or config.folder_name()
    out_dir = Path(config.output_path) / config.folder_name()
    results = EvalResults(model, out_dir)
    tags = {**tracking.describe_model(config.model_path), "ptr.eval_name": config.folder_name()}
    with tracking.stage_run(
        "eval", _run_params(config, refine_prompt), tags=tags, name=run_name(config, tags)
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
                    refine_prompt=refine_prompt,
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
        log_results(run, results)
    return results


def run_name(config: EvalConfig, tags: dict) -> str:
    """What the evaluation scored, as its MLflow run is named: ``eval base · smollm2-135m-instruct``,
    ``eval trained · ptr-smollm2 v3`` (a registered version where the tags name one)."""
    model = config.model_name or default_model_name(config.model_path)
    if tags.get("ptr.model_version"):
        model = f"{tags['ptr.model_name']} v{tags['ptr.model_version']}"
    return f"eval {config.folder_name()} · {model}"


def log_results(run, results: EvalResults) -> None:
    run.log_metrics(results.mlflow_metrics())
    for path in results.files:
        run.log_artifact(path, artifact_path="eval")


def track_saved(config: EvalConfig, note: str) -> EvalResults:
    """An evaluation already on disk (``<output_path>/<folder>/``, written by :func:`evaluate` with the
    same config) tracked as if it had just run: a reused one is logged like a fresh one, so that its
    run, metrics and per-question files are where promotion and comparisons look. ``note``: why
    (tagged ``ptr.reused``)."""
    out_dir = Path(config.output_path) / config.folder_name()
    results = load_results(out_dir, config.model_name or config.folder_name())
    if not results.tasks:
        raise PtrError(f"{out_dir}: no saved evaluation (no *.metrics.json)")
    tags = {**tracking.describe_model(config.model_path), "ptr.eval_name": config.folder_name()}
    tags["ptr.reused"] = note
    params = _run_params(config, config.refine_prompt)
    with tracking.stage_run("eval", params, tags=tags, name=run_name(config, tags)) as run:
        log_results(run, results)
    return results


def finish(results: EvalResults, plot: bool, note: str = "") -> None:
    """Write summary.md (and the plot) beside the task files."""
    path = results.output_dir / "summary.md"
    with atomic_path(path) as tmp:
        tmp.write_text(summary_markdown([results], note), encoding="utf-8")
    results.files.append(path)
    if plot:
        png = plot_scores([results], results.output_dir / "scores.png")
        if png is not None:
            results.files.append(png)


# -- re-scoring saved generations -----------------------------------------------------------------


@dataclass
class SavedPredictions:
    """A predictions file as read back: per question its doc (``data`` None where the line has no
    ``doc``) and the line it came from, and per round every question's output."""

    path: Path
    task: str
    docs: list[Doc]
    lines: list[int]
    outputs: list[list[str]]  # outputs[r][i]
    prompts: list


def read_predictions(path) -> SavedPredictions:
    """A predictions file, checked; errors name file:line:field."""
    path = Path(path)
    task_name, docs, lines, per_doc, prompts = None, [], [], [], []
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
        doc_data = rec.get("doc")
        if doc_data is not None and not isinstance(doc_data, dict):
            raise InputError(path, line, "expected an object", field="doc")
        docs.append(Doc(str(rec["id"]), "", rec.get("gold"), doc_data))
        lines.append(line)
        per_doc.append(outs)
        prompts.append(rec.get("prompt"))
    if task_name is None:
        raise InputError(path, None, "no predictions in the file")
    get_task(task_name)
    outputs = [[outs[r] for outs in per_doc] for r in range(len(per_doc[0]))]
    return SavedPredictions(path, task_name, docs, lines, outputs, prompts)


def complete_docs(task: Task, saved: SavedPredictions) -> list[Doc]:
    """Every saved question with what scoring needs. A line without its ``doc`` (or without a field
    the task scores with) is looked up by id where the task's data is at hand, else scored without it
    where the task can (MMLU by the letters A-D), else it stops the run naming ``file:line: doc``."""
    docs = [d if d.data is not None else Doc(d.id, d.question, d.gold, {}) for d in saved.docs]
    missing = [i for i, d in enumerate(docs) if any(f not in d.data for f in task.doc_fields)]
    found = task.lookup({docs[i].id for i in missing}) if missing and task.data_at_hand() else None
    for i in missing:
        doc, line = docs[i], saved.lines[i]
        known = found.get(doc.id) if found is not None else None
        if known is not None:
            docs[i] = Doc(doc.id, known.question, known.gold if doc.gold is None else doc.gold, known.data)
            continue
        fallback = task.doc_without_data(doc.id, doc.gold)
        if fallback is not None:
            docs[i] = fallback
        elif found is not None:
            raise InputError(
                saved.path, line, f"no question {doc.id!r} in task {task.name}'s data", field="id"
            )
        else:
            raise InputError(
                saved.path,
                line,
                f"missing (task {task.name} scores with its {', '.join(task.doc_fields)}); give --data_dir "
                "(or PTR_DATA_DIR) to look the question up by id",
                field="doc",
            )
    return docs


def score_predictions(
    paths: list,
    *,
    output_dir=None,
    task_configs: dict[str, TaskConfig] | None = None,
    data_dir=None,
    seed: int = 0,
    n_boot: int = 1000,
    embedding_model: str = "minilm",
    plot: bool = True,
    model: str | None = None,
) -> EvalResults:
    """Re-extract and re-score saved generations with the current extractors (no model). Writes the
    re-scored predictions, metrics and summary to ``output_dir`` (default: beside the first file).
    ``data_dir``: where lines without their ``doc`` are looked up."""
    loaded = [read_predictions(p) for p in paths]
    first: dict[str, Path] = {}
    for saved in loaded:
        if saved.task in first:  # one folder holds one file per task: the second would overwrite the first
            raise PtrError(
                f"{saved.path}: task {saved.task} again (also in {first[saved.task]}); re-score each in its own call"
            )
        first[saved.task] = saved.path
    tasks = {
        s.task: get_task(s.task)(
            (task_configs or {}).get(s.task), data_dir=data_dir, seed=seed, embedding_model=embedding_model
        )
        for s in loaded
    }
    docs = {s.task: complete_docs(tasks[s.task], s) for s in loaded}  # all input checked before any writing
    out_dir = Path(output_dir) if output_dir else loaded[0].path.parent
    results = EvalResults(model or out_dir.name, out_dir)
    for saved in loaded:
        task, task_docs = tasks[saved.task], docs[saved.task]
        scored = [task.score_outputs(outs, task_docs) for outs in saved.outputs]
        result = summarize(task, scored, seed=seed, n_boot=n_boot)
        results.tasks[saved.task] = result
        records = prediction_records(saved.task, task_docs, saved.prompts, saved.outputs, scored)
        results.files += write_task_files(out_dir, result, records, texts=True, metrics=True)
    finish(results, plot, note="re-scored from saved predictions")
    return results
