#!/usr/bin/env bash
# The GPU path in one run (< 8 minutes on one GPU), offline, from the source tree, on the host's own
# Python (3.11 or 3.12) and PyTorch (nothing is installed or downloaded): vLLM generation with prefix
# caching, packed rows under flash-attention's varlen kernel (ptr's per-document SDPA without
# flash-attn), a DeepSpeed ZeRO-2 bf16 training run, its export, and a resume from its checkpoint.
# A part whose dependency is missing is reported `skipped` with the reason (tests/gpu/common.py).
# Prints one JSON report on its last line; exits non-zero when a part that ran failed.
#
#   bash tests/gpu/check.sh            PTR_GPU_CHECK_MODEL picks the model (default: a randomly
#                                      initialised Qwen2-0.5B-shaped one); PYTHON the interpreter
#
# Each part runs in its own process, so vLLM's GPU memory is released before training starts.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v python3.12 || command -v python3.11 || command -v python3)}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ptr-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
unset DS_ACCELERATOR  # DeepSpeed picks CUDA here
start=$(date +%s)
for part in env vllm varlen train export resume; do
  echo "== $part" >&2
  if ! timeout 420 "$PY" tests/gpu/check.py "$part" --work "$WORK" >"$WORK/$part.log" 2>&1; then
    [ -s "$WORK/$part.json" ] || echo "{\"ok\": false, \"error\": \"part $part failed, see its log\"}" >"$WORK/$part.json"
  fi
  tail -n 25 "$WORK/$part.log" >&2
done
"$PY" tests/gpu/check.py report --work "$WORK" --seconds $(( $(date +%s) - start ))
