"""``ptr promote``: gather each version's evaluation from MLflow, apply the rule, move the alias.

Each registered version's evaluation is the newest finished ``eval`` run tagged with its
``ptr.model_name`` / ``ptr.model_version`` (what :func:`ptr.tracking.describe_model` tags). Metrics
come from those runs; the per-question values for the bootstrap come from their
``eval/<task>.predictions.jsonl`` artifacts. The decision and its evidence are written as tags on the
candidate version and as a ``promote`` run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ptr.errors import PtrError
from ptr.files import write_json
from ptr.records import iter_jsonl
from ptr.tracking import gate, runs
from ptr.tracking.model_registry import CANDIDATE, CHAMPION, client, get_version
from ptr.tracking.store import tracking_uri

_TAG_LIMIT = 5000


@dataclass
class Evaluated:
    """One registered version and what its evaluation runs logged."""

    version: str
    metrics: dict[str, float]
    sources: dict[str, str]  # metric key -> the MLflow run that logged it


def eval_runs(mlflow_client, name: str, version: str) -> list:
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    return mlflow_client.search_runs(
        experiments,
        filter_string=(
            f"tags.`ptr.model_name` = '{name}' and tags.`ptr.model_version` = '{version}' "
            "and tags.`ptr.stage` = 'eval' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=500,
    )


def evaluated(mlflow_client, name: str, version: str) -> Evaluated:
    """Every ``eval.*`` metric of the version, each from the newest run that logged it."""
    metrics: dict[str, float] = {}
    sources: dict[str, str] = {}
    for run in eval_runs(mlflow_client, name, version):
        for key, value in run.data.metrics.items():
            if key.startswith("eval.") and key not in metrics:
                metrics[key], sources[key] = value, run.info.run_id
    return Evaluated(version, metrics, sources)


def question_scores(mlflow_client, run_id: str, metric: gate.MetricName) -> dict[str, float]:
    artifact = f"eval/{metric.task}.predictions.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_client.download_artifacts(run_id, artifact, tmp)
        except Exception as err:
            raise PtrError(
                f"evaluation run {run_id} has no artifact {artifact} ({type(err).__name__})"
            ) from None
        shown = f"runs:/{run_id}/{artifact}"
        records = list(iter_jsonl(local))
        try:
            return gate.question_scores(records, metric, shown)
        finally:
            Path(local).unlink(missing_ok=True)


def _missing_eval(name: str, version: str, metric: str) -> PtrError:
    return PtrError(
        f"{name} version {version} has no finished evaluation with {metric}: run "
        f"`ptr eval --model_path models:/{name}/{version} …` with tracking on (MLFLOW_TRACKING_URI or PTR_TRACKING=local)"
    )


@dataclass(frozen=True)
class Reference:
    """What a candidate must beat while there is no champion: the base model's evaluation from the
    same pipeline run. ``metrics``: its ``eval.*`` metrics; ``questions``: per question id, its
    values of the primary metric; ``label``: what it is (``base model smollm2-135m-instruct``)."""

    label: str
    metrics: dict[str, float]
    questions: dict[str, float]


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` decided, with its evidence (``report``, also logged as ``promotion.json``)."""

    name: str
    candidate: str
    champion_before: str | None
    decision: gate.Decision
    report: dict

    @property
    def promoted(self) -> bool:
        """True when the candidate is the champion now (promoted, or it already was)."""
        return self.decision.promote


@dataclass(frozen=True)
class _Rule:
    """The gate's settings, checked before MLflow is touched."""

    primary: gate.MetricName
    guards: list[tuple[gate.MetricName, float]]
    guard_specs: list[str]
    min_delta: float
    n_boot: int
    seed: int
    confidence: float

    def params(self) -> dict:
        return {
            "primary": self.primary.key,
            "guards": ",".join(self.guard_specs) or "none",
            "min_delta": self.min_delta,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
        }


