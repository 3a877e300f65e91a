"""Encoder throughput versus the raw fast-tokenizer batch encode of the same texts (the limit) and
versus ``datasets.map(batched=True)`` tokenization.

10,000 PTR chat examples (query, one thought, final answer) of about 340 tokens each, SmolLM2's
tokenizer. The encoder runs end to end (JSONL in, chat template, segment codes, best-fit packing,
shards on disk, tokenizer loading included); the two references only tokenize the already-templated
texts in memory. A run times the raw encode and the encoder back to back (so load on a shared machine
affects both), each the best of ``--repeats``; ``--runs`` runs give as many ratios. The last line of
stdout is one JSON object: ``ratio`` = the median over runs of encoder tokens/s ÷ raw limit tokens/s
(wall clock), ``ratios`` every run's, ``ratio_min`` the lowest; the same from CPU seconds (``*_cpu``,
all threads of this process and its workers), which a loaded machine disturbs less; and
``ratio_vs_datasets_map`` from one datasets.map timing.

    .venv/bin/python tests/bench/encode.py [--examples 10000] [--runs 5] [--repeats 1] [--num_proc N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tqdm import tqdm  # noqa: E402

from ptr.encode.encoder import EncodeConfig, encode  # noqa: E402
from ptr.encode.records import RefinePrompt, ptr_example  # noqa: E402
from ptr.models import load_tokenizer  # noqa: E402
from ptr.prompts import REFINE_PROMPT  # noqa: E402
from ptr.records import Where  # noqa: E402

TOKENIZER = "smollm2-135m-instruct"


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Deterministic English-like text: sentences of the tiny corpus, shuffled, with numbers mixed in."""
    sentences = [s for s in (REPO / "ptr/models/tiny_corpus.txt").read_text().splitlines() if s.strip()]
    words = " ".join(sentences).split()
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        out = []
        while len(out) < n_words:
            if rng.random() < 0.1:
                out.append(str(rng.randint(0, 99999)))
            else:
                out.extend(rng.choice(words) for _ in range(rng.randint(3, 12)))
        return " ".join(out[:n_words])

    return [
        {
            "id": f"bench-{i}",
            "query": text(rng.randint(25, 40)),
            "thoughts": [{"round": 1, "model": "weak", "text": text(rng.randint(75, 95))}],
            "answer": {"model": "strong", "text": text(rng.randint(85, 110))},
            "kept": True,
        }
        for i in range(n)
    ]


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes (workers)."""
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def best_of(repeats: int, func):
    """(best wall seconds, best CPU seconds, last result)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = func()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return min(walls), min(cpus), result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--num_proc", type=int, default=None)
    args = ap.parse_args()

    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    tokenizer = load_tokenizer(TOKENIZER)
    records = make_records(args.examples)
    texts = [
        tokenizer.apply_chat_template(
            ptr_example(r, Where("bench"), RefinePrompt(REFINE_PROMPT)).messages, tokenize=False
        )
        for r in records
    ]
    work = Path(tempfile.mkdtemp(prefix="ptr-bench-encode-"))
    try:
        data = work / "thoughts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        cfg = EncodeConfig(
            tokenizer_path=TOKENIZER,
            input=str(data),
            output_path=str(work / "out"),
            corpus_name="bench",
            encode_type="ptr",
            max_length=2048,
            merge_data=True,
            num_proc=args.num_proc,
        )

        def raw():
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        tokens = sum(map(len, raw()))
        summary = encode(cfg)  # warm: imports and first-use caches are no part of a run
        if summary["tokens"] != tokens:
            raise SystemExit(f"encoder wrote {summary['tokens']} tokens, raw encode gives {tokens}")
        runs = []
        for _ in tqdm(range(args.runs), desc="runs (raw, then encoder)", file=sys.stderr):
            raw_s, raw_cpu, _ = best_of(args.repeats, raw)
            enc_s, enc_cpu, _ = best_of(args.repeats, lambda: encode(cfg))
            runs.append({"raw_s": raw_s, "raw_cpu": raw_cpu, "enc_s": enc_s, "enc_cpu": enc_cpu})

        dataset = Dataset.from_dict({"text": texts})
        ds_s, ds_cpu, _ = best_of(
            args.repeats,
            lambda: dataset.map(
                lambda b: tokenizer(b["text"], add_special_tokens=False),
                batched=True,
                remove_columns=["text"],
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = [r["raw_s"] / r["enc_s"] for r in runs]
    ratios_cpu = [r["raw_cpu"] / r["enc_cpu"] for r in runs]
    enc_s = statistics.median(r["enc_s"] for r in runs)
    enc_cpu = statistics.median(r["enc_cpu"] for r in runs)
    raw_s = statistics.median(r["raw_s"] for r in runs)
    raw_cpu = statistics.median(r["raw_cpu"] for r in runs)
    result = {
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "ratio_cpu": round(statistics.median(ratios_cpu), 3),
        "ratio_cpu_min": round(min(ratios_cpu), 3),
        "ratios_cpu": [round(x, 3) for x in ratios_cpu],
        "ratio_vs_datasets_map": round(ds_s / enc_s, 3),
        "ratio_vs_datasets_map_cpu": round(ds_cpu / enc_cpu, 3),
        "encoder_tokens_per_s": round(tokens / enc_s),
        "raw_tokenizer_tokens_per_s": round(tokens / raw_s),
        "datasets_map_tokens_per_s": round(tokens / ds_s),
        "encoder_s": round(enc_s, 3),
        "raw_tokenizer_s": round(raw_s, 3),
        "datasets_map_s": round(ds_s, 3),
        "encoder_cpu_s": round(enc_cpu, 3),
        "raw_tokenizer_cpu_s": round(raw_cpu, 3),
        "datasets_map_cpu_s": round(ds_cpu, 3),
        "runs": args.runs,
        "repeats": args.repeats,
        "examples": args.examples,
        "tokens": tokens,
        "tokens_per_example": round(tokens / args.examples, 1),
        "tokenizer": TOKENIZER,
        "encoder_includes": "tokenizer load, JSONL read, chat template, codes, packing, shard write",
        "num_proc": args.num_proc,
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "default"),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
