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
  args = ap.parse_args()
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
  shutil.rmtree(cache, ignore_errors=True)
  base = next((r for r in rows if r['fisher_chunk'] == 0), rows[0])
  print(f'\n{args.stage}, batch {args.batch}, {args.image}×{args.image}, '
        f'{args.samples} perturbations')
  print('| fisher_chunk | steps RSS GB (cached executable) | peak RSS with compilation GB | '
        'median step s | × unbounded | compile s | other CPU |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['fisher_chunk'] or 'none'} | {r['peak_rss_mb'] / 1024:.2f} | "
          f"{r['peak_rss_compile_mb'] / 1024:.2f} | "
          f"{r['median_step_s']:.3f} | {r['median_step_s'] / base['median_step_s']:.2f} | "
          f"{r['compile_s']:.1f} | {r['other_cpu_frac']:.2f} |")


if __name__ == '__main__':
  main()
