"""Concept learners side by side on one trained classifier: the paper's DVAE, a TopK sparse
autoencoder at the DVAE's L0, and NMF, over several seeds.

  python benchmarks/concepts.py --config configs/shapes.py --workdir /tmp/concepts \
      [--seeds 0 1 2] [--kinds dvae topk_sae nmf] [--steps 1500] [--out concepts.json] \
      [--set model.topk_sae.b_dec_init=zeros ...]

Trains the config's classifier once (WORKDIR/classifier), then for each seed and learner
its concept stage on that classifier, given as a ClassifierSplit so that only the
learner's seed changes (WORKDIR/<kind>_s<seed>), the DVAE first: the TopK
SAE's k is the DVAE's mean number of bits on (rounded, ≥ 1; matched L0; without the DVAE
in --kinds, the config's k). NMF has no L0
knob: its L0 is reported as found. Per run it prints one JSON line with Table 1's figures
(accuracy, accuracy on ĥ, agreement, % change under toggle-all) and the concept metrics
(evaluation.concept_evaluation); then per learner mean ± std over seeds, the stability of
its codes across seeds (Hungarian-matched |correlation|, mean over seed pairs) and a
Markdown table. Writes everything to --out as JSON.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsei_jax import concept_metrics  # noqa: E402
from lsei_jax.pipeline import evaluation  # noqa: E402
from lsei_jax import pipeline  # noqa: E402
from lsei_jax.training import parallel  # noqa: E402

# (label, path into a run's results) of the figures the table shows.
FIGURES = (('VE', ('concepts', 'variance_explained')), ('NMSE', ('concepts', 'normalized_mse')),
           ('L0', ('concepts', 'l0')), ('dead', ('concepts', 'dead_fraction')),
           ('always on', ('concepts', 'always_on_fraction')),
           ('acc. recovered', ('concepts', 'accuracy_recovered')),
           ('decisive units', ('concepts', 'num_decisive_units')),
           ('MCC', ('concepts', 'factor_recovery', 'mcc')),
           ('% change', ('flip_all_change',)), ('agreement', ('agreement',)))


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def set_field(config, item: str) -> None:
  """Applies 'a.b.c=value' to config (value: a Python literal, else the string)."""
  field, sep, raw = item.partition('=')
  if not sep:
    raise SystemExit(f'--set {item!r}: expected FIELD=VALUE')
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  *parents, last = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  if last not in node:
    raise SystemExit(f'--set: config has no field {field!r}')
  node[last] = value


def get(d: dict, path) -> float:
  for k in path:
    d = d[k]
  return float(d)


def run_learner(config, base: str, split, kind: str, seed: int, mesh
                ) -> tuple[dict, np.ndarray]:
  """Trains `kind` with `seed` on the given classifier split and evaluates it."""
  wd = os.path.join(base, f'{kind}_s{seed}')
  c = config.copy_and_resolve_references()
  c.seed, c.model.concepts.kind = seed, kind
  t0 = time.time()
  pipeline.train(c, wd, ['concepts'], classifier=split, mesh=mesh)
  train_s = time.time() - t0
  res, codes = evaluation.concept_evaluation(c, wd, classifier=split, mesh=mesh)
  res.update(kind=kind, seed=seed, train_s=train_s)
  return res, codes


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default='configs/shapes.py')
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  ap.add_argument('--kinds', nargs='+', default=['dvae', 'topk_sae', 'nmf'])
  ap.add_argument('--steps', type=int, default=0, help='concept stage steps (0: config)')
  ap.add_argument('--out', default='')
  ap.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                  help='override a config field (VALUE parsed as a Python literal, else a '
                       'string), e.g. model.topk_sae.dead_steps=32')
  args = ap.parse_args(argv)
  config = load_config(args.config)
  for item in args.set:
    set_field(config, item)
  if args.steps:
    config.concepts.steps = args.steps
  mesh = parallel.make_mesh()
  pipeline.train(config, args.workdir, ['classifier'], mesh=mesh)
  split = evaluation.load(config, args.workdir, ['classifier'], mesh=mesh).classifier
  runs, codes = [], {}
  kinds = sorted(args.kinds, key=lambda k: k != 'dvae')  # the DVAE first: it sets k
  for seed in args.seeds:
    for kind in kinds:
      if kind == 'topk_sae' and 'dvae' in kinds:
        dvae_l0 = next(r for r in runs if r['kind'] == 'dvae' and r['seed'] == seed)
        config.model.topk_sae.k = max(1, int(round(dvae_l0['concepts']['l0'])))
      res, codes[kind, seed] = run_learner(config, args.workdir, split, kind, seed, mesh)
      if kind == 'topk_sae':
        res['k'] = int(config.model.topk_sae.k)
      runs.append(res)
      print(json.dumps({k: v for k, v in res.items()}, default=float), flush=True)
  summary = {}
  for kind in kinds:
    mine = [r for r in runs if r['kind'] == kind]
    summary[kind] = {label: {'mean': float(np.mean([get(r, p) for r in mine])),
                             'std': float(np.std([get(r, p) for r in mine]))}
                     for label, p in FIGURES}
    pairs = [concept_metrics.stability(codes[kind, a], codes[kind, b])
             for a, b in itertools.combinations(args.seeds, 2)]
    summary[kind]['stability'] = {'mean': float(np.mean(pairs)) if pairs else float('nan'),
                                  'std': float(np.std(pairs)) if pairs else float('nan')}
  labels = [label for label, _ in FIGURES] + ['stability']
  lines = ['| learner | ' + ' | '.join(labels) + ' |', '|---' * (len(labels) + 1) + '|']
  for kind, s in summary.items():
    lines.append(f'| {kind} | ' + ' | '.join(f'{s[l]["mean"]:.3g} ± {s[l]["std"]:.2g}'
                                             for l in labels) + ' |')
  print('\n'.join(lines))
  out = {'config': args.config, 'seeds': args.seeds, 'steps': config.concepts.steps, 'set': args.set,
         'runs': runs, 'summary': summary, 'table': lines}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=2, default=float)
  return out


if __name__ == '__main__':
  main()
