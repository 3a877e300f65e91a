"""The parts of tests/gpu/bench.sh; each writes ``<work>/<part>.json`` (figures, or ``skipped`` with why).

    python tests/gpu/bench.py all --work DIR [--dry] [--model_path DIR]     # every part, then the report
    python tests/gpu/bench.py {env|train_0.5b|train_1.5b|vllm_cached|vllm_uncached|checks} --work DIR

* ``train_<size>``: the packed-sequence training step ptr trains with (``ptr.train.packed_model.PackedObjective``
  over documents packed into one 4096-token row, positions restarting per document), bf16, under
  DeepSpeed ZeRO-2 where DeepSpeed is present (else PyTorch's AdamW under bf16 autocast), with
  flash-attention's varlen kernel where flash-attn is present (else ptr's per-document SDPA). Tokens/s
  over the timed steps and MFU: the FLOPs the step executes (6 × matmul weights × tokens, the causal
  attention of each document, the output head at the positions that carry loss) over the GPU's dense
  bf16 peak (:data:`PEAK_TFLOPS` by device name; ``PTR_GPU_PEAK_TFLOPS`` overrides).
* ``vllm_cached`` / ``vllm_uncached``: refinement as ``ptr eval`` runs it on vLLM: every conversation's
  round k+1 is its whole history (shared prefix, question, each answer, the refine turn) and the rounds
  run as one ``generate`` call each; conversations/s with prefix caching and without, and, on the
  cached engine, plain one-round generation of the same questions. Token-id prompts on random (vLLM
  ``dummy``) weights, every answer exactly ``ANSWER`` tokens (``ignore_eos``), so the work is fixed.
* ``checks``: check.sh's training, export and resume checks on the 0.5B-shaped model.

``--dry``: the CPU-sized path `make test` runs so this script does not rot: a tiny Qwen2-shaped model,
256-token rows, two timed steps; vLLM and the checks are reported skipped (they need a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.common import (  # noqa: E402
    REPO,
    child_env,
    missing,
    model_dir,
    overall_ok,
    python_ok,
    qwen2_config,
    read_parts,
    version,
    write_part,
)

PARTS = ("env", "train_0.5b", "train_1.5b", "vllm_cached", "vllm_uncached", "checks")
DRY_PARTS = ("env", "train_dry", "vllm_cached", "vllm_uncached", "checks")
SECONDS = {"env": 60, "train": 150, "vllm": 150, "checks": 200}  # per part; the whole run stays < 8 min
# Dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 756.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "B200": 2250.0, "GH200": 989.0,
}  # fmt: skip
SEQ_LEN, WARMUP, TIMED = 4096, 2, 6
CONVERSATIONS, PREFIX, QUESTION, ANSWER, REFINE, ROUNDS = 512, 256, 128, 128, 32, 3


# -- env ----------------------------------------------------------------------------------------------


def part_env(work: Path, args) -> dict:
    import torch

    found = {
        "python": sys.version.split()[0],
        "python_note": python_ok(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dry": args.dry,
    }
    for name in ("transformers", "deepspeed", "flash_attn", "vllm"):
        found[name] = version(name)  # each part imports what it uses, and says so if it cannot
    found["ok"] = args.dry or torch.cuda.is_available()
    if not found["ok"]:
        found["error"] = "no CUDA device (run with --dry for the CPU-sized path)"
    return found


# -- training -----------------------------------------------------------------------------------------


def packed_row(seq_len: int, rng: random.Random, vocab: int, short: bool) -> tuple[dict, list[int]]:
    """One row of documents (prompt, two thought rounds, an answer) filling ``seq_len`` tokens."""
    from ptr.encode.shards import ANSWER as ANSWER_CODE
    from ptr.encode.shards import IGNORE

    lo, hi = (20, 80) if short else (300, 1200)
    ids, segments, positions, lens = [], [], [], []
    while len(ids) < seq_len:
        n = min(rng.randint(lo, hi), seq_len - len(ids))
        parts = [IGNORE] * (n // 4) + [1] * (n // 4) + [2] * (n // 4)
        parts += [ANSWER_CODE] * (n - len(parts))
        ids += [rng.randrange(4, vocab) for _ in range(n)]
        segments += parts
        positions += list(range(n))
        lens.append(n)
    return {"input_ids": ids, "segments": segments, "position_ids": positions, "doc_lens": lens}, lens


def step_flops(config, tokens: int, doc_lens: list[int], loss_positions: int) -> float:
    """FLOPs one training step executes (forward + backward = 3 × forward)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    per_layer = (
        d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * config.intermediate_size
    )
    dense = 6 * per_layer * layers * tokens
    attention = (
        6 * layers * heads * head_dim * sum(n * n for n in doc_lens)
    )  # causal: half of 2·n²·d, ×2 matmuls, ×3
    head = 6 * d * config.vocab_size * loss_positions
    return float(dense + attention + head)


