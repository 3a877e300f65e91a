"""Benchmark: requests per second of `ptr serve` with 8 concurrent clients versus one client at a time.

SmolLM2-135M-Instruct on the CPU, every request asks for 2 refinement rounds (V1 protocol). Both
phases send the same questions; the concurrent phase sends each of them `--repeat` times. The gain
comes from dynamic batching: concurrent requests share one generate call.

    .venv/bin/python tests/bench/serve.py            # last stdout line: one JSON object, `ratio` inside
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.support.serve import batch_metrics, ptr_server  # noqa: E402

QUESTIONS = [
    f"A shop sells pencils at {p} cents each. How much do {n} pencils cost, in cents?"
    for p, n in [(7, 12), (9, 8), (15, 4), (6, 13), (11, 9), (8, 14), (5, 17), (12, 6)]
]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_phase(url: str, questions: list[str], clients: int, rounds: int, max_new_tokens: int) -> dict:
    client = httpx.Client(timeout=1800)

    def ask(q: str) -> tuple[float, int]:
        body = {
            "instances": [{"messages": [{"role": "user", "content": q}]}],
            "parameters": {"rounds": rounds, "max_new_tokens": max_new_tokens},
        }
        start = time.perf_counter()
        resp = client.post(f"{url}/v1/models/ptr:predict", json=body)
        resp.raise_for_status()
        tokens = sum(r["completion_tokens"] for r in resp.json()["predictions"][0]["rounds"])
        return time.perf_counter() - start, tokens

    before = batch_metrics(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, questions))
    wall = time.perf_counter() - start
    after = batch_metrics(url)
    latencies = [r[0] for r in results]
    calls, gens = after[0] - before[0], after[1] - before[1]
    return {
        "clients": clients,
        "requests": len(questions),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(questions) / wall, 4),
        "completion_tokens_per_s": round(sum(r[1] for r in results) / wall, 2),
        "p50_s": round(statistics.median(latencies), 2),
        "p99_s": round(percentile(latencies, 0.99), 2),
        "mean_batch": round(gens / calls, 2) if calls else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="times the concurrent phase sends each question")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--max_batch_size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="ptr serve --threads (0 = torch's default)")
    args = ap.parse_args()

    log = Path(tempfile.mkdtemp(prefix="ptr-bench-serve-")) / "server.log"
    with ptr_server(
        args.model,
        "--max_batch_size",
        args.max_batch_size,
        "--threads",
        args.threads,
        "--dtype",
        "float32",
        log=log,
    ) as url:
        run_phase(url, QUESTIONS[:1], 1, args.rounds, args.max_new_tokens)  # warm-up
        one = run_phase(url, QUESTIONS, 1, args.rounds, args.max_new_tokens)
        many = run_phase(url, QUESTIONS * args.repeat, args.clients, args.rounds, args.max_new_tokens)
    ratio = many["requests_per_s"] / one["requests_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": args.model,
                "rounds": args.rounds,
                "max_new_tokens": args.max_new_tokens,
                "threads": args.threads,
                "ratio": round(ratio, 3),
                "target": 3.0,
                "sequential": one,
                "concurrent": many,
            }
        )
    )


if __name__ == "__main__":
    main()
