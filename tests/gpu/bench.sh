#!/usr/bin/env bash
# GPU benchmark in one run (< 8 minutes on one data-centre GPU), offline, from the source tree, on the
# host's own Python (3.11 or 3.12) and PyTorch: nothing is installed or downloaded. A part whose
# dependency is missing (vLLM, flash-attn, DeepSpeed) is reported `skipped` with the reason.
#   - training: tokens/s and MFU of the packed-sequence bf16 step (ZeRO-2 where DeepSpeed is present,
#     PyTorch attention where flash-attn is not) at sequence length 4096, Qwen2-0.5B and -1.5B shapes;
#   - vLLM refinement: 3-round conversations/s with prefix caching vs without, and vs one round;
#   - check.sh's training, export and resume checks.
# Prints one JSON report on its last line; exits non-zero when a part that ran failed.
#
#   bash tests/gpu/bench.sh [--model_path DIR]   random Qwen2-shaped weights unless a local model is given
#   bash tests/gpu/bench.sh --dry                the CPU-sized path (make test runs it)
#   PYTHON=/path/to/python bash tests/gpu/bench.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v python3.12 || command -v python3.11 || command -v python3)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ptr-gpu-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
for arg in "$@"; do [ "$arg" = --dry ] && export DS_ACCELERATOR=cpu; done
[ -n "${DS_ACCELERATOR:-}" ] || unset DS_ACCELERATOR  # DeepSpeed picks CUDA on a GPU
exec "$PY" tests/gpu/bench.py all --work "$WORK" "$@"
