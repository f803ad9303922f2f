"""The demo's classifier over seeds, without the other stages: its accuracy on the
correlated test split and on the unbiased one, the ground truth (flip rate per attribute,
the test images re-rendered with one attribute flipped) and the verdict's rows, one JSON
line per seed (what configs/shapes.py's docstring quotes).

  python benchmarks/demo_seeds.py --seeds 0,1,2 --out runs/demo_seeds.jsonl \\
      [--set data.rho=0.8 --set classifier.steps=300 …]
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(seed: int, overrides: dict, workdir: str) -> dict:
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import data as data_lib, pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, evaluation  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  c = shapes.get_config()
  with c.unlocked():
    c.seed, c.log_every = seed, 10**6
    for key, value in overrides.items():
      section, field = key.split('.')
      c[section][field] = value
  t0 = time.time()
  pipeline.train(c, workdir, ('classifier',))
  ctx = evaluation.load(c, workdir, ['classifier'])
  test, split, bs = ctx.data, ctx.classifier, c.eval.batch_size
  pred = np.argmax(artifacts.classify_fn(split, bs, ctx.mesh)(test.images), -1)
  reliance = artifacts.ground_truth_reliance(c.data, split, test, bs, ctx.mesh)
  rows = bias.prediction_association(pred, test.attributes, list(test.attribute_names),
                                     test.task, c.model.classifier.num_classes,
                                     level=c.eval.ci_level, min_effect=c.eval.min_effect,
                                     max_hidden=c.eval.max_hidden)
  unbiased = artifacts.unbiased_accuracy(c.data, split, bs, ctx.mesh)
  return {'seed': seed, 'overrides': overrides,
          'accuracy': float(np.mean(pred == test.labels)),
          'accuracy_unbiased': unbiased,
          'flip_rate': {k: round(v['flip_rate'], 4) for k, v in reliance.items()},
          'verdict': {r['attribute']: [round(r['shift'], 4), round(r['ci_low'], 4),
                                       round(r['ci_high'], 4), r['verdict']] for r in rows},
          'seconds': round(time.time() - t0, 1)}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--seeds', default='0,1,2')
  ap.add_argument('--out', required=True, help='JSON lines file to append to')
  ap.add_argument('--workdir', default='runs/demo_seeds')
  ap.add_argument('--set', action='append', default=[],
                  help='section.field=value (a Python literal), e.g. classifier.steps=300')
  args = ap.parse_args(argv)
  overrides = {k: ast.literal_eval(v) for k, v in (s.split('=', 1) for s in args.set)}
  tag = ','.join(f'{k}={v}' for k, v in sorted(overrides.items())) or 'default'
  for seed in (int(s) for s in args.seeds.split(',')):
    line = run(seed, overrides, os.path.join(args.workdir, f'{tag}_s{seed}'))
    print(json.dumps(line), flush=True)
    with open(args.out, 'a') as f:
      f.write(json.dumps(line) + '\n')


if __name__ == '__main__':
  main()
