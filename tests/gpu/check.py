"""The parts of tests/gpu/check.sh; each writes ``<work>/<part>.json`` with ``ok`` and its figures.

python tests/gpu/check.py {env|vllm|varlen|train|export|report} --work DIR [--seconds N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODEL = os.environ.get("PTR_GPU_CHECK_MODEL", "smollm2-135m-instruct")
PARTS = ("env", "vllm", "varlen", "train", "export")
ZERO2_BF16 = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 2e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0},
    },
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "bf16": {"enabled": True},
}
QUESTIONS = [
    f"What is {a} + {b}? Answer with the number." for a, b in zip(range(3, 19), range(40, 56), strict=True)
]


def part_env(work: Path) -> dict:
    import torch

    found = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu_available": torch.cuda.is_available(),
    }
    if not torch.cuda.is_available():
        return {**found, "ok": False, "error": "no CUDA device"}
    found["gpu"] = torch.cuda.get_device_name(0)
    found["bf16"] = torch.cuda.is_bf16_supported()
    for name in ("vllm", "deepspeed", "flash_attn", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    from deepspeed.ops.op_builder import FusedAdamBuilder

    found["deepspeed_fused_adam_compatible"] = FusedAdamBuilder().is_compatible()
    found["ok"] = bool(found["bf16"] and found["vllm"] and found["deepspeed"] and found["flash_attn"])
    return found


def part_vllm(work: Path) -> dict:
    """Two refinement rounds of 16 questions: round 2 repeats round 1's conversation as its prefix,
    so the prefix cache must report hits."""
    from ptr.inference import SamplingParams, refine
    from ptr.inference.vllm_backend import VLLMBackend

    started = time.monotonic()
    # Statistics on, so the engine counts prefix-cache queries and hits (LLM.get_metrics()).
    backend = VLLMBackend(
        MODEL, gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=2048, disable_log_stats=False
    )
    loaded = time.monotonic() - started
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    t0 = time.monotonic()
    results = refine(
        backend, conversations, rounds=2, params=SamplingParams(max_new_tokens=64, temperature=0.0)
    )
    seconds = time.monotonic() - t0
    counters = {m.name: getattr(m, "value", None) for m in backend.llm.get_metrics()}
    hits, queries = counters.get("vllm:prefix_cache_hits"), counters.get("vllm:prefix_cache_queries")
    texts = [[r.text for r in rounds] for rounds in results]
    tokens = sum(r.completion_tokens for rounds in results for r in rounds)
    return {
        "ok": bool(hits) and all(all(t.strip() for t in ts) for ts in texts),
        "model": MODEL,
        "load_s": round(loaded, 1),
        "generate_s": round(seconds, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "prefix_cache_hit_tokens": hits,
        "prefix_cache_query_tokens": queries,
        "prefix_cache_hit_rate": round(hits / queries, 3) if hits and queries else 0.0,
        "sample": texts[0],
    }


def part_varlen(work: Path) -> dict:
    """Flash attention on a packed row (positions restarting per document) gives each document the
    logits it gets alone: documents never attend to one another."""
    import torch
    from transformers import AutoModelForCausalLM

    from ptr.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(MODEL)
    model = AutoModelForCausalLM.from_pretrained(
        resolve(MODEL), dtype=torch.bfloat16, attn_implementation="flash_attention_2"
    ).to("cuda")
    docs = [tokenizer(q, return_tensors="pt").input_ids[0] for q in QUESTIONS[:4]]
    packed = torch.cat(docs).unsqueeze(0).cuda()
    positions = torch.cat([torch.arange(len(d)) for d in docs]).unsqueeze(0).cuda()
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions).logits[0].float()
        alone = torch.cat([model(input_ids=d.unsqueeze(0).cuda()).logits[0].float() for d in docs])
        # Control: the same row without restarting positions is one long sequence (cross-attention).
        mixed = model(input_ids=packed).logits[0].float()
    scale = alone.abs().max().item()
    diff = (together - alone).abs().max().item() / scale  # relative: bf16 kernels tile differently
    control = (mixed - alone).abs().max().item() / scale
    return {
        "ok": diff < 0.02 and control > 5 * max(diff, 1e-3),
        "attn_implementation": model.config._attn_implementation,
        "documents": len(docs),
        "packed_tokens": int(packed.shape[1]),
        "rel_logit_diff_packed_vs_alone": round(diff, 4),
        "rel_logit_diff_unpacked_control": round(control, 4),
    }


def _thoughts(path: Path, n: int = 24) -> None:
    with open(path, "w") as f:
        for i in range(n):
            a, b = 3 + i, 40 + i
            record = {
                "id": f"gpu-{i}",
                "query": f"What is {a} + {b}?",
                "thoughts": [
                    {"round": 1, "model": "weak", "text": f"{a} + {b} is about {a + b - 1}."},
                    {"round": 2, "model": "weak", "text": f"Adding carefully, {a} + {b} = {a + b}."},
                ],
                "answer": {"model": "strong", "text": f"{a} + {b} = {a + b}. The answer is {a + b}."},
                "scores": {},
                "kept": True,
                "reason": None,
            }
            f.write(json.dumps(record) + "\n")


def part_train(work: Path) -> dict:
    """Encode packed shards, then 4 optimizer steps of ZeRO-2 bf16 with flash attention (torchrun, 1 GPU)."""
    _thoughts(work / "thoughts.jsonl")
    run = [sys.executable, "-m", "ptr"]
    encode = [
        *run,
        "encode",
        "--tokenizer_path",
        MODEL,
        "--encode_type",
        "ptr",
        "--input",
        work / "thoughts.jsonl",
    ]
    encode += [
        "--output_path",
        work / "shards",
        "--corpus_name",
        "gpu",
        "--max_length",
        "512",
        "--merge_data",
    ]
    subprocess.run(list(map(str, encode)), check=True)
    meta = json.loads((work / "shards" / "gpu" / "meta.json").read_text())
    (work / "zero2_bf16.json").write_text(json.dumps(ZERO2_BF16))
    train = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "ptr.train",
    ]
    train += [
        "--model_path",
        MODEL,
        "--data_path",
        work / "shards",
        "--output_path",
        work / "out",
        "--save_name",
        "gpu",
    ]
    train += [
        "--deepspeed_config_path",
        work / "zero2_bf16.json",
        "--max_steps",
        "4",
        "--attn_implementation",
        "flash_attention_2",
    ]
    started = time.monotonic()
    subprocess.run(list(map(str, train)), check=True)
    seconds = time.monotonic() - started
    metrics = [
        json.loads(line)
        for line in (work / "out" / "gpu" / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    steps = [m for m in metrics if "loss" in m]
    losses = [float(m["loss"]) for m in steps]
    finite = bool(losses) and all(loss == loss and abs(loss) < 1e4 for loss in losses)
    # The trainer refuses flash_attention_2 where it cannot run, so finishing means it ran; the resolved
    # DeepSpeed config it records says ZeRO-2 and bf16 were what trained.
    ran = json.loads((work / "out" / "gpu" / "config.json").read_text())
    zero, bf16 = (
        ran["deepspeed"]["zero_optimization"]["stage"],
        ran["deepspeed"].get("bf16", {}).get("enabled"),
    )
    return {
        "ok": finite and len(steps) >= 4 and zero == 2 and bf16 is True and meta["packing"]["merge_data"],
        "zero_stage": zero,
        "bf16": bf16,
        "attn_implementation": ran["train"].get("attn_implementation"),
        "packing": meta.get("packing"),
        "steps": len(steps),
        "losses": [round(x, 4) for x in losses],
        "last": {k: v for k, v in steps[-1].items() if isinstance(v, int | float)} if steps else {},
        "wall_s": round(seconds, 1),
    }


def part_export(work: Path) -> dict:
    """The exported directory loads in transformers and answers; its files are the plain HF layout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = work / "out" / "gpu" / "final"
    files = sorted(p.name for p in final.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16).to("cuda")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = getattr(prompt, "input_ids", prompt).to("cuda")
    out = model.generate(prompt, max_new_tokens=32, do_sample=False)
    text = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    has_weights = any(name.endswith(".safetensors") for name in files)
    return {
        "ok": has_weights and "tokenizer_config.json" in files and bool(text.strip()),
        "files": files,
        "size_mb": round(sum(p.stat().st_size for p in final.iterdir()) / 2**20, 1),
        "answer": text,
    }


def report(work: Path, seconds: int) -> int:
    parts = {}
    for name in PARTS:
        path = work / f"{name}.json"
        parts[name] = json.loads(path.read_text()) if path.exists() else {"ok": False, "error": "did not run"}
    result = {"ok": all(p.get("ok") for p in parts.values()), "seconds": seconds, **parts}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=(*PARTS, "report"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=0)
    args = parser.parse_args()
    if args.part == "report":
        return report(args.work, args.seconds)
    result = globals()[f"part_{args.part}"](args.work)
    (args.work / f"{args.part}.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
