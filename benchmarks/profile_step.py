"""Where a stage's step time goes: per-XLA-op time from a profiler trace, grouped by kind.

  python benchmarks/profile_step.py --stage classifier --image 64 [--top 15]

Builds the same jitted step as bench_stages.py, warms it up, traces --steps steps with
jax.profiler, and reads the trace back (jax.profiler.ProfileData). Each executed XLA op
(a fusion, convolution, dot, copy …) is matched to its line in the compiled HLO to get
its shape and the JAX op it came from. Prints JSON lines: the --top ops by time, then one
summary line with

  wall_ms_per_step      median wall time of a traced step
  op_ms_per_step        time inside XLA ops, summed over XLA's worker threads
  busy_frac             op_ms / (wall_ms × threads): how much of both cores XLA kept busy
  by_kind               op ms per step for: forward conv/dot, backward conv/dot,
                        layout (transpose/copy), elementwise & reductions
  untraced_ms_per_step  wall_ms × threads − op_ms: idle threads plus ops that emit no
                        trace event. Convolutions XLA:CPU runs through Eigen (the steps
                        compiled with `parallel.convnet_compiler_options`) are such ops,
                        so for those steps by_kind covers everything but the convs.

"forward"/"backward" come from the op's JAX name: 'transpose(jvp(…))' is reverse-mode
autodiff, i.e. input or weight gradients. Numbers are for this machine; quote ratios.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import bench_stages  # noqa: E402

def hlo_index(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """{instruction name: (shape, opcode-ish text, JAX op_name)} of the compiled module."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\(', line)
    if not m:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    kind = re.search(r'"kind":"(\w+)"', line)
    out[m.group(1)] = (m.group(2), kind.group(1) if kind else m.group(3),
                       op.group(1) if op else '')
  return out


def classify(name: str, info: tuple[str, str, str] | None) -> str:
  """forward / backward conv-or-dot, layout, or elementwise, from the op's name and origin."""
  shape, opcode, op_name = info or ('', '', '')
  heavy = (opcode in ('convolution', 'dot', '__ynn_fusion', '__xnn_fusion', 'custom-call')
           or name.startswith(('ynn_fusion', 'xnn_fusion', 'convolution', 'dot')))
  if heavy:
    return 'backward conv/dot' if 'transpose(' in op_name else 'forward conv/dot'
  if name.startswith(('transpose', 'copy')) or opcode in ('transpose', 'copy'):
    return 'layout (transpose/copy)'
  return 'elementwise & reductions'


def layer_of(op_name: str) -> str:
  """'jit(step)/transpose(jvp(Classifier))/c1/Conv_1/conv_general_dilated' → 'c1/Conv_1'."""
  parts = [p for p in op_name.split('/')[1:] if '(' not in p]
  return '/'.join(parts[:-1]) if len(parts) > 1 else (parts[0] if parts else '')


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  bench_stages.add_step_args(ap)
  ap.add_argument('--steps', type=int, default=3)
  ap.add_argument('--top', type=int, default=15)
  args = ap.parse_args()

  step, carry, data = bench_stages.build_from_args(args)
  for _ in range(3):
    carry = jax.block_until_ready(step(carry, data))
  trace_dir = tempfile.mkdtemp(prefix='lsei_profile_')
  walls = []
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      t0 = time.perf_counter()
      carry = jax.block_until_ready(step(carry, data))
      walls.append(time.perf_counter() - t0)
  # The step's compiled HLO, to name its ops. Steps that chain several jits (the
  # reference-style explainer, the pipeline stages) have no single module: ops unnamed.
  index = {}
  if hasattr(step, 'lower'):
    index = hlo_index(step.lower(carry, data).compile().as_text())
  (path,) = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  prof = jax.profiler.ProfileData.from_file(path)
  per_op = collections.Counter()
  threads = set()
  for plane in prof.planes:
    for line in plane.lines:
      if 'Eigen' not in line.name:        # XLA:CPU's worker threads run the ops
        continue
      for ev in line.events:
        if ev.name.startswith('ThunkExecutor'):
          continue
        threads.add(line.name)
        per_op[ev.name] += ev.duration_ns / 1e6 / args.steps
  by_kind = collections.Counter()
  for name, ms in per_op.items():
    by_kind[classify(name, index.get(name))] += ms
  for name, ms in per_op.most_common(args.top):
    shape, opcode, op_name = index.get(name, ('', '', ''))
    print(json.dumps({'op': name, 'ms_per_step': round(ms, 2),
                      'kind': classify(name, index.get(name)), 'shape': shape,
                      'layer': layer_of(op_name)}))
  wall_ms = 1e3 * statistics.median(walls)
  op_ms = sum(per_op.values())
  n_threads = max(len(threads), 1)
  print(json.dumps({
      'stage': args.stage, 'batch': args.batch, 'image': args.image,
      'wall_ms_per_step': round(wall_ms, 1), 'op_ms_per_step': round(op_ms, 1),
      'threads': n_threads, 'busy_frac': round(op_ms / (wall_ms * n_threads), 2),
      'untraced_ms_per_step': round(wall_ms * n_threads - op_ms, 1),
      'by_kind': {k: round(v, 1) for k, v in by_kind.most_common()},
      'by_kind_frac': {k: round(v / op_ms, 2) for k, v in by_kind.most_common()},
      'jax_version': jax.__version__}))


if __name__ == '__main__':
  main()
