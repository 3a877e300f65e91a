"""`ptr eval` (also `python -m ptr.evaluate`): ask, refine for R rounds, score every round.

The paper's flags are kept as they were; ``--model_path`` may name several models (``name=path``),
evaluated one after another with their results side by side. ``--score_only --predictions FILE…``
re-scores saved generations without a model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch loads: OpenMP threads that spin while idle slow every op down by orders of magnitude when
# the cores are shared (a CI runner, a pod with a CPU quota); sleeping threads cost little here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError  # noqa: E402

from ptr.errors import PtrError, cli_errors, invalid  # noqa: E402
from ptr.evaluate.config import FORMAT_TYPES, MODEL_TYPES, EvalConfig, default_model_name, load_task_configs  # noqa: E402
from ptr.evaluate.results import plot_scores, summary_markdown, summary_table  # noqa: E402
from ptr.evaluate.runner import evaluate, score_predictions, served_model_name  # noqa: E402
from ptr.files import atomic_path  # noqa: E402
from ptr.inference.cli import add_engine_memory_args  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptr eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model_path", nargs="+", help="model reference(s); several as name=path pairs")
    p.add_argument("--model_type", choices=MODEL_TYPES, default="transformers")
    p.add_argument(
        "--format_type",
        choices=FORMAT_TYPES,
        default="auto",
        help="default: plain 'Question: … Answer:' text; chat: the chat template; auto: chat where the model has a template",
    )
    p.add_argument("--endpoint", help="base URL for --model_type openai / kserve")
    p.add_argument("--tasks", nargs="+", default=["arith"], help="task names, 'arc' (both ARC sets) or 'all'")
    p.add_argument(
        "--config_path", help="config.json: per task num_fewshots, limit (null or 0 = all), options"
    )
    p.add_argument(
        "--data_dir",
        default=os.environ.get("PTR_DATA_DIR"),
        help="benchmark data folder (default $PTR_DATA_DIR; else the HF hub)",
    )
    p.add_argument("--output_path", default="out")
    p.add_argument("--save_name", help="results folder under --output_path (default: the model's name)")
    p.add_argument(
        "--save_infer_texts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <task>.predictions.jsonl",
    )
    p.add_argument(
        "--save_infer_results",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <task>.metrics.json",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, help="default: each task's own")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="0 or -1 = no top-k cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--refine_prompt",
        help="the refine turn (default: the one the model was trained with, from its ptr_train.json, "
        "else the paper's)",
    )
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    add_engine_memory_args(p)
    p.add_argument(
        "--embedding_model", default="minilm", help="XSum similarity: minilm (offline) or e.g. BAAI/bge-m3"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--no_plot", action="store_true")
    p.add_argument("--score_only", action="store_true", help="re-score --predictions files; no model")
    p.add_argument("--predictions", nargs="+", help="predictions JSONL file(s) for --score_only")
    return p


def parse_models(values: list[str]) -> list[tuple[str | None, str]]:
    """``["a=path1", "b=path2"]`` → ``[("a", "path1"), ("b", "path2")]``; a bare reference has no name."""
    models = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name and "/" not in name and not name.startswith("."):
            models.append((name, path))
        else:
            models.append((None, value))
    names = [n or default_model_name(p) for n, p in models]
    if len(set(names)) != len(names):
        raise PtrError(
            f"--model_path: two models would share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}; use name=path pairs"
        )
    return models


def _config(args, model_name: str | None, model_path: str, task_configs, several: bool) -> EvalConfig:
    name = model_name or default_model_name(model_path)
    save_name = args.save_name
    if several:
        save_name = f"{args.save_name}_{name}" if args.save_name else name
    try:
        return EvalConfig(
            model_path=model_path,
            model_name=name,
            model_type=args.model_type,
            format_type=args.format_type,
            endpoint=args.endpoint,
            tasks=args.tasks,
            task_configs=task_configs,
            data_dir=args.data_dir or None,
            output_path=args.output_path,
            save_name=save_name,
            save_infer_texts=args.save_infer_texts,
            save_infer_results=args.save_infer_results,
            rounds=args.rounds,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=max(args.top_k, 0),
            seed=args.seed,
            refine_prompt=args.refine_prompt,
            batch_size=args.batch_size,
            dtype=args.dtype,
            kv_cache_gib=args.kv_cache_gib,
            gpu_memory_share=args.gpu_memory_share,
            embedding_model=args.embedding_model,
            bootstrap=args.bootstrap,
            plot=not args.no_plot,
        )
    except ValidationError as err:
        raise invalid(err, flags=True) from None


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.rounds < 1:
        raise PtrError("--rounds must be >= 1")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise PtrError(f"--data_dir {args.data_dir}: no such folder")
    task_configs = load_task_configs(args.config_path) if args.config_path else {}

    if args.score_only:
        if not args.predictions:
            raise PtrError("--score_only needs --predictions FILE…")
        out_dir = Path(args.output_path) / args.save_name if args.save_name else None
        results = score_predictions(
            args.predictions,
            output_dir=out_dir,
            task_configs=task_configs,
            data_dir=args.data_dir or None,
            seed=args.seed,
            n_boot=args.bootstrap,
            embedding_model=args.embedding_model,
            plot=not args.no_plot,
        )
        print(summary_table([results]))
        print(f"wrote {results.output_dir}", file=sys.stderr)
        return 0

    if not args.model_path and args.model_type in ("openai", "kserve") and args.endpoint:
        args.model_path = [served_model_name(args.model_type, args.endpoint)]  # the server's only model
    if not args.model_path:
        raise PtrError("--model_path is required (or --score_only with --predictions)")
    models = parse_models(args.model_path)
    several = len(models) > 1
    configs = [_config(args, name, path, task_configs, several) for name, path in models]
    all_results = []
    for config in configs:
        results = evaluate(config)
        all_results.append(results)
        print(f"wrote {results.output_dir}", file=sys.stderr)
    if several:  # side by side
        out = Path(args.output_path) / (f"{args.save_name}_summary.md" if args.save_name else "summary.md")
        with atomic_path(out) as tmp:
            tmp.write_text(summary_markdown(all_results), encoding="utf-8")
        if not args.no_plot:
            plot_scores(all_results, out.with_suffix(".png"))
    print(summary_table(all_results))
    return 0
