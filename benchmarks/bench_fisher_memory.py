"""Peak RSS and step time of the regularized explainer step for Fisher chunk sizes.

  python benchmarks/bench_fisher_memory.py [--chunks 0 4 2 1] [--steps 5]

Each setting runs `bench_stages.py --stage explainer` (batch 64, 64×64, 8 perturbations by
default) in its own process, so that peak RSS (ru_maxrss, compilation included) belongs to
that setting alone: `peak_rss_steps_mb` is the peak of the timed steps (the peak is reset
after compilation and warm-up), `peak_rss_mb` the whole process's. chunk 0 is the unbounded step (with --group perturbations per unrolled
group). Prints bench_stages' JSON line per setting, then a table with each setting's time
relative to the unbounded step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

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
  for chunk in args.chunks:
    cmd = [sys.executable, os.path.join(HERE, 'bench_stages.py'), '--stage', args.stage,
           '--batch', str(args.batch), '--image', str(args.image), '--samples',
           str(args.samples), '--steps', str(args.steps), '--warmup', str(args.warmup),
           '--fisher_chunk', str(chunk), '--fisher_group', str(args.group)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    rows.append(row)
  base = next((r for r in rows if r['fisher_chunk'] == 0), rows[0])
  print(f'\n{args.stage}, batch {args.batch}, {args.image}×{args.image}, '
        f'{args.samples} perturbations')
  print('| fisher_chunk | peak RSS of the steps GB | peak RSS with compilation GB | '
        'median step s | × unbounded | compile s | other CPU |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    steps_gb = (r.get('peak_rss_steps_mb') or float('nan')) / 1024
    print(f"| {r['fisher_chunk'] or 'none'} | {steps_gb:.2f} | {r['peak_rss_mb'] / 1024:.2f} | "
          f"{r['median_step_s']:.3f} | {r['median_step_s'] / base['median_step_s']:.2f} | "
          f"{r['compile_s']:.1f} | {r['other_cpu_frac']:.2f} |")


if __name__ == '__main__':
  main()
