"""`ptr encode`: thought data (or {q, a} / chat / raw text) → training shards.

The paper's encoder flags, unchanged, plus --input, --overflow, --refine_prompt and --num_proc.
Prints the summary (also written to <output_path>/<corpus_name>/summary.json) as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import get_args

from ptr.encode.encoder import EncodeConfig, config, encode
from ptr.encode.overflow import Overflow
from ptr.errors import cli_errors


def _default(name: str):
    return EncodeConfig.model_fields[name].default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptr encode", description=__doc__)
    p.add_argument("--tokenizer_path", required=True, help="any model reference ptr.models accepts")
    p.add_argument("--output_path", required=True, help="folder (or s3:// prefix) that gets <corpus_name>/")
    p.add_argument(
        "--input",
        help="a JSONL file (or .gz), a JSON array file, a folder of *.jsonl files, an s3:// URI of them, "
        "or hf:dataset",
    )
    p.add_argument(
        "--data_loader_path", help="a Python file defining load(path) -> iterable of dicts (gets --input)"
    )
    p.add_argument("--corpus_name", default=_default("corpus_name"))
    p.add_argument("--encode_type", choices=("ptr", "qa", "pretrain"), default=_default("encode_type"))
    p.add_argument("--max_length", type=int, default=_default("max_length"))
    p.add_argument(
        "--merge_data", action="store_true", help="pack examples into max_length sequences (best fit)"
    )
    p.add_argument(
        "--save_dtype",
        choices=("int32", "int16", "uint16"),
        help="token dtype (default: uint16 when the vocabulary fits, else int32)",
    )
    p.add_argument("--tokens_per_file", default=_default("tokens_per_file"), help="tokens per shard (5e8)")
    p.add_argument(
        "--overflow",
        choices=get_args(Overflow),
        default=_default("overflow"),
        help="an example longer than --max_length is dropped, truncated, or (shorten_thoughts) its thoughts "
        "are shortened to fit, the final answer kept whole; counted either way",
    )
    p.add_argument(
        "--refine_prompt",
        help="user turn between attempts (default: the one the records name, as ptr thoughts writes it, "
        "else the paper's); records that name another stop the run",
    )
    p.add_argument("--num_proc", type=int, help="worker processes (default: one per core from 4 cores)")
    return p


def config_from_args(args) -> EncodeConfig:
    return config(**vars(args))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(parser().parse_args(argv))
    summary = encode(cfg, argv=argv)
    print(json.dumps(summary))
    return 0
