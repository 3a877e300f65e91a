"""The parts of tests/gpu/check.sh; each writes ``<work>/<part>.json``: ``ok`` and its figures, or
``skipped`` with the reason (the rules: tests/gpu/common.py).

python tests/gpu/check.py {env|vllm|varlen|train|export|resume|report} --work DIR [--seconds N]

The model is ``PTR_GPU_CHECK_MODEL`` (a local folder or a ptr model reference), else a randomly
initialised Qwen2-0.5B-shaped model built in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gpu.common import child_env, missing, model_dir, overall_ok, read_parts, write_part  # noqa: E402

PARTS = ("env", "vllm", "varlen", "train", "export", "resume")
STEPS = 4
QUESTIONS = [
    f"What is {a} + {b}? Answer with the number." for a, b in zip(range(3, 19), range(40, 56), strict=True)
]


def model(work: Path) -> str:
    given = os.environ.get("PTR_GPU_CHECK_MODEL")
    return given if given else str(model_dir("0.5b", work / "model-0.5b"))


def zero2_bf16() -> dict:
    """ZeRO-2 bf16. DeepSpeed's fused Adam where its CUDA op was built with DeepSpeed (the GPU image);
    PyTorch's AdamW otherwise, so nothing is compiled on the host."""
    from deepspeed.git_version_info import installed_ops

    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": 2e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0,
                "torch_adam": not installed_ops.get("fused_adam", False),
            },
        },
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "bf16": {"enabled": True},
    }  # fmt: skip


