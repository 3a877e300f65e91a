"""`ptr queries`: collect open-domain queries, drop empty, over-long, duplicate and contaminated ones.

Reads JSONL/JSON files, ``s3://`` objects, Hugging Face datasets or ``builtin`` (the project's own
few dozen queries) and writes ``queries.jsonl`` records ``{id, query, source}``, with the counts per
reason in ``<output>.summary.json``. Ids are content hashes, so the same query keeps its id across
runs and samples (which is what lets ``ptr thoughts`` resume).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptr.argv import config_argv
from ptr.data import decontam, outputs
from ptr.data.config import build, default
from ptr.data.sources import BUILTIN, read_queries
from ptr.errors import cli_errors
from ptr.files import write_json
from ptr.jsonl import write_jsonl
from ptr.records import QUERY_FIELDS

# Reasons a query is dropped, in the order the checks run.
REASONS = ("empty", "too_short", "too_long", "duplicate", "near_duplicate", "contaminated", "not_sampled")


class QueriesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(default_factory=lambda: [BUILTIN], min_length=1)
    output_path: str
    field: str | None = None  # None: the first of ptr.records.QUERY_FIELDS present
    split: str = "train"  # for Hugging Face datasets
    decontaminate_dir: str | None = None
    ngram: int = Field(13, ge=1)
    min_ngram: int = Field(8, ge=1)  # shorter eval questions are matched whole down to this length
    min_words: int = Field(1, ge=1)
    max_words: int = Field(512, ge=1)
    limit: int | None = Field(None, ge=1)
    seed: int = 0

    def to_argv(self) -> list[str]:
        """``ptr queries`` flags that give back this config."""
        return config_argv(self, names={"inputs": "input"})

    @field_validator("field")
    @classmethod
    def _known_field(cls, v):
        if v is not None and not v.strip():
            raise ValueError("field must be a non-empty name")
        return v


def query_id(text: str) -> str:
    return "q" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:15]


def run_queries(config: QueriesConfig) -> dict:
    """Build the queries file; returns the summary (also written beside the output)."""
    started = time.perf_counter()
    staged = outputs.staging_path(config.output_path)
    raw = [q for spec in config.inputs for q in read_queries(spec, field=config.field, split=config.split)]
    index = None
    if config.decontaminate_dir:
        index = decontam.NgramIndex(
            decontam.eval_questions(config.decontaminate_dir), n=config.ngram, min_words=config.min_ngram
        )

    dropped: Counter = Counter()
    kept, seen_exact, seen_norm = [], set(), set()
    for q in raw:
        text = q.text.strip()
        n_words = len(decontam.words(text))
        if n_words == 0:
            reason = "empty"
        elif n_words < config.min_words:
            reason = "too_short"
        elif n_words > config.max_words:
            reason = "too_long"
        elif text in seen_exact:
            reason = "duplicate"
        elif (norm := decontam.normalize(text)) in seen_norm:
            reason = "near_duplicate"
        else:
            reason = None
            seen_exact.add(text)
            seen_norm.add(norm)
            kept.append({"id": query_id(text), "query": text, "source": q.source})
        if reason:
            dropped[reason] += 1

    contaminated_by: Counter = Counter()
    if index is not None and kept:
        hits = index.match([r["query"] for r in kept])
        contaminated_by.update(h for h in hits if h)
        dropped["contaminated"] = sum(contaminated_by.values())
        kept = [r for r, h in zip(kept, hits, strict=True) if h is None]

    if config.limit is not None and len(kept) > config.limit:
        chosen = set(random.Random(config.seed).sample(range(len(kept)), config.limit))
        dropped["not_sampled"] = len(kept) - config.limit
        kept = [r for i, r in enumerate(kept) if i in chosen]  # keep input order

    write_jsonl(staged, kept)
    summary = {
        "inputs": config.inputs,
        "read": len(raw),
        "kept": len(kept),
        "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
        "contaminated_by": dict(contaminated_by.most_common()),
        "decontamination": None
        if index is None
        else {
            "dir": config.decontaminate_dir,
            "ngram": config.ngram,
            "min_ngram": index.min_words,
            "eval_texts": index.counts,
            "indexed_ngrams": index.size,
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
    summary_staged = outputs.staging_path(outputs.summary_uri(config.output_path))
    write_json(summary_staged, summary)
    outputs.publish(staged, config.output_path)
    outputs.publish(summary_staged, outputs.summary_uri(config.output_path))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptr queries", description=__doc__)
    p.add_argument(
        "--input",
        nargs="+",
        default=[BUILTIN],
        help="JSONL/JSON files, s3:// URIs, Hugging Face datasets (hf:name or org/name), or 'builtin'",
    )
    p.add_argument("--output_path", required=True, help="queries JSONL (local path or s3:// URI)")
    p.add_argument("--field", help=f"the text field (default: the first of {', '.join(QUERY_FIELDS)})")
    p.add_argument(
        "--split", default=default(QueriesConfig, "split"), help="dataset split for Hugging Face inputs"
    )
    p.add_argument("--decontaminate_dir", help="evaluation data laid out like ../shared/data")
    p.add_argument(
        "--ngram", type=int, default=default(QueriesConfig, "ngram"), help="n-gram length in words"
    )
    p.add_argument("--min_ngram", type=int, default=default(QueriesConfig, "min_ngram"))
    p.add_argument("--min_words", type=int, default=default(QueriesConfig, "min_words"))
    p.add_argument("--max_words", type=int, default=default(QueriesConfig, "max_words"))
    p.add_argument("--data_len", "--limit", dest="limit", type=int, help="keep this many (sampled)")
    p.add_argument(
        "--seed", type=int, default=default(QueriesConfig, "seed"), help="sampling seed for --data_len"
    )
    return p


def config_from_args(args) -> QueriesConfig:
    return build(
        QueriesConfig,
        inputs=args.input,
        output_path=args.output_path,
        field=args.field,
        split=args.split,
        decontaminate_dir=args.decontaminate_dir,
        ngram=args.ngram,
        min_ngram=args.min_ngram,
        min_words=args.min_words,
        max_words=args.max_words,
        limit=args.limit,
        seed=args.seed,
    )


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = run_queries(config_from_args(args))
    drops = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()) or "none"
    print(f"read {summary['read']}, kept {summary['kept']}; dropped: {drops}", file=sys.stderr)
    if summary["contaminated_by"]:
        by = ", ".join(f"{k} {v}" for k, v in summary["contaminated_by"].items())
        print(f"contaminated by: {by}", file=sys.stderr)
    print(f"wrote {args.output_path}", file=sys.stderr)
    return 0
