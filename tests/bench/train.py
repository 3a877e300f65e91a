"""Benchmark: `ptr train` against TRL's SFTTrainer, and SmolLM2-135M step time / peak memory.

1. Training tokens per second (non-padding tokens over optimizer-step time) on the CPU, same model
   (tiny-random, fp32), same examples (PTR conversations: question, thoughts, answer), same optimizer
   steps (each step sees the same 8 examples' worth of data): ours packs a step's 8 documents into one
   sequence (default attention: one causal SDPA call per document; also reported with the dense
   block-diagonal mask); SFTTrainer pads a batch of 8 without packing. Step 1 is warm-up and not
   counted. ``ratio`` = ours (default) ÷ SFTTrainer (target ≥ 1.5).
   ``ratio_vs_packed`` = ours ÷ SFTTrainer at its best here: ``packing=True`` with its best-fit
   decreasing strategy (``bfd``, which turns on padding-free batches: one row, position ids restarting
   per document, so documents never attend to each other), each packed row as long as our step's
   longest sequence, one row per step (target ≥ 1.2).
2. SmolLM2-135M-Instruct at sequence length 512, ZeRO-2, bf16, two local ranks (torchrun): median step
   time and peak resident memory per rank.

Each side runs in its own process with the same thread count. The last stdout line is one JSON object.
Run: .venv/bin/python tests/bench/train.py [--steps 30] [--threads 1] [--repeats N] [--skip-smollm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PER_STEP = 8


def documents(tokenizer, n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    import random

    from tests.support.thought_shards import arithmetic_example, conversation_tokens

    rng = random.Random(seed)
    return [conversation_tokens(tokenizer, *arithmetic_example(rng)) for _ in range(n)]


def write_packed(out: Path, docs, per_sequence: int, max_len: int | None = None) -> Path:
    """``per_sequence`` documents per packed sequence (or as many as fit ``max_len`` tokens)."""
    from ptr.encode.shards import ShardWriter

    writer = ShardWriter(out, "uint32" if max(max(d[0]) for d in docs) >= 65536 else "uint16")
    ids, codes, lens = [], [], []
    for doc_ids, doc_codes in docs:
        full = len(lens) == per_sequence or (max_len and len(ids) + len(doc_ids) > max_len)
        if lens and full:
            writer.add(ids, codes, lens)
            ids, codes, lens = [], [], []
        if max_len:
            doc_ids, doc_codes = doc_ids[:max_len], doc_codes[:max_len]
        ids, codes, lens = ids + doc_ids, codes + doc_codes, lens + [len(doc_ids)]
    writer.add(ids, codes, lens)
    writer.close()
    (out / "meta.json").write_text(json.dumps({"tokenizer": {"name": "bench", "hash": "bench"}}))
    return out


def env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu"}


def rate(records: list[dict]) -> float:
    timed = records[1:]  # step 1 warms up
    return sum(r["tokens"] for r in timed) / sum(r["step_time"] for r in timed)


def run_ours(corpus: Path, steps: int, threads: int, work: Path, attn: str = "auto") -> dict:
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 5e-4}},
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": False},
    }
    (work / "ours.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "ptr", "train", "--model_path", "tiny-random", "--data_path", str(corpus),
           "--output_path", str(work), "--save_name", f"ours-{attn}", "--max_steps", str(steps),
           "--deepspeed_config_path", str(work / "ours.json"), "--attn_implementation", attn]  # fmt: skip
    subprocess.run(cmd, check=True, env=env(threads), cwd=REPO, capture_output=True)
    records = [json.loads(x) for x in (work / f"ours-{attn}" / "metrics.jsonl").read_text().splitlines()]
    return {"tokens_per_s": rate(records), "steps": len(records), "tokens": sum(r["tokens"] for r in records)}


def run_trl(steps: int, threads: int, packed: bool = False) -> dict:
    """In this process (invoked as a child with --trl [--packed])."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ptr.models import load_tokenizer, resolve

    torch.set_num_threads(threads)
    path = resolve("tiny-random")
    tokenizer = load_tokenizer(path)
    docs = documents(tokenizer, steps * PER_STEP)
    dataset = Dataset.from_dict({"input_ids": [d[0] for d in docs]})
    # packed: rows as long as our longest step (8 documents), one per step, so a step sees as many
    # tokens as ours; unpacked: a padded batch of 8 documents
    longest = max(sum(len(d[0]) for d in docs[i : i + PER_STEP]) for i in range(0, len(docs), PER_STEP))
    seen: list[int] = []
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=1 if packed else PER_STEP,
        max_steps=steps,
        learning_rate=5e-4,
        use_cpu=True,
        bf16=False,
        packing=packed,
        packing_strategy="bfd",
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        max_length=longest if packed else None,
        seed=0,
    )
    trainer = SFTTrainer(
        model=path, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()]
    )
    collate = trainer.data_collator

    def counting_collator(batch):
        out = collate(batch)
        seen.append(int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel())
        return out

    trainer.data_collator = counting_collator
    trainer.train()
    records = [{"tokens": t, "step_time": s} for t, s in zip(seen, times, strict=False)]
    return {"tokens_per_s": rate(records), "steps": len(times), "tokens": sum(seen[: len(times)])}


