#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run (at most 10 minutes on one H200), each part under its own
# time limit so that a slow part cannot take the others' results with it:
#   1. versions, and the error of float32 matmuls / convolutions at JAX's default precision
#      against float64 (XLA:GPU may use TF32 matrix units for float32 by default);
#   2. the exact-oracle tests of the Fisher estimator and of the phase-convolution layers on
#      the GPU (tests/conftest.py pins the CPU unless JAX_PLATFORMS says otherwise);
#   3. compare.py --device cuda at 64×64: lsei_jax against the PyTorch reference on the GPU;
#   4. the demo's time to an explanation with a cold compilation cache (cold and warm
#      took over 200 s together on an H200);
#   5. the bfloat16 switch (config.model.compute_dtype) against float32, DVAE and explainer.
#
#   OUT=DIR bash benchmarks/gpu_figures.sh REF_DIR    # REF_DIR holds torch_ref.py
# Logs land in $OUT (default /tmp/gpu_figures). Needs python3 with jax[cuda], flax, optax,
# orbax-checkpoint, chex, ml_collections, torch; run from the repository root.
set -u
OUT=${OUT:-/tmp/gpu_figures}
REF=${1:-../shared/bench}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# timeout stops only its own child: the benchmark processes it started must go too.
part() { pkill -f 'bench_stages.py|torch_ref_device.py|time_to_explanation.py' 2>/dev/null
         echo; echo "=== $1 ($(date +%T))"; }

part versions
nvidia-smi -L
"$PY" -c 'import jax, flax, optax, torch; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, "torch", torch.__version__, jax.devices())'

part "float32 precision at JAX's default (relative error against float64)"
timeout 40 "$PY" - <<'EOF' 2>&1 | tee "$OUT/precision.txt"
import jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_enable_x64', True)  # the float64 reference; the tested arrays are float32
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

part "exact-oracle tests on the GPU"
JAX_PLATFORMS=cuda timeout 150 "$PY" -m pytest -q --tb=line -p no:cacheprovider \
  tests/test_fisher.py tests/test_layers.py 2>&1 | tee "$OUT/tests.txt" | tail -15

part "compare.py --device cuda (64x64)"
timeout 160 "$PY" benchmarks/compare.py --device cuda --python_ref "$PY" --ref_dir "$REF" \
  --images 64 --tries 1 --quiet 1 --max_wait 0 2>&1 | tee "$OUT/compare.txt" | tail -8

part "time to an explanation: demo, cold cache"
timeout 150 "$PY" benchmarks/time_to_explanation.py --scenario demo --runs cold 2>&1 \
  | tee "$OUT/time_to_explanation.txt" | tail -14

part "bfloat16 / float32 (64x64)"
timeout 90 bash -c 'for stage in dvae explainer; do for dt in float32 bfloat16; do
  "$0" benchmarks/bench_stages.py --stage $stage --image 64 --steps 10 --warmup 3 \
    --compute_dtype $dt 2>&1 | tail -1; done; done' "$PY" | tee "$OUT/bf16.txt"
part done
