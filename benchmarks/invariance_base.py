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
--linear, --eval_images: the flow's mixing layer and the images evaluated (the config's by
default); --num_test=N evaluates on a test split of N images, other images than the
config's (shapes.draw: another size, other draws), on which no choice was made.
--ceiling=256,512,…: instead, per split the share of images whose reconstruction by the top
m components of one PCA fit keeps the classifier's label (the cap on label_kept; no flow).

  python benchmarks/invariance_base.py --source=runs/shapes --ceiling=256,384,512,768,1024
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
  ap.add_argument('--linear', default='', help="the flow's mixing layer ('lu', 'permute'); "
                  "'': the config's")
  ap.add_argument('--eval_images', type=int, default=0, help="0: the config's")
  ap.add_argument('--num_test', type=int, default=0,
                  help="evaluate on a test split of this many images (0: the config's): "
                  "another size draws other images (shapes.draw), a split no choice was made on")
  ap.add_argument('--latent_dim', type=int, default=0, help='0: the config\'s')
  ap.add_argument('--iterations', type=int, default=-1, help='PCA iterations; -1: the config\'s')
  ap.add_argument('--temperatures', default='0.5')
  ap.add_argument('--splits', default='validation,test')
  ap.add_argument('--ceiling', default='',
                  help='comma-separated m: instead, print per split the share of images whose '
                  'reconstruction by the top m components of one PCA fit (at the largest m, '
                  '--iterations or the config\'s) keeps the classifier\'s label (no flow)')
  args = ap.parse_args()
  if args.ceiling:
    return ceiling(args, [int(m) for m in args.ceiling.split(',')])
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.node import Context  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.spec import resolve  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.stages import invariance  # pylint: disable=g-import-not-at-top

  c = shapes.get_config()
  c.invariance.enabled = True
  c.invariance.base, c.invariance.steps = args.base, args.steps
  c.invariance.warmup_steps = min(c.invariance.warmup_steps, args.steps // 2)   # < steps
  c.invariance.linear = args.linear or c.invariance.linear
  c.invariance.eval_images = args.eval_images or c.invariance.eval_images
  retrain = ['invariance']
  if args.latent_dim or args.iterations >= 0 or not os.path.isdir(
      os.path.join(args.source, 'autoencoder')):   # given or missing: fitted afresh
    c.autoencoder.latent_dim = args.latent_dim or c.autoencoder.latent_dim
    c.autoencoder.iterations = args.iterations if args.iterations >= 0 \
        else c.autoencoder.iterations
    retrain.insert(0, 'autoencoder')
  workdir = args.workdir or (f'{args.source.rstrip("/")}_invariance_{args.base}_{args.steps}'
                             f'_{c.invariance.linear}')
  if not os.path.isdir(workdir):
    shutil.copytree(args.source, workdir, ignore=shutil.ignore_patterns('eval', *retrain))
  t0 = time.perf_counter()
  pipeline.train(c, workdir, retrain)
  print(json.dumps({'trained': retrain, 'wall_s': round(time.perf_counter() - t0, 2)}),
        flush=True)
  if args.num_test:
    c.data.num_test = args.num_test
  for split in args.splits.split(','):
    spec, ds = resolve(c, split, check=False)
    ctx = Context(spec, workdir, ds, split=split)
    graph.load_nodes(ctx, ['classifier', 'autoencoder', 'probe', 'invariance'])
    for t in (float(x) for x in args.temperatures.split(',')):
      res = invariance.evaluate_invariance(ctx, temperature=t)['invariance']
      print(json.dumps(dict(split=split, temperature=t, base=args.base, steps=args.steps,
                            linear=c.invariance.linear, eval_images=c.invariance.eval_images,
                            latent_dim=c.autoencoder.latent_dim,
                            iterations=c.autoencoder.iterations,
                            **{k: res[k] for k in KEYS if k in res})), flush=True)


def ceiling(args, dims: list) -> None:
  """recon_label_kept for each m of dims: the cap on the samples' label_kept at that m."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax.inn import linear_ae  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, graph  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.node import Context  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.spec import resolve  # pylint: disable=g-import-not-at-top
  c = shapes.get_config()
  if args.num_test:
    c.data.num_test = args.num_test
  iterations = args.iterations if args.iterations >= 0 else c.autoencoder.iterations
  fitted = None
  for split in args.splits.split(','):
    spec, ds = resolve(c, split, check=False)
    ctx = Context(spec, args.source, ds, split=split)
    graph.load_nodes(ctx, ['classifier'])
    if fitted is None:
      mean, w, _ = linear_ae.fit(artifacts.train_images(ctx), max(dims), iterations=iterations,
                                 seed=spec.stream_seed('autoencoder/pca'))
      fitted = True
    classify = artifacts.classify_fn(ctx.classifier, c.eval.batch_size, ctx.mesh)
    images = np.asarray(ds.images)
    label = np.argmax(classify(images), -1)
    x = images.reshape(len(images), -1) / 255.0 - mean
    for m in dims:
      recon = np.clip(mean + (x @ w[:, :m]) @ w[:, :m].T, 0, 1).reshape(images.shape)
      kept = np.argmax(classify(np.round(recon * 255).astype(np.uint8)), -1) == label
      print(json.dumps(dict(split=split, latent_dim=m, images=len(images),
                            iterations=iterations, recon_label_kept=float(kept.mean()))),
            flush=True)


if __name__ == '__main__':
  main()
