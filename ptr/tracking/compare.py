"""``ptr compare``: the pipeline runs of one MLflow experiment side by side, model × task × round.

Each pipeline run (a parent run, ``ptr.stage = pipeline``) evaluated its base model and its trained
candidate (child runs tagged ``ptr.eval_name`` ``base`` / ``trained``). The comparison reads, per
model, task and round, the score and its 95% interval (the evaluation's bootstrap, ``eval.<task>.
round<k>_lo/_hi``), the change from the previous round with its paired-bootstrap interval
(``eval.<task>.delta<k>``), and, from the per-question predictions, how many answers went from wrong
to right (``fixed``) and from right to wrong (``broken``) — near chance level, as a small model often
is, that balance says more than the accuracy. The base model appears once (every run that shares it
evaluated the same questions); each candidate is named by its run's ``ptr.label`` (``run.name``).

Writes ``comparison.md`` (one table), ``metrics.json`` (the rows the table is made from: scores in
percent, one decimal) and ``score_vs_round.png`` (a panel per task, a line per model), and logs the
three to a ``compare`` run in the same experiment.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ptr.errors import PtrError
from ptr.files import write_json, write_text
from ptr.records import iter_jsonl
from ptr.tracking import plots, runs
from ptr.tracking.store import tracking_uri

BASE = "base"
ROW_FIELDS = ("model", "task", "round", "n", "score", "lo", "hi")


@dataclass
class Model:
    """One evaluated model: its label, the eval run it comes from, and per task the per-question
    correctness by round (``None`` where a task's score is not right/wrong)."""

    label: str
    run: object  # mlflow Run of the evaluation
    pipeline: str  # the parent run's id
    correct: dict[str, dict[str, list]] = field(default_factory=dict)  # task -> id -> [round 1, …]


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def pipeline_runs(client, experiment: str, wanted: list[str] | None = None) -> list:
    """Finished pipeline runs of ``experiment``, oldest first; ``wanted``: labels, run names or run
    ids to keep (in that order). Without it, the newest run of each label."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PtrError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`ptr.stage` = '{runs.PIPELINE_STAGE}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    if wanted:
        chosen = []
        for name in wanted:
            matches = [r for r in found if name in (_label(r), r.info.run_name, r.info.run_id)]
            if not matches:
                known = ", ".join(sorted({_label(r) for r in found})) or "none"
                raise PtrError(
                    f"--runs {name}: no finished pipeline run of that label, name or id (labels: {known})"
                )
            chosen.append(matches[-1])
        return chosen
    newest = {}
    for r in found:  # oldest first: the newest of each label wins
        newest[_label(r)] = r
    if not newest:
        raise PtrError(f"experiment {experiment!r} has no finished pipeline run")
    return sorted(newest.values(), key=lambda r: r.info.start_time)


def _label(run) -> str:
    return run.data.tags.get("ptr.label") or run.info.run_name


def _eval_child(client, parent, eval_name: str):
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`ptr.stage` = 'eval' "
            f"and tags.`ptr.eval_name` = '{eval_name}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not children:
        raise PtrError(
            f"pipeline run {parent.info.run_name} ({parent.info.run_id}) has no finished {eval_name} evaluation"
        )
    return children[0]


def _tasks(run) -> list[str]:
    return sorted({k.split(".")[1] for k in run.data.metrics if k.startswith("eval.") and ".round" in k})


def _read_correct(client, model: Model, tmp: Path) -> None:
    """Per task and question: right (True), wrong (False) or unscored (None) in each round."""
    for task in _tasks(model.run):
        artifact = f"eval/{task}.predictions.jsonl"
        try:
            local = client.download_artifacts(model.run.info.run_id, artifact, str(tmp))
        except Exception as err:
            raise PtrError(
                f"evaluation run {model.run.info.run_id} ({model.label}) has no {artifact} ({type(err).__name__})"
            ) from None
        per_question = {}
        for _, rec in iter_jsonl(local, required=("id", "rounds")):
            per_question[str(rec["id"])] = [r.get("correct") for r in rec["rounds"]]
        model.correct[task] = per_question
        Path(local).unlink(missing_ok=True)


def rows(models: list[Model]) -> list[dict]:
    """The comparison as rows ``{model, task, round, n, score, lo, hi}`` (percent, one decimal), plus
    ``delta, delta_lo, delta_hi, fixed, broken`` from the previous round where there is one."""
    out = []
    for model in models:
        metrics = model.run.data.metrics
        for task in _tasks(model.run):
            answers = model.correct.get(task, {})
            rounds = sorted(
                int(k.rsplit("round", 1)[1])
                for k in metrics
                if k.startswith(f"eval.{task}.round") and k[-1].isdigit()
            )
            for k in rounds:
                key = f"eval.{task}.round{k}"
                row = {
                    "model": model.label,
                    "task": task,
                    "round": k,
                    "n": len(answers),
                    "score": _pct(metrics[key]),
                    "lo": _pct(metrics.get(f"{key}_lo")),
                    "hi": _pct(metrics.get(f"{key}_hi")),
                }
                delta = f"eval.{task}.delta{k}"
                if k > 1 and delta in metrics:
                    row |= {
                        "delta": _pct(metrics[delta]),
                        "delta_lo": _pct(metrics.get(f"{delta}_lo")),
                        "delta_hi": _pct(metrics.get(f"{delta}_hi")),
                    }
                    pairs = [(a[k - 2], a[k - 1]) for a in answers.values() if len(a) >= k]
                    if pairs and all(isinstance(x, bool) and isinstance(y, bool) for x, y in pairs):
                        row["fixed"] = sum(not x and y for x, y in pairs)
                        row["broken"] = sum(x and not y for x, y in pairs)
                out.append(row)
    return out


def _interval(value, lo, hi, signed: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    if lo is None or hi is None:
        return text
    return f"{text} [{lo:+.1f}, {hi:+.1f}]" if signed else f"{text} [{lo:.1f}, {hi:.1f}]"


def table(table_rows: list[dict]) -> str:
    """Markdown: a row per task and model; per round its score [95% interval]; per transition the
    change [paired 95% interval] and the answers fixed (wrong → right) and broken (right → wrong)."""
    if not table_rows:
        return "_no evaluation results_\n"
    models = list(dict.fromkeys(r["model"] for r in table_rows))
    tasks = sorted({r["task"] for r in table_rows})
    n_rounds = max(r["round"] for r in table_rows)
    head = ["task", "model", "n"] + [f"round {k}" for k in range(1, n_rounds + 1)]
    head += [f"Δ {k - 1}→{k} (fixed/broken)" for k in range(2, n_rounds + 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["model"], r["task"], r["round"]): r for r in table_rows}
    for task in tasks:
        for model in models:
            mine = [by_key.get((model, task, k)) for k in range(1, n_rounds + 1)]
            if not any(mine):
                continue
            n = next(r["n"] for r in mine if r)
            cells = [task, model, str(n)]
            cells += [_interval(r["score"], r["lo"], r["hi"]) if r else "—" for r in mine]
            for r in mine[1:]:
                if not r or r.get("delta") is None:
                    cells.append("—")
                    continue
                cell = _interval(r["delta"], r.get("delta_lo"), r.get("delta_hi"), signed=True)
                if "fixed" in r:
                    cell += f" ({r['fixed']}/{r['broken']})"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fraction(x: float | None) -> float | None:
    return None if x is None else x / 100


def _plot_tables(table_rows: list[dict]) -> list[dict]:
    """The rows as the evaluation reports :func:`ptr.tracking.plots.score_vs_round` draws (fractions)."""
    grouped: dict[tuple[str, str], dict] = {}
    for r in table_rows:
        key = (r["model"], r["task"])
        t = grouped.setdefault(key, {"task": r["task"], "model": r["model"], "n": r["n"], "rounds": []})
        scores = {k: _fraction(r[k]) for k in ("score", "lo", "hi")}
        t["rounds"].append({"round": r["round"], **scores})
    return list(grouped.values())


def _check_same_base(bases: list[Model]) -> None:
    """Runs that share a base model evaluated it alike (the stage cache reuses one evaluation);
    a run whose base evaluation differs is named, since its table line would not be the others'."""
    first = bases[0]
    for other in bases[1:]:
        a = {k: v for k, v in first.run.data.metrics.items() if k.startswith("eval.") and ".round" in k}
        b = {k: v for k, v in other.run.data.metrics.items() if k.startswith("eval.") and ".round" in k}
        if a != b:
            raise PtrError(
                f"the base model's evaluations differ between pipeline runs {first.pipeline} and {other.pipeline} "
                "(another base model, tasks or settings): compare runs that share one with --runs"
            )


def compare(
    experiment: str,
    wanted: list[str] | None = None,
    output: str | Path = ".",
    *,
    log: bool = True,
) -> dict:
    """Write ``comparison.md``, ``metrics.json`` and ``score_vs_round.png`` under ``output`` and (with
    ``log``) log them to a ``compare`` run of the experiment. Returns ``{rows, table, files, run_id}``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = runs.connect(tracking_uri(fallback=True))
    parents = pipeline_runs(client, experiment, wanted)
    models: list[Model] = []
    with tempfile.TemporaryDirectory() as tmp:
        bases = [Model(BASE, _eval_child(client, p, "base"), p.info.run_id) for p in parents]
        _check_same_base(bases)
        models.append(bases[0])
        labels = [_label(p) for p in parents]
        if len(set(labels)) != len(labels) or BASE in labels:
            raise PtrError(f"pipeline runs need distinct labels other than {BASE!r} (run.name); got {labels}")
        models += [
            Model(label, _eval_child(client, p, "trained"), p.info.run_id)
            for label, p in zip(labels, parents, strict=True)
        ]
        for model in models:
            _read_correct(client, model, Path(tmp))
    table_rows = rows(models)
    text = f"# {experiment}: score by refinement round\n\n" + legend(parents) + "\n" + table(table_rows)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "comparison.md", out / "metrics.json", out / "score_vs_round.png"]
    write_text(files[0], text)
    write_json(files[1], table_rows)
    plots.score_vs_round(_plot_tables(table_rows), files[2])
    run_id = None
    if log:
        params = {"experiment": experiment, "runs": ",".join(p.info.run_id for p in parents)}
        params["models"] = ",".join(m.label for m in models)
        with runs.open_run(
            "compare",
            params,
            {"ptr.compared": params["runs"]},
            client.tracking_uri,
            name="compare " + " vs ".join(m.label for m in models),
        ) as run:
            for f in files:
                run.log_artifact(f)
            run_id = run.run_id
    return {"rows": table_rows, "table": text, "files": [str(f) for f in files], "run_id": run_id}


def legend(parents: list) -> str:
    runs_text = ", ".join(f"{_label(p)} = `{p.info.run_name}` ({p.info.run_id[:8]})" for p in parents)
    return (
        "Scores in percent with 95% bootstrap intervals; Δ k−1→k is the paired change with its paired-bootstrap "
        "95% interval, and (fixed/broken) counts the answers that went wrong → right / right → wrong. "
        f"Pipeline runs: {runs_text}.\n"
    )


def read_rows(path: str | Path) -> list[dict]:
    """A ``metrics.json`` written by :func:`compare`, checked field by field."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise PtrError(f"{path}: expected a list of rows")
    for i, row in enumerate(data):
        missing = [k for k in ROW_FIELDS if k not in row]
        if missing:
            raise PtrError(f"{path}: row {i}: missing {', '.join(missing)}")
    return data