def part_env(work: Path) -> dict:
    import torch

    from tests.gpu.common import python_ok

    found = {
        "python": sys.version.split()[0],
        "python_note": python_ok(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu_available": torch.cuda.is_available(),
    }
    if not torch.cuda.is_available():
        return {**found, "ok": False, "error": "no CUDA device"}
    found["gpu"] = torch.cuda.get_device_name(0)
    found["bf16"] = torch.cuda.is_bf16_supported()
    for name in ("vllm", "deepspeed", "flash_attn", "transformers"):
        reason = missing(name)
        found[name] = reason or __import__(name).__version__
    found["ok"] = bool(found["bf16"])
    return found


def part_vllm(work: Path) -> dict:
    """Two refinement rounds of 16 questions: round 2 repeats round 1's conversation as its prefix,
    so the prefix cache must report hits."""
    reason = missing("vllm")
    if reason:
        return {"skipped": reason}
    from ptr.inference import SamplingParams, refine
    from ptr.inference.vllm_backend import VLLMBackend

    started = time.monotonic()
    # An explicit share of the GPU; statistics on, so the engine counts prefix-cache hits.
    backend = VLLMBackend(
        model(work), gpu_memory_share=0.3, enforce_eager=True, max_model_len=2048, disable_log_stats=False
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
        "ok": bool(hits) and all(all(r.completion_tokens for r in rounds) for rounds in results),
        "model": model(work),
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
    """A packed row (positions restarting per document) gives each document the logits it gets alone:
    documents never attend to one another. Flash-attention's varlen kernel where flash-attn is
    installed, else ptr's per-document SDPA (what training falls back to), each given the boundaries
    the way the trainer gives them (``ptr.train.packed_attention.packed_attention_inputs``)."""
    reason = missing("transformers")
    if reason:
        return {"skipped": reason}
    import torch
    from transformers import AutoModelForCausalLM

    from ptr.models import load_tokenizer, resolve
    from ptr.train.packed_attention import VARLEN_SDPA, packed_attention_inputs
    from ptr.train.packed_attention import register as register_varlen

    attn = "flash_attention_2" if missing("flash_attn") is None else VARLEN_SDPA
    register_varlen()
    tokenizer = load_tokenizer(model(work))
    lm = AutoModelForCausalLM.from_pretrained(
        resolve(model(work)), dtype=torch.bfloat16, attn_implementation=attn
    ).to("cuda")
    docs = [tokenizer(q, return_tensors="pt").input_ids[0].cuda() for q in QUESTIONS[:4]]

    def logits(ids, doc_ids, positions):
        mask, extra = packed_attention_inputs(attn, doc_ids[None], torch.bfloat16)
        out = lm(input_ids=ids[None], position_ids=positions[None], attention_mask=mask, **extra)
        return out.logits[0].float()

    packed = torch.cat(docs)
    positions = torch.cat([torch.arange(len(d), device="cuda") for d in docs])
    doc_ids = torch.cat([torch.full((len(d),), i, device="cuda") for i, d in enumerate(docs)])
    with torch.no_grad():
        together = logits(packed, doc_ids, positions)
        alone = torch.cat([logits(d, torch.zeros_like(d), torch.arange(len(d), device="cuda")) for d in docs])
        # Control: the same row as one document lets the documents see each other.
        mixed = logits(packed, torch.zeros_like(packed), torch.arange(len(packed), device="cuda"))
    scale = alone.abs().max().item()
    diff = (together - alone).abs().max().item() / scale  # relative: bf16 kernels tile differently
    control = (mixed - alone).abs().max().item() / scale
    return {
        "ok": diff < 0.02 and control > 5 * max(diff, 1e-3),
        "attn_implementation": attn,
        "documents": len(docs),
        "packed_tokens": int(packed.shape[0]),
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


def _train(work: Path, name: str, *extra) -> float:
    """``ptr.train`` under torchrun on one GPU; returns its wall time."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "ptr.train", "--model_path", model(work), "--data_path", work / "shards",
           "--output_path", work / "out", "--save_name", name,
           "--deepspeed_config_path", work / "zero2_bf16.json", "--max_steps", STEPS, *extra]  # fmt: skip
    started = time.monotonic()
    subprocess.run(list(map(str, cmd)), check=True, env=child_env())
    return time.monotonic() - started


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [m for m in (json.loads(x) for x in lines if x.strip()) if "loss" in m]


def part_train(work: Path) -> dict:
    """Encode packed shards, then 4 optimizer steps of ZeRO-2 bf16 (flash attention where installed)."""
    reason = missing("transformers", "deepspeed", "pydantic")
    if reason:
        return {"skipped": reason}
    _thoughts(work / "thoughts.jsonl")
    encode = [sys.executable, "-m", "ptr", "encode", "--tokenizer_path", model(work), "--encode_type", "ptr",
              "--input", work / "thoughts.jsonl", "--output_path", work / "shards", "--corpus_name", "gpu",
              "--max_length", "512", "--merge_data"]  # fmt: skip
    subprocess.run(list(map(str, encode)), check=True, env=child_env())
    meta = json.loads((work / "shards" / "gpu" / "meta.json").read_text())
    (work / "zero2_bf16.json").write_text(json.dumps(zero2_bf16()))
    seconds = _train(work, "gpu", "--save_steps", STEPS // 2)
    steps = _metrics(work / "out" / "gpu")
    losses = [float(m["loss"]) for m in steps]
    finite = bool(losses) and all(loss == loss and abs(loss) < 1e4 for loss in losses)
    # The resolved DeepSpeed config the trainer records says ZeRO-2 and bf16 were what trained.
    ran = json.loads((work / "out" / "gpu" / "config.json").read_text())
    zero, bf16 = (
        ran["deepspeed"]["zero_optimization"]["stage"],
        ran["deepspeed"].get("bf16", {}).get("enabled"),
    )
    return {
        "ok": finite and len(steps) >= STEPS and zero == 2 and bf16 is True and meta["packing"]["merge_data"],
        "zero_stage": zero,
        "bf16": bf16,
        "attn_implementation": ran["train"].get("attn_implementation"),
        "torch_adam": ran["deepspeed"]["optimizer"]["params"].get("torch_adam"),
        "packing": meta.get("packing"),
        "steps": len(steps),
        "losses": [round(x, 4) for x in losses],
        "last": {k: v for k, v in steps[-1].items() if isinstance(v, int | float)} if steps else {},
        "wall_s": round(seconds, 1),
    }


def part_export(work: Path) -> dict:
    """The exported directory loads in transformers and answers; its files are the plain HF layout."""
    final = work / "out" / "gpu" / "final"
    if not final.is_dir():
        return {"skipped": "the train part did not export a model"}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = sorted(p.name for p in final.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(final)
    lm = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16).to("cuda")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = getattr(prompt, "input_ids", prompt).to("cuda")
    out = lm.generate(prompt, max_new_tokens=32, do_sample=False)
    new_tokens = out[0, prompt.shape[1] :]
    has_weights = any(name.endswith(".safetensors") for name in files)
    return {
        "ok": has_weights and "tokenizer_config.json" in files and len(new_tokens) > 0,
        "files": files,
        "size_mb": round(sum(p.stat().st_size for p in final.iterdir()) / 2**20, 1),
        "answer": tokenizer.decode(new_tokens, skip_special_tokens=True),
    }


def part_resume(work: Path) -> dict:
    """Resume from the train part's mid-run checkpoint: the resumed run continues at the next step with
    the same data and ends where the uninterrupted one did (bf16 kernels are not bitwise deterministic
    on a GPU, so within a tolerance)."""
    run = work / "out" / "gpu"
    checkpoints = sorted((run / "checkpoints").glob("step-*")) if run.is_dir() else []
    if not checkpoints:
        return {"skipped": "the train part left no checkpoint"}
    import torch
    from safetensors.torch import load_file

    resumed = work / "out" / "gpu-resumed"
    (resumed / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoints[0], resumed / "checkpoints" / checkpoints[0].name)
    seconds = _train(work, "gpu-resumed", "--resume", "auto")
    first_step = int(checkpoints[0].name.split("-")[1]) + 1
    full = {m["step"]: m["loss"] for m in _metrics(run)}
    again = {m["step"]: m["loss"] for m in _metrics(resumed) if m["step"] >= first_step}
    a = load_file(next((run / "final").glob("*.safetensors")))
    b = load_file(next((resumed / "final").glob("*.safetensors")))
    rel = max(
        ((a[k].float() - b[k].float()).abs().max() / a[k].float().abs().max().clamp_min(1e-6)).item()
        for k in a
    )
    loss_gap = max((abs(full[step] - loss) for step, loss in again.items()), default=float("inf"))
    return {
        "ok": sorted(again) == list(range(first_step, STEPS + 1)) and rel < 0.02 and loss_gap < 0.05,
        "resumed_at_step": first_step,
        "steps_after_resume": sorted(again),
        "max_rel_weight_diff": round(rel, 5),
        "max_loss_gap": round(loss_gap, 5),
        "same_tensors": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "wall_s": round(seconds, 1),
    }


def report(work: Path, seconds: int) -> int:
    parts = read_parts(work, PARTS)
    result = {"ok": overall_ok(parts), "seconds": seconds, **parts}
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
    write_part(args.work, args.part, result)
    return 0 if result.get("ok") or "skipped" in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
