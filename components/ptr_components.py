"""Component definitions. Each body is shipped to the container as source, so it imports what it
uses inside the function and does nothing but call its step and record the outputs."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from ptr.images import DEFAULT_IMAGE

component = dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)


@component
def make_queries(run: dict, data: dict, run_id: str, queries: Output[Dataset]):
    """Collect, deduplicate and decontaminate open-domain queries (queries.jsonl)."""
    from ptr.pipeline import steps

    queries.metadata.update(steps.queries(run, data, queries.path, run_id))


@component
def make_thoughts(run: dict, data: dict, run_id: str, queries: Input[Dataset], thoughts: Output[Dataset]):
    """Weak models write attempts, the strong model the final answer; filters keep consistent chains."""
    from ptr.pipeline import steps

    thoughts.metadata.update(steps.thoughts(run, data, queries.path, thoughts.path, run_id))


@component
def encode_thoughts(run: dict, train: dict, run_id: str, thoughts: Input[Dataset], shards: Output[Dataset]):
    """Tokenize the kept thoughts into packed training shards with segment codes."""
    from ptr.pipeline import steps

    shards.metadata.update(steps.encode(run, train, thoughts.path, shards.path, run_id))


@component
def train_model(run: dict, train: dict, run_id: str, shards: Input[Dataset], model: Output[Model]):
    """Weighted thought-mask fine-tuning: torchrun locally, a multi-node PyTorchJob on a cluster."""
    from ptr.pipeline import steps

    model.metadata.update(steps.train(run, train, shards.path, model.path, run_id))


@component
def register_model(run: dict, run_id: str, model: Input[Model], registration: Output[Artifact]):
    """Register the exported model in MLflow as a new version with alias ``candidate``."""
    from ptr.pipeline import steps

    registration.metadata.update(steps.register(run, model.path, registration.path, run_id))


@component
def deploy_model(
    run: dict,
    evaluate: dict,
    run_id: str,
    model: Input[Model],
    registration: Input[Artifact],
    endpoint: Output[Artifact],
):
    """Serve the candidate: ptr serve on 127.0.0.1 locally, an InferenceService on a cluster."""
    from ptr.pipeline import steps

    endpoint.metadata.update(
        steps.deploy(run, evaluate, model.path, registration.path, endpoint.path, run_id)
    )


@component
def evaluate_base(
    run: dict, evaluate: dict, train: dict, promote: dict, run_id: str, results: Output[Dataset]
):
    """Score the base model over R refinement rounds, for comparison (and fail early when the
    promotion metric's task has no data)."""
    from ptr.pipeline import steps

    steps.evaluate_base(run, evaluate, train, results.path, run_id, promote=promote)


@component
def evaluate_candidate(
    run: dict,
    evaluate: dict,
    run_id: str,
    endpoint: Input[Artifact],
    base: Input[Dataset],
    results: Output[Dataset],
    scores: Output[Metrics],
    report: Output[Markdown],
):
    """Score the served candidate over R rounds; report it beside the base model."""
    from ptr.pipeline import steps

    trained, table = steps.evaluate(run, evaluate, endpoint.path, base.path, results.path, run_id)
    for task, metrics in trained.items():
        for r in metrics.get("rounds", []):
            scores.log_metric(f"{task}.round{r['round']}", float(r["score"]))
    with open(report.path, "w") as f:
        f.write(table)


@component
def promote_candidate(
    run: dict,
    promote: dict,
    run_id: str,
    registration: Input[Artifact],
    base: Input[Dataset],
    results: Input[Dataset],
    decision: Output[Artifact],
):
    """Move the champion alias when the candidate wins (with no champion yet: when it beats the base
    model's evaluation); on a cluster production follows the champion."""
    from ptr.pipeline import steps

    decision.metadata.update(
        steps.promote(run, promote, registration.path, base.path, results.path, decision.path, run_id)
    )
