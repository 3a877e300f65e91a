"""Prefix reuse across refinement rounds (issue 2).

3-round refinement of 16 conversations whose prompt is about 1,000 tokens (an 8-shot-sized prompt)
on smollm2-135m-instruct: the transformers backend with prefix reuse versus three independent
generate calls per conversation (the same backend recomputing every prompt from scratch).
Last line: JSON with ratio = reuse seconds / independent seconds (target <= 0.6).

    .venv/bin/python tests/bench/refine.py [--conversations 16] [--rounds 3] [--max_new_tokens 64]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time


def worked_example(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.randint(12, 99), rng.randint(3, 19), rng.randint(5, 60)
    q = (
        f"A shop packs {a} boxes of pencils each morning. Every box holds {b} pencils. "
        f"In the afternoon it sells {c} pencils. How many pencils are left at the end of the day?"
    )
    s = (
        f"Each morning the shop packs {a} boxes with {b} pencils each, so it has {a} * {b} = {a * b} "
        f"pencils. It sells {c} of them, so {a * b} - {c} = {a * b - c} remain. The answer is {a * b - c}."
    )
    return q, s


def prompt(rng: random.Random, shots: int = 8) -> str:
    parts = []
    for _ in range(shots):
        q, s = worked_example(rng)
        parts.append(f"Question: {q}\nAnswer: {s}")
    q, _ = worked_example(rng)
    return (
        "Solve the problem. Show your steps, then give the final number.\n\n"
        + "\n\n".join(parts)
        + f"\n\nQuestion: {q}\nAnswer:"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    from ptr.inference import SamplingParams, refine
    from ptr.inference.hf import TransformersBackend

    reuse = TransformersBackend(args.model, dtype=args.dtype, batch_size=args.conversations)
    fresh = TransformersBackend(
        model=reuse.model, tokenizer=reuse.tokenizer, prefix_reuse=False, batch_size=args.conversations
    )
    rng = random.Random(0)
    convs = [[{"role": "user", "content": prompt(rng)}] for _ in range(args.conversations)]
    prompt_tokens = sum(len(reuse.encode(c)) for c in convs) / len(convs)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)

    refine(reuse, convs[:2], 1, SamplingParams(max_new_tokens=4))  # warm-up
    timings = {}
    outputs = {}
    for name, backend in (("independent", fresh), ("reuse", reuse)):
        t = time.perf_counter()
        outputs[name] = refine(backend, convs, args.rounds, params)
        timings[name] = time.perf_counter() - t
        print(f"{name}: {timings[name]:.1f}s", file=sys.stderr)
    generated = sum(c.completion_tokens for r in outputs["reuse"] for c in r)
    same = sum(
        a.text == b.text
        for x, y in zip(outputs["reuse"], outputs["independent"], strict=True)
        for a, b in zip(x, y, strict=True)
    )
    print(
        json.dumps(
            {
                "benchmark": "refine_prefix_reuse",
                "model": args.model,
                "dtype": str(reuse.model.dtype),
                "conversations": args.conversations,
                "rounds": args.rounds,
                "mean_prompt_tokens": round(prompt_tokens, 1),
                "generated_tokens": generated,
                "reuse_s": round(timings["reuse"], 2),
                "independent_s": round(timings["independent"], 2),
                "identical_outputs": f"{same}/{args.conversations * args.rounds}",
                "ratio": round(timings["reuse"] / timings["independent"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
