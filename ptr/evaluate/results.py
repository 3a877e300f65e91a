"""Scores of a run and the files they are written to.

Files, under ``<output_path>/<save_name>/``:

* ``<task>.predictions.jsonl``: one line per question ``{task, id, gold, prompt, doc, rounds: [{round,
  output, extracted, correct, score, metrics}]}`` (``doc``: what re-scoring needs; ``metrics``: the
  task's secondary per-question metrics);
* ``<task>.metrics.json``: ``{task, n, metric, rounds: [{round, score, lo, hi}], deltas: [{from, to,
  delta, lo, hi}], extra: {name: {rounds, deltas}}}`` (scores are fractions, intervals 95% bootstrap);
* ``summary.md``: the task × round table with deltas; ``scores.png``: score against round per task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ptr.evaluate.metrics import round_table
from ptr.evaluate.task import Doc, Scored
from ptr.files import atomic_path, write_json
from ptr.jsonl import write_jsonl
from ptr.tracking.plots import score_vs_round


@dataclass
class TaskResult:
    task: str
    title: str
    metric: str
    n: int
    rounds: list[dict]
    deltas: list[dict]
    extra: dict[str, dict] = field(default_factory=dict)  # name -> {rounds, deltas}

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "n": self.n,
            "metric": self.metric,
            "rounds": self.rounds,
            "deltas": self.deltas,
            "extra": self.extra,
        }


@dataclass
class EvalResults:
    model: str
    output_dir: Path
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def mlflow_metrics(self) -> dict[str, float]:
        """``eval.<task>.round<k>`` and ``eval.<task>.delta<k>`` (k: the later round), each with
        ``_lo`` / ``_hi``; secondary metrics as ``eval.<task>.<name>.round<k>``."""
        out: dict[str, float] = {}

        def put(prefix: str, rounds: list[dict], deltas: list[dict]):
            for r in rounds:
                if r["score"] is not None:
                    key = f"{prefix}.round{r['round']}"
                    out.update({key: r["score"], f"{key}_lo": r["lo"], f"{key}_hi": r["hi"]})
            for d in deltas:
                if d["delta"] is not None:
                    key = f"{prefix}.delta{d['to']}"
                    out.update({key: d["delta"], f"{key}_lo": d["lo"], f"{key}_hi": d["hi"]})

        for name, result in self.tasks.items():
            put(f"eval.{name}", result.rounds, result.deltas)
            for extra_name, table in result.extra.items():
                put(f"eval.{name}.{extra_name}", table["rounds"], table["deltas"])
        return out


def load_results(folder: Path, model: str | None = None) -> EvalResults:
    """An evaluation written earlier (its ``*.metrics.json`` files and every file beside them)."""
    folder = Path(folder)
    results = EvalResults(model or folder.name, folder)
    for path in sorted(folder.glob("*.metrics.json")):
        data = json.loads(path.read_text())
        results.tasks[data["task"]] = TaskResult(
            data["task"],
            data["task"],
            data["metric"],
            data["n"],
            data["rounds"],
            data["deltas"],
            data.get("extra") or {},
        )
    results.files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return results


def summarize(task, scored: list[list[Scored]], *, seed: int, n_boot: int) -> TaskResult:
    """Per-round scores and deltas of one task; ``scored[r][i]``: question i in round r+1."""
    n = len(scored[0]) if scored else 0
    rounds, deltas = round_table([[s.score for s in r] for r in scored], seed=seed, n_boot=n_boot)
    extra = {}
    names = sorted({k for r in scored for s in r for k in s.metrics})
    for name in names:
        values = [[s.metrics.get(name, 0.0) for s in r] for r in scored]
        extra_rounds, extra_deltas = round_table(values, seed=seed, n_boot=n_boot)
        extra[name] = {"rounds": extra_rounds, "deltas": extra_deltas}
    return TaskResult(task.name, task.title or task.name, task.metric, n, rounds, deltas, extra)


def prediction_records(task_name: str, docs: list[Doc], prompts, outputs, scored) -> list[dict]:
    """``outputs[r][i]`` / ``scored[r][i]``: round r+1 of question i."""
    records = []
    for i, doc in enumerate(docs):
        rounds = []
        for r in range(len(outputs)):
            s = scored[r][i]
            rounds.append(
                {
                    "round": r + 1,
                    "output": outputs[r][i],
                    "extracted": s.extracted,
                    "correct": s.correct,
                    "score": s.score,
                    "metrics": s.metrics,
                }
            )
        records.append(
            {
                "task": task_name,
                "id": doc.id,
                "gold": doc.gold,
                "prompt": prompts[i] if prompts is not None else None,
                "doc": doc.data,
                "rounds": rounds,
            }
        )
    return records


def write_task_files(
    out_dir: Path, result: TaskResult, records: list[dict] | None, *, texts: bool, metrics: bool
) -> list[Path]:
    written = []
    if texts and records is not None:
        path = out_dir / f"{result.task}.predictions.jsonl"
        write_jsonl(path, records)
        written.append(path)
    if metrics:
        path = out_dir / f"{result.task}.metrics.json"
        write_json(path, result.to_json())
        written.append(path)
    return written


# -- summary table and plot -----------------------------------------------------------------------


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _cell(score, lo, hi, signed: bool = False) -> str:
    if score is None:
        return "–"
    value = f"{100 * score:+.1f}" if signed else f"{100 * score:.1f}"
    return f"{value} [{_pct(lo)}, {_pct(hi)}]"


def summary_table(results: list[EvalResults]) -> str:
    """Markdown: one row per task (and secondary metric), one column per round and per delta; with
    several models, a model column. Scores in percent, 95% bootstrap intervals in brackets."""
    n_rounds = max((len(t.rounds) for r in results for t in r.tasks.values()), default=0)
    several = len(results) > 1
    head = (["model"] if several else []) + ["task", "metric", "n"]
    head += [f"round {k}" for k in range(1, n_rounds + 1)]
    head += [f"Δ {k - 1}→{k}" for k in range(2, n_rounds + 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        for name, t in res.tasks.items():
            tables = [(t.metric, t.rounds, t.deltas)]
            tables += [(extra, v["rounds"], v["deltas"]) for extra, v in t.extra.items()]
            for metric, rounds, deltas in tables:
                row = ([res.model] if several else []) + [name, metric, str(t.n)]
                row += [_cell(r["score"], r["lo"], r["hi"]) for r in rounds]
                row += ["–"] * (n_rounds - len(rounds))
                row += [_cell(d["delta"], d["lo"], d["hi"], signed=True) for d in deltas]
                row += ["–"] * (n_rounds - 1 - len(deltas))
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(results: list[EvalResults], note: str = "") -> str:
    models = ", ".join(r.model for r in results)
    text = f"# Evaluation: {models}\n\n"
    if note:
        text += note.rstrip() + "\n\n"
    text += "Scores in percent with 95% bootstrap confidence intervals; Δ k−1→k is the paired change.\n\n"
    return text + summary_table(results)


def plot_scores(results: list[EvalResults], path: Path) -> Path | None:
    """Score against round: one panel per task, one line per model, with the confidence band."""
    tables = [
        {**t.to_json(), "model": res.model if len(results) > 1 else None}
        for res in results
        for t in res.tasks.values()
    ]
    if not tables:
        return None
    with atomic_path(path, suffix=".png") as tmp:
        score_vs_round(tables, tmp)
    return path
