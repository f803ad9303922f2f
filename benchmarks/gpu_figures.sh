#!/usr/bin/env bash
# The GPU figures in ONE bounded run (TOTAL seconds, default 580: under 10 minutes on one
# H200). Every part has its own time limit, cut further to what is left of TOTAL, so that a
# slow part cannot take the others' results with it; a part with under 10 s left is skipped:
#   1. versions, and the error of float32 matmuls / convolutions at JAX's default precision
#      against float64 (XLA:GPU may use TF32 matrix units for float32 by default);
#   2. the exact-oracle tests on the GPU: the Fisher estimator, the phase-convolution layers,
#      the on-device uint8 → float conversion being bitwise the host's, and whether k
#      classifier steps in one dispatch are bitwise k single steps there too (tests/conftest.py
#      pins the CPU unless JAX_PLATFORMS says otherwise);
#   3. compare.py --device cuda at 64×64: lsei_jax against the PyTorch reference on the GPU;
#   4. the demo's time to an explanation, cold then warm compilation cache (the cache is
#      kept in $CACHE for part 5);
#   5. each training stage's loop throughput against its own step's (loop_throughput.py;
#      the target is ≥ 70%), on the demo config, its compilations loaded from part 4's cache;
#   6. steps per dispatch k = 1, 2, 4, 8 (config.steps_per_dispatch) on the demo's classifier
#      and concept stages (the shortest steps): loop images/s and stage seconds (compiling
#      k steps in one program included) per k. One JSON line per stage and k as they finish.
#
#   OUT=DIR bash benchmarks/gpu_figures.sh [REF_DIR]   # REF_DIR holds torch_ref.py
# REF_DIR defaults to .bench_ref (a copy of ../shared/bench inside the checkout, which is
# what travels to a device machine) or else ../shared/bench. Missing pure-Python packages
# (ml_collections, tensorboardX) are installed from .whl/ when it holds wheels, never from
# the network. Logs land in $OUT (default /tmp/gpu_figures): at most 8 files.
# Dry run without a GPU (every part degrades to a logged failure or a CPU run):
#   DEVICE=cpu TOTAL=240 TTE_ARGS='--runs cold' LOOP_ARGS='--steps 10 --log_every 2
#     --bench_steps 3' K_ARGS='--steps 16 --log_every 4' bash benchmarks/gpu_figures.sh
set -u
START=$(date +%s)
TOTAL=${TOTAL:-580}
OUT=${OUT:-/tmp/gpu_figures}
CACHE=${CACHE:-/tmp/gpu_figures_xla}
DEVICE=${DEVICE:-cuda}
if [ $# -ge 1 ]; then REF=$1; elif [ -d .bench_ref ]; then REF=.bench_ref; else REF=../shared/bench; fi
PY=${PYTHON:-python3}
TTE_ARGS=${TTE_ARGS:---runs cold warm}
LOOP_ARGS=${LOOP_ARGS:-}
K_ARGS=${K_ARGS:---log_every 40 --bench_steps 20}
mkdir -p "$OUT"
rm -rf "$CACHE"
exec > >(tee "$OUT/all.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LSEI_JAX_COMPILATION_CACHE="$CACHE"
part() { echo; echo "=== $1 ($(date +%T), $(( $(date +%s) - START )) s in)"; }
# limit N: N seconds, or what is left of TOTAL (minus 5 s to finish), whichever is less.
limit() { local left=$(( TOTAL - ($(date +%s) - START) - 5 ))
          if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi; }
# run N CMD…: CMD in its own process group for limit N seconds, then the whole group is
# stopped (a plain `timeout` stops only its child, not the processes that child started:
# compare.py's reference, time_to_explanation.py's runs); a note when too little is left.
run() { local t; t=$(limit "$1"); shift
        if [ "$t" -lt 10 ]; then echo "skipped: ${t}s left of TOTAL=${TOTAL}s"; return 0; fi
        setsid "$@" <&0 & local pid=$!
        # The timer acts only if its sleep runs out; ending the timer's shell (blocked in
        # `wait`, which a signal interrupts) disarms it; its sleep then just runs out.
        ( sleep "$t" & wait $! && { echo "stopped at its ${t}s limit"; kill -TERM -- "-$pid"
          sleep 3; kill -KILL -- "-$pid"; } ) 2>/dev/null & local timer=$!
        wait "$pid"; local rc=$?
        kill "$timer" 2>/dev/null; wait "$timer" 2>/dev/null
        return $rc; }

part versions
missing=$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("ml_collections", "tensorboardX") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing $missing from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "missing Python packages: $missing (put their wheels in .whl/; see this file's header)"
  fi
fi
{ nvidia-smi -L 2>&1 || echo "no nvidia-smi: no GPU here"
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())
try:
  import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
  print("no torch")'; } 2>&1 | tee "$OUT/versions.txt"

part "float32 precision at JAX's default (relative error against float64)"
run 25 "$PY" - <<'EOF' 2>&1 | tee "$OUT/precision.txt"
import jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_enable_x64', True)  # the float64 reference; the tested arrays are float32
print('backend', jax.default_backend())
rng = np.random.default_rng(0)
a, b = rng.standard_normal((512, 512)), rng.standard_normal((512, 512))
x, w = rng.standard_normal((8, 32, 32, 64)), rng.standard_normal((3, 3, 64, 64))
conv = lambda x, w, p: jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=p)
ref_dot = a @ b
ref_conv = np.asarray(conv(jnp.asarray(x), jnp.asarray(w), 'highest'))
rel = lambda y, r: float(np.linalg.norm(np.asarray(y, np.float64) - r) / np.linalg.norm(r))
f32 = lambda z: jnp.asarray(z, jnp.float32)
for p in (None, 'highest'):
  print(f'precision={p}: dot {rel(jnp.matmul(f32(a), f32(b), precision=p), ref_dot):.1e}, '
        f'conv {rel(conv(f32(x), f32(w), p), ref_conv):.1e}')
EOF

part "exact-oracle tests on the $DEVICE"
run 80 env JAX_PLATFORMS="$DEVICE" "$PY" -m pytest -q --tb=line -p no:cacheprovider \
  tests/test_fisher.py tests/test_layers.py \
  tests/test_loop.py::test_device_conversion_of_uint8_is_bitwise_the_hosts \
  'tests/test_dispatch.py::test_real_steps_in_one_dispatch[classifier]' 2>&1 \
  | tee "$OUT/tests.txt" | tail -15

part "compare.py --device $DEVICE (64x64)"
run 120 "$PY" benchmarks/compare.py --device "$DEVICE" --python_ref "$PY" --ref_dir "$REF" \
  --images 64 --tries 1 --quiet 1 --max_wait 0 2>&1 | tee "$OUT/compare.txt" | tail -8

part "time to an explanation: demo, $TTE_ARGS"
# shellcheck disable=SC2086  # TTE_ARGS is a list of arguments
run 170 "$PY" benchmarks/time_to_explanation.py --scenario demo --cache_dir "$CACHE" $TTE_ARGS \
  2>&1 | tee "$OUT/time_to_explanation.txt" | grep -v 'it/s' | tail -16

part "each stage's loop against its step (demo config, cache of part 4)"
# shellcheck disable=SC2086
run 90 "$PY" benchmarks/loop_throughput.py $LOOP_ARGS 2>&1 | grep -v 'it/s' \
  | tee "$OUT/loop.txt" | grep -v '^[IW][0-9]' | tail -12
part "steps per dispatch k = 1, 2, 4, 8 (classifier and concepts, demo config)"
# shellcheck disable=SC2086
run 110 "$PY" benchmarks/loop_throughput.py --k 1,2,4,8 --train classifier,concepts $K_ARGS \
  2>&1 | grep -v 'it/s' | tee "$OUT/loop_k.txt" | grep -v '^[IW][0-9]' | tail -12
part "done in $(( $(date +%s) - START )) s"
