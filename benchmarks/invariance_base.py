"""The invariance samples' shares (metrics.json 'invariance') for a choice of conditional
base, flow steps, PCA latent size and temperatures, on the validation and test splits
(issue 26; docs/method.md § "The invariances as stages").

  python benchmarks/invariance_base.py --source=runs/shapes --base=nearest --steps=100 \\
      --temperatures=1,0.5 --splits=validation,test

--source: a workdir of configs/shapes.py with the classifier and the probe trained (e.g. the
demo's); it is copied (never written) to --workdir, where 'invariance' (and 'autoencoder'
where --latent_dim or --iterations is given) are trained afresh. T is set at evaluation
only (stages.invariance.evaluate_invariance's temperature), so one training serves every T.
Prints one JSON line per (split, T) with the shares and both probes' attribute changes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEYS = ('label_kept', 'recon_label_kept', 'attribute_change', 'attribute_change_latent',
        'sample_spread_latent', 'neighbour_attribute_change', 'varied', 'varied_latent',
        'unencoded_varied', 'unencoded_varied_latent', 'relied_on', 'relied_kept',
        'relied_kept_latent', 'round_trip_max_abs', 'attribute_change_where_relied',
        'attribute_change_where_relied_latent', 'relied_kept_per_image',
        'relied_kept_per_image_latent')


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument('--source', required=True)
  ap.add_argument('--workdir', default='')
  ap.add_argument('--base', default='nearest')
  ap.add_argument('--steps', type=int, default=100)
  ap.add_argument('--latent_dim', type=int, default=0, help='0: the config\'s')
  ap.add_argument('--iterations', type=int, default=-1, help='PCA iterations; -1: the config\'s')
  ap.add_argument('--temperatures', default='0.5')
  ap.add_argument('--splits', default='validation,test')
  args = ap.parse_args()
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.node import Context  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.spec import resolve  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.stages import invariance  # pylint: disable=g-import-not-at-top

  c = shapes.get_config()
  c.invariance.enabled = True
  c.invariance.base, c.invariance.steps = args.base, args.steps
  retrain = ['invariance']
  if args.latent_dim or args.iterations >= 0:   # given: fitted afresh (the source's may differ)
    c.autoencoder.latent_dim = args.latent_dim or c.autoencoder.latent_dim
    c.autoencoder.iterations = args.iterations if args.iterations >= 0 \
        else c.autoencoder.iterations
    retrain.insert(0, 'autoencoder')
  workdir = args.workdir or f'{args.source.rstrip("/")}_invariance_{args.base}_{args.steps}'
  if not os.path.isdir(workdir):
    shutil.copytree(args.source, workdir, ignore=shutil.ignore_patterns('eval', *retrain))
  t0 = time.perf_counter()
  pipeline.train(c, workdir, retrain)
  print(json.dumps({'trained': retrain, 'wall_s': round(time.perf_counter() - t0, 2)}),
        flush=True)
  for split in args.splits.split(','):
    spec, ds = resolve(c, split, check=False)
    ctx = Context(spec, workdir, ds, split=split)
    graph.load_nodes(ctx, ['classifier', 'autoencoder', 'probe', 'invariance'])
    for t in (float(x) for x in args.temperatures.split(',')):
      res = invariance.evaluate_invariance(ctx, temperature=t)['invariance']
      print(json.dumps(dict(split=split, temperature=t, base=args.base, steps=args.steps,
                            latent_dim=c.autoencoder.latent_dim,
                            iterations=c.autoencoder.iterations,
                            **{k: res[k] for k in KEYS if k in res})), flush=True)


if __name__ == '__main__':
  main()
