"""The promote step: the gate in MLflow; on a cluster, production follows a new champion. The run's
headline figures go on the pipeline's parent run."""

from __future__ import annotations

from pathlib import Path

from ptr.cluster import serving as cluster_serving
from ptr.evaluate.results import EvalResults, load_results
from ptr.files import write_json
from ptr.pipeline.config import section
from ptr.pipeline.steps.common import announce, describe_run, read_record, set_context, timed
from ptr.records import iter_jsonl
from ptr.tracking import gate, log_to_pipeline
from ptr.tracking.promote import Reference, crown, summary
from ptr.tracking.promote import promote as run_promote


def promote(
    run: dict,
    promote: dict,
    registration_dir: str,
    base_dir: str,
    results_dir: str,
    out_dir: str,
    run_id: str,
) -> dict:
    """Compare the candidate with the champion in MLflow — with no champion yet, with the base
    model's evaluation from this run (``base_dir``). On a cluster, a winner is copied to its
    version's folder, production rolls out there, and only once it serves the new model does the
    ``champion`` alias move (a failed rollout leaves alias and production as they were); the
    candidate's InferenceService is deleted at the end either way. Writes ``decision.json``; puts the
    candidate's and the base model's scores, their differences and the decision on the parent run."""
    run, promote = section("run", run), section("promote", promote)
    set_context(run, run_id)
    describe_run(run=run, promote=promote)
    registration = read_record(registration_dir, "registration.json")
    announce("promote", promote)
    base = load_results(Path(base_dir) / "base")
    on_cluster = run.runtime == "kubernetes"
    try:
        with timed("promote", run, run_id):
            promotion = run_promote(
                registration["name"],
                version=registration["version"],
                primary=promote.primary,
                guards=[f"{metric}:{tolerance:g}" for metric, tolerance in promote.guards.items()],
                min_delta=promote.min_delta,
                move_alias=not on_cluster,
                reference=reference(base, promote.primary),
            )
        print(summary(promotion.report), end="", flush=True)
        decision = {"promoted": promotion.promoted, "reason": promotion.decision.reason, **registration}
        if promotion.promoted and on_cluster:
            served = cluster_serving.publish_version(
                run.kube, registration["model"], name=registration["name"], version=registration["version"]
            )
            decision["production"] = cluster_serving.follow_champion(
                run.kube, {**registration, "model": served}, model_name=run.model_name, run_id=run_id
            )
            crown(promotion.name, promotion.candidate, promotion.champion_before)
    finally:
        if on_cluster:
            cluster_serving.remove_candidate(run.kube, model_name=run.model_name, run_id=run_id)
    write_json(Path(out_dir) / "decision.json", decision)
    trained = load_results(Path(results_dir) / "trained")
    log_to_pipeline(
        metrics={**headline(base, trained), "promoted": float(promotion.promoted)},
        tags={
            "ptr.promotion.decision": "promoted" if promotion.promoted else "kept",
            "ptr.promotion.reason": promotion.decision.reason,
            "ptr.model_version": f"{registration['name']}/{registration['version']}",
        },
    )
    return decision


def reference(base: EvalResults, primary: str) -> Reference | None:
    """The base model's evaluation as the gate's reference, or None when it lacks the primary task."""
    metric = gate.parse_metric(primary)
    predictions = base.output_dir / f"{metric.task}.predictions.jsonl"
    if metric.task not in base.tasks or not predictions.exists():
        return None
    questions = gate.question_scores(list(iter_jsonl(predictions)), metric, predictions)
    return Reference("base model", base.mlflow_metrics(), questions)


def headline(base: EvalResults, trained: EvalResults) -> dict[str, float]:
    """``candidate.<task>.round<k>``, ``base.<task>.round<k>`` (and their ``delta<k>``, the change from
    round k−1), and ``vs_base.<task>.round<k>`` (candidate − base): scores as fractions, like the
    evaluation runs' ``eval.*`` metrics."""
    figures: dict[str, float] = {}
    for who, results in (("candidate", trained), ("base", base)):
        for key, value in results.mlflow_metrics().items():
            name = key.removeprefix("eval.")
            if name.count(".") == 1 and not name.endswith(("_lo", "_hi")):  # primary metric, no bounds
                figures[f"{who}.{name}"] = value
    for key, value in list(figures.items()):
        if key.startswith("candidate.") and ".round" in key:
            other = figures.get("base." + key.removeprefix("candidate."))
            if other is not None:
                figures["vs_base." + key.removeprefix("candidate.")] = value - other
    return figures
