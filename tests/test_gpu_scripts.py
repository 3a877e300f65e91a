"""tests/gpu/bench.sh's CPU-sized dry path, so the GPU benchmark does not rot between GPU runs: it runs
from the source tree with the interpreter it is given, trains the packed bf16 step on a tiny
Qwen2-shaped model saved with its tokenizer, and reports what it could not run as skipped, with why.
(The GPU figures themselves come from `bash tests/gpu/bench.sh` on a GPU.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.gpu.bench import step_flops
from tests.gpu.common import missing, overall_ok, qwen2_config

REPO = Path(__file__).resolve().parents[1]


def test_bench_dry_run_reports_the_packed_step_and_says_what_it_skipped():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "tests/gpu/bench.sh", "--dry"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["dry"]
    train = report["train_dry"]
    assert train["ok"] and train["tokens_per_s"] > 0 and train["seq_len"] == 256
    assert train["optimizer"].startswith("deepspeed ZeRO-2 bf16")  # DeepSpeed is installed here
    assert train["attn_implementation"] == "ptr_varlen_sdpa"  # PyTorch attention: no flash-attn on a CPU
    assert train["mfu"] is None and "dry run" in train["mfu_note"]
    for part in ("vllm_cached", "vllm_uncached", "checks"):
        assert "dry run" in report[part]["skipped"], part
    assert report["env"]["torch"] and report["env"]["python"].startswith("3.")


def test_a_skipped_part_does_not_fail_the_run_but_a_failed_one_does():
    assert overall_ok({"a": {"ok": True}, "b": {"skipped": "vllm is not installed"}})
    assert not overall_ok({"a": {"ok": True}, "b": {"ok": False, "error": "boom"}})
    assert missing("json") is None and missing("no_such_module_ptr") == "no_such_module_ptr is not installed"


def test_mfu_counts_the_flops_the_step_executes():
    config = qwen2_config("0.5b")
    one = step_flops(config, 4096, [4096], 0)
    many = step_flops(config, 4096, [512] * 8, 0)
    assert one > many  # one 4096-token document attends over more pairs than eight 512-token ones
    dense = (
        6 * 4096 * config.num_hidden_layers * (896 * 896 + 2 * 896 * 128 + 896 * 896 + 3 * 896 * 4864)
    )  # q, k, v, o and the MLP of Qwen2-0.5B: 6 FLOPs per weight per token
    assert many - dense == 6 * config.num_hidden_layers * 896 * 8 * 512**2
    assert step_flops(config, 4096, [512] * 8, 100) - many == 6 * 896 * 151936 * 100
