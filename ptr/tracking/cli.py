"""``ptr register``, ``ptr promote`` and ``ptr compare``.

Both need a model registry: the MLflow server in ``MLFLOW_TRACKING_URI``, else the local sqlite
store under ``.ptr/`` (so they work offline).
"""

from __future__ import annotations

import argparse
import sys

from ptr.errors import cli_errors
from ptr.files import write_json
from ptr.tracking import gate
from ptr.tracking.compare import compare
from ptr.tracking.model_registry import register_model
from ptr.tracking.promote import promote, summary, write_report
from ptr.tracking.store import tracking_uri

EXIT_PROMOTED = 0
EXIT_KEPT = 3  # the champion stays: not an error, but a pipeline may want to tell


@cli_errors
def register_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ptr register",
        description="Log an exported Hugging Face model directory to MLflow (weights copied, never loaded), "
        "register a new version and point an alias (default: candidate) at it.",
    )
    parser.add_argument(
        "--model_path", required=True, help="a local model directory, s3://bucket/prefix or pvc://claim/path"
    )
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--run_id", help="the pipeline run's correlation id (default: $PTR_RUN_ID)")
    parser.add_argument(
        "--alias", default="candidate", help="alias to set on the new version (default: candidate)"
    )
    parser.add_argument(
        "--task", default="text-generation", help="transformers pipeline task recorded with the model"
    )
    parser.add_argument("--output", help="write {name, version, uri, …} as JSON here")
    args = parser.parse_args(argv)

    info = register_model(
        args.model_path, args.name, ptr_run_id=args.run_id, alias=args.alias, task=args.task
    )
    if args.output:
        write_json(args.output, info)
    print(
        f"registered {info['uri']} (alias {info['alias']}: models:/{info['name']}@{info['alias']}) "
        f"in {tracking_uri(fallback=True)}"
    )
    return 0


@cli_errors
def promote_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ptr promote",
        description="Promote a candidate version to champion when its evaluation beats the champion's: better "
        "on the primary metric with the lower bootstrap bound of the paired difference above --min_delta, "
        "and no guard metric dropping beyond its tolerance. The first model is promoted. "
        "Exit status: 0 promoted, 3 champion kept, 2 error.",
    )
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--version", help="the candidate version (default: the version with alias candidate)")
    parser.add_argument(
        "--primary", required=True, help="primary metric, such as gsm8k.round3 (eval.gsm8k.round3)"
    )
    parser.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="METRIC:TOL",
        help="a metric that must not drop by more than TOL, such as mmlu.round1:0.01 (repeatable)",
    )
    parser.add_argument(
        "--min_delta", type=float, default=0.0, help="the lower bound must exceed this (default 0)"
    )
    parser.add_argument("--n_boot", type=int, default=gate.N_BOOT, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--confidence", type=float, default=gate.CONFIDENCE, help="interval level (0.95)")
    parser.add_argument("--output", help="write the decision and its evidence as JSON here")
    args = parser.parse_args(argv)
    # Checked before touching MLflow, so a typo fails in a second.
    gate.parse_metric(args.primary)
    for guard in args.guard:
        gate.parse_guard(guard)
    if args.n_boot < 100 or not 0.5 <= args.confidence < 1:
        parser.error("--n_boot must be at least 100 and --confidence in [0.5, 1)")

    promotion = promote(
        args.name,
        version=args.version,
        primary=args.primary,
        guards=args.guard,
        min_delta=args.min_delta,
        n_boot=args.n_boot,
        seed=args.seed,
        confidence=args.confidence,
    )
    if args.output:
        write_report(args.output, promotion.report)
    print(summary(promotion.report), end="")
    if not promotion.promoted:
        print(f"champion kept: {promotion.decision.reason}", file=sys.stderr)
    return EXIT_PROMOTED if promotion.promoted else EXIT_KEPT


@cli_errors
def compare_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ptr compare",
        description="The pipeline runs of an MLflow experiment side by side: one Markdown table (model × task × "
        "round: score with its 95%% interval, round-to-round change with its paired-bootstrap interval, answers "
        "fixed and broken) and one figure (score vs round, a panel per task, a line per model), written to "
        "--output and logged to a compare run of the experiment.",
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN",
        help="pipeline runs by label (run.name), run name or run id (default: the newest of each label)",
    )
    parser.add_argument(
        "--output", default=".", help="folder for comparison.md, metrics.json, score_vs_round.png"
    )
    parser.add_argument("--no_log", action="store_true", help="do not log the comparison to MLflow")
    args = parser.parse_args(argv)
    result = compare(args.experiment, args.runs, args.output, log=not args.no_log)
    print(result["table"], end="")
    print(
        f"\nwritten: {', '.join(result['files'])}"
        + (f"; MLflow run {result['run_id']}" if result["run_id"] else "")
    )
    return 0