def peak_tflops(device_name: str) -> float | None:
    if os.environ.get("PTR_GPU_PEAK_TFLOPS"):
        return float(os.environ["PTR_GPU_PEAK_TFLOPS"])
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key]
    return None


def part_train(work: Path, args, shape: str) -> dict:
    reason = missing("transformers")
    if reason:
        return {"skipped": reason}
    import torch

    dry = shape == "dry"
    if not dry and not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    if args.model_path and shape != "0.5b":
        return {"skipped": f"a local model was given ({args.model_path}): it is measured once, as train_0.5b"}
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptr.train.data import collate
    from ptr.train.packed_attention import VARLEN_SDPA
    from ptr.train.packed_attention import register as register_varlen
    from ptr.train.packed_model import PackedObjective

    device = "cpu" if dry else "cuda"
    seq_len, timed = (256, 2) if dry else (SEQ_LEN, TIMED)
    warmup = 1 if dry else WARMUP
    flash = not dry and missing("flash_attn") is None
    attn = "flash_attention_2" if flash else VARLEN_SDPA
    register_varlen()
    use_ds = missing("deepspeed") is None
    config = AutoConfig.from_pretrained(args.model_path) if args.model_path else qwen2_config(shape)
    torch.manual_seed(0)
    with torch.device(device):
        if args.model_path:
            lm = AutoModelForCausalLM.from_pretrained(
                args.model_path, dtype=torch.float32, attn_implementation=attn
            )
        else:
            lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    lm.config.use_cache = False
    module = PackedObjective(lm).to(device)
    engine, optimizer, how = _optimizer(module, use_ds, dry)

    rng = random.Random(0)
    rows = [packed_row(seq_len, rng, min(config.vocab_size, 32000), dry) for _ in range(warmup + timed)]
    times = []
    for i, (item, _lens) in enumerate(rows):
        batch = {k: v.to(device) for k, v in collate([item], pad_id=0).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        if engine is not None:
            loss = engine(**batch)["loss"]
            engine.backward(loss)
            engine.step()
        else:
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = module(**batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    seconds = sum(times)
    tokens = seq_len * timed
    flops = sum(
        step_flops(config, seq_len, lens, sum(1 for s in item["segments"] if s))
        for item, lens in rows[warmup:]
    )
    peak = peak_tflops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    achieved = flops / seconds / 1e12
    return {
        "ok": bool(torch.isfinite(loss.detach().float()).item()),
        "shape": shape if not args.model_path else args.model_path,
        "params_m": round(sum(p.numel() for p in lm.parameters()) / 1e6, 1),
        "seq_len": seq_len,
        "timed_steps": timed,
        "optimizer": how,
        "attn_implementation": attn,
        "tokens_per_s": round(tokens / seconds, 1),
        "step_s": round(seconds / timed, 4),
        "achieved_tflops": round(achieved, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "mfu_note": None
        if peak
        else "dry run on the CPU: no MFU"
        if dry
        else "no dense bf16 peak known for this device (set PTR_GPU_PEAK_TFLOPS)",
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "loss": round(float(loss.detach().float()), 4),
    }


def _optimizer(module, use_ds: bool, dry: bool):
    """DeepSpeed ZeRO-2 bf16 (PyTorch's AdamW inside, so no CUDA op is compiled), else plain AdamW."""
    import torch

    if use_ds:
        from ptr.train import dist as ptr_dist

        ptr_dist.prepare_environment()  # a world of one; NCCL on a GPU, gloo on the CPU
        ptr_dist.init()
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True, "adam_w_mode": True}},
            "zero_optimization": {"stage": 2, "overlap_comm": not dry, "contiguous_gradients": True},
            "bf16": {"enabled": True},
        }
        engine, optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=[p for p in module.parameters() if p.requires_grad], config=config
        )
        return engine, optimizer, "deepspeed ZeRO-2 bf16"
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=not dry)
    return None, optimizer, "torch AdamW, bf16 autocast (DeepSpeed not installed)"


# -- vLLM ---------------------------------------------------------------------------------------------


