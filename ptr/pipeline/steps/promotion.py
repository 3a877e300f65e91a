"""The promote step: the gate in MLflow; on a cluster, production follows a new champion."""

from __future__ import annotations

from pathlib import Path

from ptr.cluster import serving as cluster_serving
from ptr.files import write_json
from ptr.pipeline.config import section
from ptr.pipeline.steps.common import announce, read_record, set_context
from ptr.tracking.promote import promote as run_promote
from ptr.tracking.promote import summary


def promote(run: dict, promote: dict, registration_dir: str, out_dir: str, run_id: str) -> dict:
    """Compare the candidate with the champion in MLflow; when promoted on a cluster, point the
    production InferenceService at the new champion. Writes ``decision.json``."""
    run, promote = section("run", run), section("promote", promote)
    set_context(run, run_id)
    registration = read_record(registration_dir, "registration.json")
    announce("promote", promote)
    promotion = run_promote(
        registration["name"],
        version=registration["version"],
        primary=promote.primary,
        guards=[f"{metric}:{tolerance:g}" for metric, tolerance in promote.guards.items()],
        min_delta=promote.min_delta,
    )
    print(summary(promotion.report), end="", flush=True)
    decision = {"promoted": promotion.promoted, "reason": promotion.decision.reason, **registration}
    if promotion.promoted and run.runtime == "kubernetes":
        decision["production"] = cluster_serving.follow_champion(
            run.kube, registration, model_name=run.model_name, run_id=run_id
        )
    write_json(Path(out_dir) / "decision.json", decision)
    return decision