def promote(
    name: str,
    *,
    version: str | None = None,
    primary: str,
    guards: list[str] = (),
    min_delta: float = 0.0,
    n_boot: int = gate.N_BOOT,
    seed: int = 0,
    confidence: float = gate.CONFIDENCE,
    move_alias: bool = True,
    reference: Reference | None = None,
) -> Promotion:
    """Decide and act: find the candidate and the champion, read their evaluations, apply the rule,
    record the decision and move the ``champion`` alias when the candidate wins. With no champion
    yet, the candidate must beat ``reference`` (the pipeline passes its base model's evaluation).
    Raises PtrError when evidence is missing. With ``move_alias=False`` the alias stays: the caller
    crowns the candidate (:func:`crown`) once production serves it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files: no bars
    rule = _Rule(
        gate.parse_metric(primary),
        [gate.parse_guard(g) for g in guards],
        list(guards),
        min_delta,
        n_boot,
        seed,
        confidence,
    )
    mlflow_client = client()
    candidate, champion = _versions(mlflow_client, name, version)
    report = {"name": name, "candidate": candidate, "champion": champion}
    decision = _decide(mlflow_client, name, candidate, champion, rule, report, reference)
    report["decision"] = decision.as_dict()
    if champion != candidate:  # already the champion: nothing to record or move
        _record(mlflow_client, name, candidate, champion, rule, decision, report)
        if decision.promote and move_alias:
            crown(name, candidate, champion)
    return Promotion(name, candidate, champion, decision, report)


def crown(name: str, candidate: str, champion_before: str | None) -> None:
    """Point the ``champion`` alias at ``candidate`` (and note on the old champion who replaced it)."""
    mlflow_client = client()
    mlflow_client.set_registered_model_alias(name, CHAMPION, candidate)
    if champion_before and champion_before != candidate:
        mlflow_client.set_model_version_tag(name, champion_before, "ptr.promotion.replaced_by", candidate)


def _versions(mlflow_client, name: str, version: str | None) -> tuple[str, str | None]:
    """The candidate's version (``version``, else the ``candidate`` alias) and the champion's, if any."""
    candidate = get_version(mlflow_client, name, alias=None if version else CANDIDATE, version=version)
    champion = _alias_or_none(mlflow_client, name, CHAMPION)
    return str(candidate.version), str(champion.version) if champion else None


def _decide(
    mlflow_client,
    name: str,
    candidate: str,
    champion: str | None,
    rule: _Rule,
    report: dict,
    reference: Reference | None = None,
):
    """The rule applied to both versions' evaluations (their runs are noted in ``report``), or to
    the candidate's and the reference's while there is no champion."""
    key = rule.primary.key
    cand = evaluated(mlflow_client, name, candidate)
    if key not in cand.metrics:
        raise _missing_eval(name, candidate, key)
    report["candidate_eval_run"] = cand.sources[key]
    if champion == candidate:
        return gate.Decision(True, f"version {candidate} is already the champion")
    if champion is None and reference is not None:
        report["reference"] = reference.label
        return gate.decide(
            primary=rule.primary,
            candidate_metrics=cand.metrics,
            champion_metrics=reference.metrics,
            candidate_questions=question_scores(mlflow_client, cand.sources[key], rule.primary),
            champion_questions=reference.questions,
            guards=rule.guards,
            min_delta=rule.min_delta,
            n_boot=rule.n_boot,
            seed=rule.seed,
            confidence=rule.confidence,
            versus=reference.label,
        )
    if champion is None:
        return gate.decide(primary=rule.primary, candidate_metrics=cand.metrics, champion_metrics=None)
    champ = evaluated(mlflow_client, name, champion)
    if key not in champ.metrics:
        raise _missing_eval(name, champion, key)
    report["champion_eval_run"] = champ.sources[key]
    return gate.decide(
        primary=rule.primary,
        candidate_metrics=cand.metrics,
        champion_metrics=champ.metrics,
        candidate_questions=question_scores(mlflow_client, cand.sources[key], rule.primary),
        champion_questions=question_scores(mlflow_client, champ.sources[key], rule.primary),
        guards=rule.guards,
        min_delta=rule.min_delta,
        n_boot=rule.n_boot,
        seed=rule.seed,
        confidence=rule.confidence,
    )


def _record(mlflow_client, name, candidate, champion, rule: _Rule, decision, report: dict) -> None:
    """A ``promote`` run with the evidence, tags on the candidate version, and the alias moved."""
    params = {
        "name": name,
        "candidate_version": candidate,
        "champion_version": champion or "none",
        **rule.params(),
    }
    outcome = "promoted" if decision.promote else "kept"
    tags = {"ptr.model_name": name, "ptr.model_version": candidate, "ptr.promotion.decision": outcome}
    with runs.open_run("promote", params, tags, tracking_uri(fallback=True)) as run:
        figures = {k: decision.primary[k] for k in ("delta", "lo", "hi", "n") if k in decision.primary}
        run.log_metrics(
            {f"promote.{k}": v for k, v in figures.items()} | {"promote.promoted": float(decision.promote)}
        )
        run.log_dict(report, "promotion.json")
        run.log_text(summary(report), "summary.md")
        _tag_version(mlflow_client, name, candidate, report, outcome, run.run_id)


def _alias_or_none(mlflow_client, name: str, alias: str):
    try:
        return get_version(mlflow_client, name, alias=alias)
    except PtrError:
        return None


def _tag_version(mlflow_client, name: str, version: str, report: dict, outcome: str, run_id: str) -> None:
    decision = report["decision"]
    tags = {
        "ptr.promotion.decision": outcome,
        "ptr.promotion.reason": decision["reason"],
        "ptr.promotion.champion_before": report["champion"] or "none",
        "ptr.promotion.run": run_id,
        "ptr.promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ptr.promotion.evidence": json.dumps({"primary": decision["primary"], "guards": decision["guards"]}),
    }
    for key in ("metric", "delta", "lo", "hi", "n"):
        if key in decision["primary"]:
            tags[f"ptr.promotion.{key}"] = decision["primary"][key]
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value)[:_TAG_LIMIT])


def summary(report: dict) -> str:
    """The decision in a few readable lines (printed, and logged as ``summary.md``)."""
    d = report["decision"]
    lines = [
        f"# Promotion of {report['name']} version {report['candidate']}",
        "",
        f"- champion before: {report['champion'] or 'none'}",
        f"- decision: **{'promoted' if d['promote'] else 'champion kept'}**: {d['reason']}",
    ]
    p = d.get("primary") or {}
    if report.get("reference"):
        lines.append(f"- no champion yet: compared with the {report['reference']} of the same run")
    if "delta" in p:
        versus = p.get("versus", "champion")
        lines.append(
            f"- {p['metric']}: candidate {p['candidate']:.4f}, {versus} {p['champion']:.4f}; paired difference "
            f"{p['delta']:+.4f}, {p['confidence']:.0%} interval [{p['lo']:+.4f}, {p['hi']:+.4f}] over {p['n']} "
            f"questions (bootstrap {p['n_boot']}, seed {p['seed']})"
        )
    for g in d.get("guards") or []:
        lines.append(
            f"- guard {g['metric']}: candidate {g['candidate']:.4f}, {p.get('versus', 'champion')} "
            f"{g['champion']:.4f}, "
            f"drop {g['drop']:+.4f} (tolerance {g['tolerance']:g}): {'ok' if g['ok'] else 'FAILED'}"
        )
    return "\n".join(lines) + "\n"


def write_report(path: str | os.PathLike, report: dict) -> None:
    write_json(path, report)
