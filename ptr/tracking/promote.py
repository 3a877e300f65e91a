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
from ptr.records import iter_jsonl
from ptr.tracking import promotion, tracking_uri
from ptr.tracking.registry import CANDIDATE, CHAMPION, client, get_version

EXIT_PROMOTED = 0
EXIT_KEPT = 3
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


def question_scores(mlflow_client, run_id: str, metric: promotion.MetricName) -> dict[str, float]:
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
            return promotion.question_scores(records, metric, shown)
        finally:
            Path(local).unlink(missing_ok=True)


def _missing_eval(name: str, version: str, metric: str) -> PtrError:
    return PtrError(
        f"{name} version {version} has no finished evaluation with {metric}: run "
        f"`ptr eval --model_path models:/{name}/{version} …` with tracking on (MLFLOW_TRACKING_URI or PTR_TRACKING=local)"
    )


def promote(
    name: str,
    *,
    version: str | None = None,
    primary: str,
    guards: list[str] = (),
    min_delta: float = 0.0,
    n_boot: int = promotion.N_BOOT,
    seed: int = 0,
    confidence: float = promotion.CONFIDENCE,
) -> tuple[int, dict]:
    """Decide and act. Returns ``(exit code, report)``; raises PtrError when evidence is missing."""
    from ptr.tracking import runs

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files: no bars
    primary_metric = promotion.parse_metric(primary)
    guard_specs = [promotion.parse_guard(g) for g in guards]
    mlflow_client = client()
    candidate_mv = get_version(mlflow_client, name, alias=None if version else CANDIDATE, version=version)
    cand_version = str(candidate_mv.version)
    champion_mv = _alias_or_none(mlflow_client, name, CHAMPION)
    champ_version = str(champion_mv.version) if champion_mv else None

    report = {"name": name, "candidate": cand_version, "champion": champ_version}
    candidate = evaluated(mlflow_client, name, cand_version)
    if primary_metric.key not in candidate.metrics:
        raise _missing_eval(name, cand_version, primary_metric.key)
    report["candidate_eval_run"] = candidate.sources[primary_metric.key]

    if champ_version == cand_version:
        decision = promotion.Decision(True, f"version {cand_version} is already the champion")
        report["decision"] = decision.as_dict()
        return EXIT_PROMOTED, report

    if champ_version is None:
        decision = promotion.decide(
            primary=primary_metric, candidate_metrics=candidate.metrics, champion_metrics=None
        )
    else:
        champion = evaluated(mlflow_client, name, champ_version)
        if primary_metric.key not in champion.metrics:
            raise _missing_eval(name, champ_version, primary_metric.key)
        report["champion_eval_run"] = champion.sources[primary_metric.key]
        decision = promotion.decide(
            primary=primary_metric,
            candidate_metrics=candidate.metrics,
            champion_metrics=champion.metrics,
            candidate_questions=question_scores(
                mlflow_client, candidate.sources[primary_metric.key], primary_metric
            ),
            champion_questions=question_scores(
                mlflow_client, champion.sources[primary_metric.key], primary_metric
            ),
            guards=guard_specs,
            min_delta=min_delta,
            n_boot=n_boot,
            seed=seed,
            confidence=confidence,
        )
    report["decision"] = decision.as_dict()

    params = {
        "name": name,
        "candidate_version": cand_version,
        "champion_version": champ_version or "none",
        "primary": primary_metric.key,
        "guards": ",".join(guards) or "none",
        "min_delta": min_delta,
        "n_boot": n_boot,
        "seed": seed,
        "confidence": confidence,
    }
    outcome = "promoted" if decision.promote else "kept"
    tags = {"ptr.model_name": name, "ptr.model_version": cand_version, "ptr.promotion.decision": outcome}
    with runs.open_run("promote", params, tags, tracking_uri(fallback=True)) as run:
        figures = {k: decision.primary[k] for k in ("delta", "lo", "hi", "n") if k in decision.primary}
        run.log_metrics(
            {f"promote.{k}": v for k, v in figures.items()} | {"promote.promoted": float(decision.promote)}
        )
        run.log_dict(report, "promotion.json")
        run.log_text(summary(report), "summary.md")
        _tag_version(mlflow_client, name, cand_version, report, outcome, run.run_id)
        if decision.promote:
            mlflow_client.set_registered_model_alias(name, CHAMPION, cand_version)
            if champ_version:
                mlflow_client.set_model_version_tag(
                    name, champ_version, "ptr.promotion.replaced_by", cand_version
                )
    return (EXIT_PROMOTED if decision.promote else EXIT_KEPT), report


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
    if "delta" in p:
        lines.append(
            f"- {p['metric']}: candidate {p['candidate']:.4f}, champion {p['champion']:.4f}; paired difference "
            f"{p['delta']:+.4f}, {p['confidence']:.0%} interval [{p['lo']:+.4f}, {p['hi']:+.4f}] over {p['n']} "
            f"questions (bootstrap {p['n_boot']}, seed {p['seed']})"
        )
    for g in d.get("guards") or []:
        lines.append(
            f"- guard {g['metric']}: candidate {g['candidate']:.4f}, champion {g['champion']:.4f}, "
            f"drop {g['drop']:+.4f} (tolerance {g['tolerance']:g}): {'ok' if g['ok'] else 'FAILED'}"
        )
    return "\n".join(lines) + "\n"


def write_report(path: str | os.PathLike, report: dict) -> None:
    from ptr.jsonl import write_json

    write_json(path, report)
