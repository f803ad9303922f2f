"""Peak RSS and step time of the regularized explainer step for Fisher chunk sizes.

  python benchmarks/bench_fisher_memory.py [--chunks 0 4 2 1] [--steps 5]

Each setting runs `bench_stages.py --stage explainer` (batch 64, 64×64, 8 perturbations by
default) in its own process, so that peak RSS (ru_maxrss, compilation included) belongs to
that setting alone. Compilation can take more memory than the step itself (and malloc keeps
it), so each setting runs twice with a private persistent compilation cache: the first run
compiles (`peak_rss_mb` with compilation), the second loads the executables from the cache,
and its peak RSS is the step's own (`steps RSS`); times are the second run's. chunk 0 is the unbounded step (with --group perturbations per unrolled
group). Prints bench_stages' JSON line per setting, then a table with each setting's time
relative to the unbounded step.

On a shared machine the load changes between those processes, so --paired (default on)
also times every setting in one more process that runs their steps in turn (round robin,
--steps rounds): each setting then sees the same load, and the `× unbounded, paired`
column is the ratio of medians from that process (its RSS is all settings' together, so
it is not reported).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--chunks', type=int, nargs='+', default=[0, 4, 2, 1])
  ap.add_argument('--group', type=int, default=2)
  ap.add_argument('--stage', default='explainer')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--image', type=int, default=64)
  ap.add_argument('--samples', type=int, default=8)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--paired', action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument('--paired_child', action='store_true', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.paired_child:
    return _paired_times(args)
  rows = []
  cache = tempfile.mkdtemp(prefix='fisher_mem_cache_')
  for chunk in args.chunks:
    cmd = [sys.executable, os.path.join(HERE, 'bench_stages.py'), '--stage', args.stage,
           '--batch', str(args.batch), '--image', str(args.image), '--samples',
           str(args.samples), '--steps', str(args.steps), '--warmup', str(args.warmup),
           '--fisher_chunk', str(chunk), '--fisher_group', str(args.group)]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(cache, str(chunk)),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                      env=env).stdout.strip().splitlines()[-1])
            for _ in range(2)]
    row = dict(runs[1], peak_rss_compile_mb=runs[0]['peak_rss_mb'],
               compile_s=runs[0]['compile_s'])
    print(json.dumps(row), flush=True)
    rows.append(row)
  paired = {}
  if args.paired:
    cmd = [sys.executable, os.path.abspath(__file__), '--paired_child', '--chunks',
           *map(str, args.chunks)] + [f'--{k}={getattr(args, k)}' for k in
                                      ('group', 'stage', 'batch', 'image', 'samples', 'steps',
                                       'warmup')]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    paired = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    print(json.dumps({'paired_median_step_s': paired}), flush=True)
  shutil.rmtree(cache, ignore_errors=True)
  base = next((r for r in rows if r['fisher_chunk'] == 0), rows[0])
  print(f'\n{args.stage}, batch {args.batch}, {args.image}×{args.image}, '
        f'{args.samples} perturbations')
  print('| fisher_chunk | steps RSS GB (cached executable) | peak RSS with compilation GB | '
        'median step s | × unbounded | × unbounded, paired | compile s | other CPU |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    c = r['fisher_chunk']
    ratio = f'{paired[c] / paired[base["fisher_chunk"]]:.2f}' if paired else '-'
    print(f"| {c or 'none'} | {r['peak_rss_mb'] / 1024:.2f} | "
          f"{r['peak_rss_compile_mb'] / 1024:.2f} | "
          f"{r['median_step_s']:.3f} | {r['median_step_s'] / base['median_step_s']:.2f} | "
          f"{ratio} | {r['compile_s']:.1f} | {r['other_cpu_frac']:.2f} |")


def _paired_times(args) -> None:
  """Median step time per chunk setting, the settings' steps run in turn in this process."""
  # Imported here: the parent process only launches children and needs no JAX.
  import time
  sys.path.insert(0, HERE)
  import jax
  import bench_stages
  steps = {}
  for chunk in args.chunks:
    step, carry, data = bench_stages.build(args.stage, args.batch, args.image, args.samples,
                                           args.batch, chunk or None, args.group or None)
    for _ in range(max(args.warmup, 1)):               # compiles, then warms up
      carry = jax.block_until_ready(step(carry, data))
    steps[chunk] = [step, carry, data]
  times = {chunk: [] for chunk in args.chunks}
  for _ in range(args.steps):
    for chunk, s in steps.items():
      t0 = time.perf_counter()
      s[1] = jax.block_until_ready(s[0](s[1], s[2]))
      times[chunk].append(time.perf_counter() - t0)
  print(json.dumps({c: sorted(t)[len(t) // 2] for c, t in times.items()}))


if __name__ == '__main__':
  main()
