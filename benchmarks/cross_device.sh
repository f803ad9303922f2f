#!/usr/bin/env bash
# Issue 28: a run moves between devices. On a machine with a GPU (and its CPU), in one go:
#   1. the tiny config trained on the CPU (JAX_PLATFORMS=cpu), then evaluated on the GPU;
#   2. the tiny config trained on the GPU, then evaluated on the CPU.
# Each step is one line: rc=0 means the given/trained classifier, the data fingerprint and
# every checkpoint link were accepted on the other device. Logs and both metrics.json in $OUT.
#   OUT=DIR bash benchmarks/cross_device.sh        # from the repository root, ~3 minutes
# Needs what gpu_figures.sh needs (ml_collections and tensorboardX from .whl/ if missing).
set -u
OUT=${OUT:-/tmp/cross_device}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import ml_collections, tensorboardX' 2>/dev/null || \
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
W=$(mktemp -d)
step() {  # step NAME PLATFORM SCRIPT WORKDIR: one line with its exit status
  local name=$1 platform=$2 script=$3 wd=$4
  JAX_PLATFORMS=$platform timeout 150 "$PY" "$script" --config=configs/tiny.py --workdir="$wd" \
    > "$OUT/$name.txt" 2>&1
  echo "$name (JAX_PLATFORMS=$platform): rc=$?"
}
step train_on_cpu cpu train.py "$W/cpu"
step eval_cpu_run_on_gpu cuda eval.py "$W/cpu"
cp "$W/cpu/eval/metrics.json" "$OUT/cpu_run_on_gpu.json" 2>/dev/null
step train_on_gpu cuda train.py "$W/gpu"
step eval_gpu_run_on_cpu cpu eval.py "$W/gpu"
cp "$W/gpu/eval/metrics.json" "$OUT/gpu_run_on_cpu.json" 2>/dev/null
