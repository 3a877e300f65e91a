"""`ptr <stage> …`: one command, one subcommand per stage.

Each stage module exposes ``main(argv) -> int`` and is imported only when its subcommand runs,
so `ptr refine` does not pay for importing MLflow or KServe.
"""

from __future__ import annotations

import importlib
import sys

from ptr import __version__

# name -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "refine": ("ptr.inference.cli:main", "answer, then refine for R rounds (one question or a JSONL batch)"),
    "queries": ("ptr.data.queries:main", "collect, deduplicate and decontaminate open-domain queries"),
    "generate": ("ptr.data.generate:main", "the paper's generic sampler: prompts in, completions out"),
    "thoughts": ("ptr.data.thoughts:main", "weak models write attempts, a strong model the final answer"),
    "encode": ("ptr.encode.cli:main", "tokenize thought data into training shards"),
    "train": ("ptr.train.cli:main", "weighted thought-mask fine-tuning on DeepSpeed"),
    "eval": ("ptr.evaluate.cli:main", "score R refinement rounds on the benchmarks"),
    "serve": ("ptr.serve.cli:main", "serve the refining model with KServe"),
    "register": ("ptr.tracking.cli:register_main", "log a model to MLflow and register a version"),
    "promote": ("ptr.tracking.cli:promote_main", "promote a candidate to champion when its metrics win"),
    "compare": (
        "ptr.tracking.cli:compare_main",
        "pipeline runs of an MLflow experiment side by side, per round",
    ),
    "cluster": ("ptr.cluster.check:cluster_main", "check a cluster against a pipeline config before a run"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ptr <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`ptr <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ptr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
