"""Benchmark: GSM8K, 100 problems, 1 round, SmolLM2-135M-Instruct, greedy, 8-shot — problems per second
of our harness (transformers backend) against lm-evaluation-harness (HF backend) with the same model,
the same prompt strings, the same stop string, token budget and batch size, in one process.

    python tests/bench/eval.py [--n 100] [--batch_size 16] [--max_new_tokens 256]

Timed: generation only (models are loaded first). Also reported: whether both produced the same
greedy text, and both accuracies. Last line: JSON, ``ratio`` = ours ÷ lm_eval in problems per second.
``--save_predictions FILE`` keeps our generations as a predictions file (for the reference check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see tests/conftest.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support.lm_eval_local import default_data_dir, evaluate, write_task  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data_dir", default=default_data_dir())
    ap.add_argument("--save_predictions", help="write our generations here as <task>.predictions.jsonl lines")
    args = ap.parse_args()

    import torch

    from ptr.evaluate import TaskConfig, get_task
    from ptr.evaluate.results import prediction_records
    from ptr.inference import SamplingParams, refine
    from ptr.inference.hf import TransformersBackend
    from ptr.jsonl import write_jsonl
    from ptr.models import resolve

    task = get_task("gsm8k")(TaskConfig(limit=args.n, num_fewshots=args.shots), data_dir=args.data_dir)
    docs = task.docs()
    prompts = [task.prompt(d, "default") for d in docs]
    stop = "\nQuestion:"
    params = SamplingParams(max_new_tokens=args.max_new_tokens, stop=(stop,))

    # ours
    backend = TransformersBackend(args.model, dtype="float32", batch_size=args.batch_size)
    from tqdm import tqdm

    with tqdm(total=len(prompts), desc="ours", unit="problem", file=sys.stderr) as bar:
        start = time.perf_counter()
        completions = refine(backend, prompts, 1, params, progress=bar.update)
        ours_s = time.perf_counter() - start
    ours_text = [c[0].text for c in completions]
    ours_scored = task.score_outputs(ours_text, docs)
    if args.save_predictions:
        write_jsonl(
            args.save_predictions, prediction_records("gsm8k", docs, prompts, [ours_text], [ours_scored])
        )
    print(f"ours: {args.n} problems in {ours_s:.1f}s", file=sys.stderr, flush=True)
    tokenizer = backend.tokenizer
    del backend

    # lm-evaluation-harness, HF backend, same prompts
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=resolve(args.model), batch_size=args.batch_size, dtype="float32", device="cpu")
    same_tokens = all(lm.tok_encode(p) == tokenizer(p).input_ids for p in prompts)
    rows = [{"prompt": p, "answer": d.gold} for p, d in zip(prompts, docs, strict=True)]
    spec = {
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [stop], "do_sample": False, "max_gen_toks": args.max_new_tokens},
        "metric_list": [{"metric": "exact_match"}],
    }
    with tempfile.TemporaryDirectory(prefix="ptr-bench-") as tmp:
        write_task(Path(tmp), "bench_gsm8k", rows, spec)
        start = time.perf_counter()
        result = evaluate(lm, Path(tmp), ["bench_gsm8k"])
        lm_s = time.perf_counter() - start
    print(f"lm_eval: {args.n} problems in {lm_s:.1f}s", file=sys.stderr, flush=True)
    lm_text = [""] * len(docs)
    for s in result["samples"]["bench_gsm8k"]:
        lm_text[s["doc_id"]] = s["resps"][0][0]
    lm_scored = task.score_outputs(lm_text, docs)  # the same scorer on both, to compare generations

    same = sum(a.strip() == b.strip() for a, b in zip(ours_text, lm_text, strict=True))
    ours_pps, lm_pps = args.n / ours_s, args.n / lm_s
    print(
        json.dumps(
            {
                "ratio": round(ours_pps / lm_pps, 3),
                "ours_problems_per_s": round(ours_pps, 4),
                "lm_eval_problems_per_s": round(lm_pps, 4),
                "ours_s": round(ours_s, 1),
                "lm_eval_s": round(lm_s, 1),
                "n": args.n,
                "shots": args.shots,
                "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens,
                "same_prompt_tokens": same_tokens,
                "same_output_text": same,
                "accuracy_ours_generations": sum(s.score for s in ours_scored) / args.n,
                "accuracy_lm_eval_generations": sum(s.score for s in lm_scored) / args.n,
                "torch_threads": torch.get_num_threads(),
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