def part_vllm(work: Path, args, cached: bool) -> dict:
    if args.dry:
        return {"skipped": "dry run: vLLM is measured on a GPU"}
    reason = missing("vllm")
    if reason:
        return {"skipped": reason}
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from vllm import LLM, SamplingParams, TokensPrompt

    if args.model_path:
        folder, load_format = args.model_path, "auto"
    else:  # a config is all vLLM needs for random ("dummy") weights
        folder, load_format = work / "vllm-0.5b", "dummy"
        folder.mkdir(exist_ok=True)
        qwen2_config("0.5b").save_pretrained(folder)
    started = time.perf_counter()
    llm = LLM(
        model=str(folder),
        load_format=load_format,
        skip_tokenizer_init=True,
        enable_prefix_caching=cached,
        gpu_memory_utilization=0.45,  # an explicit share: this engine is not alone on every GPU
        max_model_len=4096,
        seed=0,
    )
    load_s = time.perf_counter() - started
    rng = random.Random(0)
    vocab = 32000
    prefix = [rng.randrange(4, vocab) for _ in range(PREFIX)]
    refine = [rng.randrange(4, vocab) for _ in range(REFINE)]
    first = [prefix + [rng.randrange(4, vocab) for _ in range(QUESTION)] for _ in range(CONVERSATIONS)]
    sampling = SamplingParams(max_tokens=ANSWER, ignore_eos=True, temperature=0.0, detokenize=False)

    def run(rounds: int) -> float:
        histories = [list(p) for p in first]
        started = time.perf_counter()
        for k in range(rounds):
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=h) for h in histories], sampling, use_tqdm=False
            )
            if k + 1 < rounds:
                histories = [
                    h + list(o.outputs[0].token_ids) + refine for h, o in zip(histories, outs, strict=True)
                ]
        return time.perf_counter() - started

    run(1)  # warm-up (shapes, allocator)
    llm.reset_prefix_cache()
    three = run(ROUNDS)
    result = {
        "ok": True,
        "prefix_caching": cached,
        "conversations": CONVERSATIONS,
        "rounds": ROUNDS,
        "tokens": {"shared_prefix": PREFIX, "question": QUESTION, "answer": ANSWER, "refine_turn": REFINE},
        "load_s": round(load_s, 1),
        "three_round_s": round(three, 2),
        "three_round_conversations_per_s": round(CONVERSATIONS / three, 2),
    }
    if cached:
        llm.reset_prefix_cache()
        one = run(1)
        result["one_round_s"] = round(one, 2)
        result["one_round_conversations_per_s"] = round(CONVERSATIONS / one, 2)
    return result


# -- check.sh's checks --------------------------------------------------------------------------------


def part_checks(work: Path, args) -> dict:
    if args.dry:
        return {
            "skipped": "dry run: the training/export/resume checks need a GPU (tests/test_train.py runs them on CPU)"
        }
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    reason = missing("transformers", "deepspeed", "pydantic")
    if reason:
        return {"skipped": reason}
    model = str(model_dir("0.5b", work / "model-0.5b", args.model_path))
    checks = work / "checks"
    checks.mkdir(exist_ok=True)
    env = {**child_env(), "PTR_GPU_CHECK_MODEL": model}
    results = {}
    for part in ("train", "export", "resume"):
        cmd = [sys.executable, str(REPO / "tests/gpu/check.py"), part, "--work", str(checks)]
        proc = subprocess.run(
            cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=SECONDS["checks"]
        )
        path = checks / f"{part}.json"
        results[part] = (
            json.loads(path.read_text()) if path.exists() else {"ok": False, "error": proc.stderr[-1500:]}
        )
    results["ok"] = overall_ok(results)
    return results


# -- driver -------------------------------------------------------------------------------------------


def run_part(work: Path, args, part: str) -> dict:
    if part == "env":
        return part_env(work, args)
    if part.startswith("train_"):
        return part_train(work, args, part.removeprefix("train_"))
    if part.startswith("vllm_"):
        return part_vllm(work, args, cached=part == "vllm_cached")
    return part_checks(work, args)


def run_all(work: Path, args) -> int:
    """Each part in its own process (vLLM's GPU memory is released before the next starts)."""
    started = time.monotonic()
    parts = DRY_PARTS if args.dry else PARTS
    for part in parts:
        print(f"== {part}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, part, "--work", str(work)]
        cmd += ["--dry"] if args.dry else []
        cmd += ["--model_path", args.model_path] if args.model_path else []
        limit = SECONDS[part.split("_")[0]]
        try:
            proc = subprocess.run(
                cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=limit
            )
            if proc.returncode != 0 and not (work / f"{part}.json").exists():
                write_part(work, part, {"ok": False, "error": proc.stderr[-2000:]})
        except subprocess.TimeoutExpired:
            write_part(work, part, {"ok": False, "error": f"did not finish within {limit}s"})
    results = read_parts(work, parts)
    report = {
        "ok": overall_ok(results),
        "seconds": round(time.monotonic() - started),
        "dry": args.dry,
        **results,
    }
    if (
        not args.dry
        and "skipped" not in results.get("vllm_cached", {"skipped": 1})
        and results["vllm_cached"].get("ok")
    ):
        c, u = results["vllm_cached"], results.get("vllm_uncached", {})
        report["vllm_refinement"] = {
            "prefix_caching_speedup": round(c["three_round_conversations_per_s"] / u["three_round_conversations_per_s"], 3)
            if u.get("ok") else None,
            "three_rounds_vs_one_round_cost": round(c["one_round_conversations_per_s"] / c["three_round_conversations_per_s"], 3),
        }  # fmt: skip
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("all", *PARTS, "train_dry"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--dry", action="store_true", help="the CPU-sized path (make test)")
    parser.add_argument("--model_path", help="a local model folder instead of random Qwen2-shaped weights")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part == "all":
        return run_all(args.work, args)
    result = run_part(args.work, args, args.part)
    write_part(args.work, args.part, result)
    return 0 if result.get("ok") or "skipped" in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