def run_smollm(work: Path, steps: int, threads: int) -> dict:
    from ptr.models import load_tokenizer
    from tests.support.procs import free_port

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    docs = documents(tokenizer, 40 * steps)
    corpus = write_packed(work / "smollm-corpus", docs, per_sequence=10**6, max_len=512)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-5}},
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": True},
    }
    (work / "smollm.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "ptr.train", "--model_path", "smollm2-135m-instruct",
           "--data_path", str(corpus), "--output_path", str(work), "--save_name", "smollm",
           "--max_steps", str(steps), "--deepspeed_config_path", str(work / "smollm.json")]  # fmt: skip
    subprocess.run(cmd, check=True, env=env(max(1, threads // 2)), cwd=REPO, capture_output=True)
    records = [json.loads(x) for x in (work / "smollm" / "metrics.jsonl").read_text().splitlines()]
    return {
        "seq_len": 512,
        "ranks": 2,
        "zero_stage": 2,
        "dtype": "bf16",
        "median_step_time_s": statistics.median(r["step_time"] for r in records[1:]),
        "peak_rss_mb_per_rank": max(r["peak_mem_mb"] for r in records),
        "tokens_per_s": rate(records),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument(
        "--threads", type=int, default=1, help="per process; 1 keeps a shared machine's noise down"
    )
    p.add_argument("--repeats", type=int, default=1, help="measure each side N times (medians reported)")
    p.add_argument("--smollm-steps", type=int, default=6)
    p.add_argument("--skip-smollm", action="store_true")
    p.add_argument("--trl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--packed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl:
        print(json.dumps(run_trl(args.steps, args.threads, args.packed)))
        return

    from ptr.models import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="ptr-bench-train-"))
    corpus = write_packed(
        work / "corpus", documents(load_tokenizer("tiny-random"), args.steps * PER_STEP), PER_STEP
    )

    def trl_run(*extra: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--trl", "--steps", str(args.steps), "--threads", str(args.threads), *extra],
            check=True, env=env(args.threads), capture_output=True, text=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    # The four runs take turns within each repeat, so load on a shared machine falls on all of them.
    runs: dict[str, list[dict]] = {"ours": [], "ours_mask": [], "trl": [], "trl_packed": []}
    for _ in range(args.repeats):
        runs["ours"].append(run_ours(corpus, args.steps, args.threads, work))  # one SDPA call per document
        runs["ours_mask"].append(run_ours(corpus, args.steps, args.threads, work, attn="sdpa"))  # dense mask
        runs["trl"].append(trl_run())
        runs["trl_packed"].append(trl_run("--packed"))
    rate_of = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    ours, trl, trl_packed = runs["ours"][0], runs["trl"][0], runs["trl_packed"][0]
    result = {
        "ratio": rate_of["ours"] / rate_of["trl"],
        "ratio_vs_packed": rate_of["ours"] / rate_of["trl_packed"],
        "target": 1.5,
        "target_vs_packed": 1.2,
        "ours_tokens_per_s": rate_of["ours"],
        "trl_sft_tokens_per_s": rate_of["trl"],
        "trl_sft_packed_tokens_per_s": rate_of["trl_packed"],
        "ours_block_mask_tokens_per_s": rate_of["ours_mask"],
        "tokens_per_s_runs": {k: [round(r["tokens_per_s"], 1) for r in v] for k, v in runs.items()},
        "ours_tokens": ours["tokens"],
        "trl_tokens": trl["tokens"],
        "trl_packed_tokens": trl_packed["tokens"],
        "trl_packed_steps": trl_packed["steps"],
        "steps": args.steps,
        "repeats": args.repeats,
        "examples_per_step": PER_STEP,
        "threads": args.threads,
        "model": "tiny-random (fp32)",
        "load_avg_1m": os.getloadavg()[0],
    }
    if not args.skip_smollm:
        result["smollm2"] = run_smollm(work, args.smollm_steps, args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
