"""The promote step: the gate in MLflow; on a cluster, production follows a new champion."""

from __future__ import annotations

from pathlib import Path

from ptr.cluster import serving as cluster_serving
from ptr.files import write_json
from ptr.pipeline.config import section
from ptr.pipeline.steps.common import announce, read_record, set_context
from ptr.tracking.promote import crown, summary
from ptr.tracking.promote import promote as run_promote


def promote(run: dict, promote: dict, registration_dir: str, out_dir: str, run_id: str) -> dict:
    """Compare the candidate with the champion in MLflow. On a cluster, a winner is copied to its
    version's folder, production rolls out there, and only once it serves the new model does the
    ``champion`` alias move (a failed rollout leaves alias and production as they were); the
    candidate's InferenceService is deleted at the end either way. Writes ``decision.json``."""
    run, promote = section("run", run), section("promote", promote)
    set_context(run, run_id)
    registration = read_record(registration_dir, "registration.json")
    announce("promote", promote)
    on_cluster = run.runtime == "kubernetes"
    try:
        promotion = run_promote(
            registration["name"],
            version=registration["version"],
            primary=promote.primary,
            guards=[f"{metric}:{tolerance:g}" for metric, tolerance in promote.guards.items()],
            min_delta=promote.min_delta,
            move_alias=not on_cluster,
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
    return decision
