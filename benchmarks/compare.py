"""lsei_jax against the PyTorch reference (../shared/bench/torch_ref.py), row by row.

  python benchmarks/compare.py [--images 64 32] [--stages classifier dvae explainer fisher]
  python benchmarks/compare.py --device cuda --python_ref python3 --ref_dir DIR   # on a GPU

For each (stage, image) it runs the reference and then lsei_jax with the same settings
(batch 64, 8 perturbations, 2 threads), each in its own process, after waiting for a quiet
machine, and retries a run while other processes used more than --max-other of the CPU.
Prints one JSON line per run, then a table: images/s of each, the ratio lsei_jax /
reference, and the classifier's achieved GFLOP/s against this machine's float32 matmul
peak (numpy 2048² matmul, median of 10). Needs the reference's venv
(bash ../shared/bench/setup_torch.sh); nothing in lsei_jax imports it. --device cuda runs
the reference on the GPU through benchmarks/torch_ref_device.py and lsei_jax on JAX's default
backend, without the 2-thread limit or the CPU matmul peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(os.path.dirname(ROOT), 'shared', 'bench')
# (stage, image) → (warmup, steps), as in the reference's run_all.py.
GRID = {('classifier', 64): (3, 20), ('classifier', 32): (5, 50), ('dvae', 64): (3, 30),
        ('dvae', 32): (5, 100), ('explainer', 64): (2, 8), ('explainer', 32): (3, 20),
        ('fisher', 64): (2, 10), ('fisher', 32): (3, 40)}
# Training FLOPs per image of the classifier step (≈ 3 × forward; reference README).
CLASSIFIER_TRAIN_FLOP = {64: 3 * 143_393_792, 32: 3 * 35_849_216}


def busy_s() -> float:
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return (sum(v[:8]) - v[3] - v[4]) / os.sysconf('SC_CLK_TCK')


def wait_quiet(quiet: float, max_wait: float) -> float:
  end = time.time() + max_wait
  while True:
    b0, t0 = busy_s(), time.time()
    time.sleep(2.0)
    frac = (busy_s() - b0) / ((time.time() - t0) * (os.cpu_count() or 1))
    if frac < quiet or time.time() > end:
      return frac


def run(cmd, cwd) -> dict | None:
  p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
  lines = p.stdout.strip().splitlines()
  try:
    return json.loads(lines[-1])
  except (IndexError, json.JSONDecodeError):
    print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
    return None


def measured(cmd, cwd, a) -> dict | None:
  best = None
  for _ in range(a.tries):
    wait_quiet(a.quiet, a.max_wait)
    res = run(cmd, cwd)
    if res is None:
      return None
    if best is None or res.get('other_cpu_frac', 0) < best.get('other_cpu_frac', 0):
      best = res
    if res.get('other_cpu_frac', 0) <= a.max_other:
      break
  return best


def matmul_peak_gflops() -> float:
  a = np.random.default_rng(0).random((2048, 2048), np.float32)
  b = a.copy()
  a @ b
  a @ b
  ts = []
  for _ in range(10):
    t0 = time.perf_counter()
    a @ b
    ts.append(time.perf_counter() - t0)
  return 2 * 2048**3 / np.median(ts) / 1e9


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--python_ref', default=os.path.expanduser('~/.cache/lsei-torch-ref/bin/python'))
  ap.add_argument('--ref_dir', default=REF, help="folder holding the reference's torch_ref.py")
  ap.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
  ap.add_argument('--stages', nargs='*', default=['classifier', 'dvae', 'explainer', 'fisher'])
  ap.add_argument('--images', nargs='*', type=int, default=[64, 32])
  ap.add_argument('--tries', type=int, default=3)
  ap.add_argument('--quiet', type=float, default=0.05)
  ap.add_argument('--max_other', type=float, default=0.05)
  ap.add_argument('--max_wait', type=float, default=120.0)
  ap.add_argument('--malloc', choices=('default', 'tuned'), default='default',
                  help='reference allocator (see its README); lsei_jax is unaffected')
  a = ap.parse_args()
  a.ref_dir = os.path.abspath(a.ref_dir)  # the reference runs with cwd=ref_dir
  rows = []
  for stage in a.stages:
    for image in a.images:
      warmup, steps = GRID[(stage, image)]
      common = ['--stage', stage, '--batch', '64', '--image', str(image), '--samples', '8',
                '--steps', str(steps), '--warmup', str(warmup)]
      if a.device == 'cuda':
        ref_cmd = [a.python_ref, os.path.join(ROOT, 'benchmarks', 'torch_ref_device.py'),
                   '--ref_dir', a.ref_dir, *common]
      else:
        ref_cmd = [a.python_ref, 'torch_ref.py', *common, '--threads', '2']
      if a.malloc == 'tuned':
        ref_cmd = ['env', 'GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold='
                   '68719476736'] + ref_cmd
      ref = measured(ref_cmd, a.ref_dir, a)
      ours = measured([sys.executable, 'benchmarks/bench_stages.py', *common], ROOT, a)
      for r in (ref, ours):
        print(json.dumps(r), flush=True)
      if ref and ours:
        rows.append((stage, image, ref, ours))
  peak = matmul_peak_gflops() if a.device == 'cpu' else None
  if peak:
    print(f'\nfloat32 matmul peak (numpy 2048²): {peak:.0f} GFLOP/s')
  print(f'| stage | image | reference img/s | lsei_jax img/s | ratio | other CPU ref / ours |')
  print('|---|---|---|---|---|---|')
  for stage, image, ref, ours in rows:
    print(f'| {stage} | {image} | {ref["images_per_s"]:.1f} | {ours["images_per_s"]:.1f} | '
          f'{ours["images_per_s"] / ref["images_per_s"]:.2f}× | '
          f'{ref.get("other_cpu_frac", 0):.3f} / {ours.get("other_cpu_frac", 0):.3f} |')
  for stage, image, ref, ours in rows:
    if stage == 'classifier' and peak:
      g = ours['images_per_s'] * CLASSIFIER_TRAIN_FLOP[image] / 1e9
      print(f'classifier {image}×{image}: {g:.0f} GFLOP/s = {100 * g / peak:.0f}% of the '
            f'matmul peak')
  return 0


if __name__ == '__main__':
  sys.exit(main())
