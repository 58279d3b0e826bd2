#!/usr/bin/env bash
# The GPU machine check (issue #18): gpu-batched on CUDA against ONNX Runtime on CPU, and
# `unirank serve --workers 1/2/4/8` against MLServer with as many workers; records the numbers in
# docs/benchmarks.md. At most 5 minutes; never part of CI. --dry-run tests it on a CPU-only machine
# (short loads, report under build/gpu-check/ only). Other flags: python -m unirank_bench.gpu_check --help.
#
#   bench/gpu_check.sh                 # on the GPU machine
#   bench/gpu_check.sh --dry-run       # anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
ARTIFACT="${ARTIFACT:-build/artifact}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-300}"

dry=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry=1; done
if [[ $dry == 0 ]]; then
  command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here; use --dry-run" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
  set -- --seconds 5 "$@"
else
  set -- --seconds 0.5 --warmup 0.2 --workers 1,2 --client-procs 2 --requests 100 "$@"
fi
if [[ ! -f "$ARTIFACT/manifest.json" ]]; then
  echo "gpu_check: training $ARTIFACT (tiny preset: seconds, not a demo model)" >&2
  "$PYTHON" -m unirank.training train --size tiny --out "$ARTIFACT" --quiet
fi
PYTHONPATH="bench${PYTHONPATH:+:$PYTHONPATH}" exec timeout "$LIMIT_S" \
  "$PYTHON" -m unirank_bench.gpu_check --artifact "$ARTIFACT" "$@"
