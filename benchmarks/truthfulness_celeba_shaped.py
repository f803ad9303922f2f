"""Truthfulness of the verdict on a CelebA-shaped cell (issue 25): 13 visible binary
attributes, 11 of them with CelebA's marginals and pairwise correlations
(lsei_jax/data/celeba_stats.py: phi coefficients from list_attr_celeba.txt; its docstring
says which copy), rendered by lsei_jax/data/shapes_many.py; task `Male` (square | circle).

Each classifier is trained through the users' path: the training split written to an .npz
and read with data.name='numpy' (configs/small.py's sizes, 1,200 steps; or configs/tiny.py
for --quick). Training splits (`train`):
  celeba     the CelebA correlations (Male with Wearing_Lipstick −0.78, Heavy_Makeup −0.66,
             No_Beard −0.52, Attractive −0.40, …: the sampled figures, see shapes_many)
  lipstick   the same, then Wearing_Lipstick replaced by ¬Male in RHO_LIPSTICK of the images
             (a classifier with a reason to read the dot)
and the task easy (object scale 1.0, noise 0.04) or hard (0.7, 0.08; as
benchmarks/truthfulness.py). The test split is drawn afresh with CelebA's correlations (as
CelebA's own test split would be): each pair is separated by some of its images, so every
attribute is one the test split identifies. Ground truth: each test image rendered again
with one attribute flipped (same nuisance), reliance = the share of predictions that change.
Each cell also renders a `validation` split (num_test images drawn like its training split,
its own named stream; validation_split), predicted and flipped the same way: held-out
images of the training distribution, what the shipped verdict reads for rows the test
split leaves 'cannot tell' (reporting/heldout.py).

Scored per method, pooled over the classifiers (one row per training split and for all):
coverage (share answered, not 'cannot tell'), precision and recall of 'relied on' (relied
on: reliance more than 0.05 above the largest reliance of the two control attributes, which
are independent fair coins in every split), recall on reliance > 0.25, FPR on unused
attributes (reliance at or below the controls' largest) and on reliance < 0.05, wrong answers
('relied on' for an unused attribute, 'no evidence' for reliance > 0.25; 'cannot tell' is
never wrong, only uncovered), median Spearman (as benchmarks/truthfulness_correlated.py);
and against the signed average effect E[1[ŷ(a=1) = 1] − 1[ŷ(a=0) = 1]] over the test split
(from the same re-renders): the share of the verdict's intervals that contain it and the
absolute error of its effect (`effect_errors` also compares a fit with every a × other
interaction, a diagnostic).
Methods: prediction_association (the test split's look, lsei_jax/reporting/association.py:
the split's average effect, interactions where each cell holds ≥ 10 images), pooled_verdict
(what the classifier stage ships, heldout.prediction_association: each 'cannot tell' row,
confounded, too wide or constant, looked at again on the test and validation images pooled
at half the α), two_looks (the rule before: a confounded row on the validation split alone
at the verdict's α, the others pooled; truthfulness_correlated.two_looks); a held-out row's
interval is scored against the effect over the images it read (target_effect), additive_fit (the
same rows with min_cell=None: the additive fit the verdict used before) and correlation_gate
(the verdict before issue 25: 'cannot tell' for |r| > 0.1 with another attribute;
truthfulness_correlated.gate_rows).

Usage (resumable, one JSON line per classifier):
  python benchmarks/truthfulness_celeba_shaped.py --out runs/celeba_shaped
  python benchmarks/truthfulness_celeba_shaped.py --quick --out /tmp/c   # one tiny cell (tests)
  python benchmarks/truthfulness_celeba_shaped.py --out DIR --table      # the table only
  python benchmarks/truthfulness_celeba_shaped.py --out DIR --candidates # interaction thresholds
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import truthfulness  # noqa: E402  pylint: disable=g-import-not-at-top
import truthfulness_correlated  # noqa: E402  pylint: disable=g-import-not-at-top

TASK = 'Male'
TRAINS = ('celeba', 'lipstick')
RHO_LIPSTICK = 0.97
METHODS = ('prediction_association', 'pooled_verdict', 'two_looks', 'additive_fit',
           'correlation_gate')


def grid(quick: bool = False, trains=TRAINS, difficulty=('easy', 'hard'), seeds=(0, 1)
         ) -> list[dict]:
  if quick:
    return [dict(train='lipstick', difficulty='easy', seed=0)]
  return [dict(train=t, difficulty=d, seed=k)
          for t, d, k in itertools.product(trains, difficulty, seeds)]


def cell_key(cell: dict) -> str:
  return f'{cell["train"]}-{cell["difficulty"]}-s{cell["seed"]}'


def train_attributes(rng: np.random.Generator, n: int, train: str) -> np.ndarray:
  """bool [n, 13] of a training split (see the module docstring)."""
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  if train not in TRAINS:
    raise ValueError(f'unknown training split {train!r}; known: {", ".join(TRAINS)}')
  attrs = shapes_many.sample_attributes(rng, n)
  agree = rng.random(n) < RHO_LIPSTICK      # drawn for both, so the splits share the rest
  if train == 'lipstick':
    names = shapes_many.ATTRIBUTES
    male = attrs[:, names.index(TASK)]
    attrs[:, names.index('Wearing_Lipstick')] = np.where(agree, ~male, male)
  return attrs


def write_npz(path: str, cell: dict, num_train: int, num_test: int, image_size: int,
              noise: float, scale: float) -> None:
  """The cell's training split (and a test split the pipeline holds out) as the .npz a user
  would pass with data.name='numpy'."""
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([cell['seed'], 2025, TRAINS.index(cell['train'])])
  attrs = np.concatenate([train_attributes(rng, num_train, cell['train']),
                          shapes_many.sample_attributes(rng, num_test)])
  images = shapes_many.render(rng, attrs, image_size, noise, scale)
  np.savez(path, images=images, attributes=attrs,
           attribute_names=np.array(shapes_many.ATTRIBUTES),
           split=np.array(['train'] * num_train + ['test'] * num_test))


def cell_config(cell: dict, npz: str, base: str = 'small'):
  """configs/<base>.py reading the cell's .npz (1,200 classifier steps with small)."""
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{base}').get_config()
  with c.unlocked():
    c.seed = cell['seed']
    c.data = dict(name='numpy', path=npz, image_size=c.data.image_size, task=TASK,
                  resize=False, seed=cell['seed'])
    c.classifier.steps = max(c.classifier.steps, 1200) if base == 'small' else c.classifier.steps
    c.sanity.enabled = False
    c.log_every = 10**6
  return c


def test_split(cell: dict, num_test: int) -> tuple[np.ndarray, int]:
  """(bool [N, 13] drawn with CelebA's correlations, the seed of its renders' nuisance)."""
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([cell['seed'], 2026])
  return shapes_many.sample_attributes(rng, num_test), int(rng.integers(2**31))


def validation_split(cell: dict, num: int) -> tuple[np.ndarray, int]:
  """(bool [num, 13] drawn like the cell's training split (its `train` correlations), the
  seed of its renders' nuisance): held-out images of the training distribution that the
  classifier never saw (the 'validation' split of reporting/heldout.py), from their own named
  stream (shared by the two training splits of a seed, as those share their other
  attributes)."""
  from lsei_jax import streams  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(streams.stream_seed(cell['seed'], 'celeba_shaped/validation'))
  return train_attributes(rng, num, cell['train']), int(rng.integers(2**31))


def run_cell(cell: dict, workdir: str, base: str, num_test: int) -> dict:
  """Trains the cell's classifier on its .npz; its test predictions, ground truth and the
  rows of every method. One JSON line."""
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, evaluation  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  import importlib  # pylint: disable=g-import-not-at-top
  d = importlib.import_module(f'configs.{base}').get_config().data
  scale, noise = truthfulness.DIFFICULTY[cell['difficulty']]
  npz = os.path.join(workdir, 'data.npz')
  write_npz(npz, cell, d.num_train, 256, d.image_size, noise, scale)
  config = cell_config(cell, npz, base)
  pipeline.train(config, os.path.join(workdir, 'run'), ('classifier',))
  ctx = evaluation.load(config, os.path.join(workdir, 'run'), ['classifier'])
  classify = artifacts.classify_fn(ctx.classifier, config.eval.batch_size, ctx.mesh)
  names = list(shapes_many.ATTRIBUTES)
  attrs, seed = test_split(cell, num_test)
  pred, reliance = flips(classify, attrs, seed, names, d.image_size, noise, scale)
  vattrs, vseed = validation_split(cell, num_test)
  vpred, vreliance = flips(classify, vattrs, vseed, names, d.image_size, noise, scale)
  return {'cell': cell_key(cell), **cell, 'names': names, 'task': TASK, 'num_test': num_test,
          'accuracy': float(np.mean(pred == attrs[:, names.index(TASK)])),
          'test_phi': np.corrcoef(attrs.T.astype(float)).round(4).tolist(),
          'reliance': reliance, 'pred': pred.astype(int).tolist(),
          'pred_validation': vpred.astype(int).tolist(),
          'attributes_validation': pack(vattrs), 'reliance_validation': vreliance,
          'rows': rows_of(pred, attrs, names, (vpred, vattrs)), 'seconds': time.time() - t0}


def flips(classify, attrs: np.ndarray, seed: int, names, image_size: int, noise: float,
          scale: float) -> tuple[np.ndarray, dict]:
  """(predictions int [N] on the split's renders, {attribute: flip_rate, num_examples,
  effect}): each image rendered again with one attribute flipped (same nuisance)."""
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  render = lambda a: shapes_many.render(np.random.default_rng([seed, 25]), a, image_size,
                                        noise, scale)
  pred = np.argmax(classify(render(attrs)), -1)
  reliance = {}
  for a, n in enumerate(names):
    flipped = attrs.copy()
    flipped[:, a] ^= True
    after = np.argmax(classify(render(flipped)), -1)
    # effect: the signed average effect E[1[ŷ(a=1) = 1] − 1[ŷ(a=0) = 1]] over the split (what
    # the verdict's adjusted effect estimates where the effect is the same for every image).
    on, off = np.where(attrs[:, a], pred, after), np.where(attrs[:, a], after, pred)
    reliance[n] = {'flip_rate': float(np.mean(after != pred)), 'num_examples': len(attrs),
                   'effect': float(np.mean((on == 1).astype(float) - (off == 1)))}
  return pred, reliance


def pack(attrs: np.ndarray) -> list[int]:
  """bool [N, A] → one int per image, bit a = attribute a (a compact JSON field)."""
  return (attrs.astype(np.int64) << np.arange(attrs.shape[1])).sum(1).astype(int).tolist()


def unpack(bits, num_attributes: int) -> np.ndarray:
  """pack's inverse: bool [N, A]."""
  return (np.asarray(bits, np.int64)[:, None] >> np.arange(num_attributes)) & 1 == 1


def rows_of(pred: np.ndarray, attrs: np.ndarray, names, held=None) -> dict:
  """Every method's rows; held: (pred [M], bool [M, 13]) of the validation split, or None
  (a line stored before it: no pooled_verdict)."""
  from lsei_jax.reporting import bias, heldout  # pylint: disable=g-import-not-at-top
  out = {'prediction_association': bias.prediction_association(pred, attrs, names, TASK, 2),
         'additive_fit': bias.prediction_association(pred, attrs, names, TASK, 2,
                                                     min_cell=None),
         'correlation_gate': truthfulness_correlated.gate_rows(pred, attrs, names)}
  if held is not None:      # what the classifier stage ships (heldout.prediction_association)
    out['pooled_verdict'] = heldout.prediction_association(pred, attrs, names, TASK, 2,
                                                           held=held)
    out['two_looks'] = truthfulness_correlated.two_looks(pred, attrs, names, TASK, held)
  return out


def held_of(line: dict) -> tuple[np.ndarray, np.ndarray] | None:
  """The line's stored validation split (pred [M], bool [M, 13]), or None (older lines)."""
  if 'pred_validation' not in line:
    return None
  return (np.asarray(line['pred_validation']),
          unpack(line['attributes_validation'], len(line['names'])))


def rescore(line: dict) -> dict:
  """The line's rows computed again by the current code from its stored predictions (the
  test attributes drawn again from their seed)."""
  attrs, _ = test_split(line, line['num_test'])
  return dict(line, rows=rows_of(np.asarray(line['pred']), attrs, line['names'],
                                 held_of(line)))


def truth(line: dict) -> tuple[dict, dict, dict]:
  """({attribute: reliance}, relied_on, unused): the floor is the controls' largest."""
  from lsei_jax import reliance  # pylint: disable=g-import-not-at-top
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  rel = {n: v['flip_rate'] for n, v in line['reliance'].items()}
  floor = max(rel[n] for n in shapes_many.CONTROLS)
  relied = reliance.relied_on(rel, shapes_many.CONTROLS, margin=truthfulness.MARGIN)
  return rel, relied, {n: v <= floor for n, v in rel.items()}


def target_effect(line: dict, name: str, row: dict) -> float | None:
  """The signed average effect a row's interval estimates: over the test split, or where a
  held-out look answered it (heldout.py's answered_from) over the validation split alone or
  over the test and validation images pooled (their sizes' weighted mean)."""
  test = line['reliance'][name].get('effect')
  held = line.get('reliance_validation', {}).get(name)
  where = row.get('answered_from')
  if where is None or held is None:
    return test
  if where == 'validation':
    return held['effect']
  n_t, n_v = line['reliance'][name]['num_examples'], held['num_examples']
  return (n_t * test + n_v * held['effect']) / (n_t + n_v)


def summarize(lines: list[dict], methods=METHODS) -> list[dict]:
  """One row per (method, training split) and per method over all lines (train 'all')."""
  keys = truthfulness_correlated.COUNT_KEYS + ('with_ci', 'covered')
  acc: dict = {}
  for line in lines:
    rel, relied, unused = truth(line)
    for m in methods:
      if m not in line['rows']:      # a line stored before the method existed
        continue
      for group in (line['train'], 'all'):
        s = acc.setdefault((m, group), dict(dict.fromkeys(keys, 0), spearman=[], err=[]))
        rows = line['rows'][m]
        if any(relied.values()):
          s['spearman'].append(truthfulness_correlated.rank_correlation(
              rows, line['names'], rel, unused))
        for row in rows:
          n = row['attribute']
          truthfulness_correlated.count_row(s, row['verdict'], rel[n], relied[n], unused[n])
          effect = target_effect(line, n, row)
          if effect is not None and 'ci_low' in row:     # the gate has no interval
            s['with_ci'] += 1
            s['covered'] += bool(row['ci_low'] <= effect <= row['ci_high'])
            s['err'].append(abs(row['shift'] - effect))
  ratio = lambda a, b: a / b if b else None
  order = lambda k: (methods.index(k[0]), k[1] == 'all', k[1])
  return [{'method': m, 'train': g, 'classifiers': sum(1 for l in lines if g in ('all', l['train'])),
           'attributes': s['n'], 'coverage': ratio(s['answered'], s['n']),
           'precision': ratio(s['tp'], s['tp'] + s['fp']),
           'recall': ratio(s['tp'], s['tp'] + s['fn']),
           'recall_strong': ratio(s['strong_hit'], s['strong']), 'strong': s['strong'],
           'fpr_unused': ratio(s['fp_unused'], s['unused']), 'unused': s['unused'],
           'fpr_zero': ratio(s['fp_zero'], s['zero']), 'wrong': s['wrong'],
           'median_spearman': float(np.median(s['spearman'])) if s['spearman'] else None,
           'interval_covers_effect': ratio(s['covered'], s['with_ci']),
           'effect_error_median': float(np.median(s['err'])) if s['err'] else None,
           'effect_error_max': float(np.max(s['err'])) if s['err'] else None}
          for (m, g), s in sorted(acc.items(), key=lambda kv: order(kv[0]))]


def format_table(rows: list[dict]) -> str:
  num = lambda v: '—' if v is None else f'{v:.2f}'
  head = ('| method | training split | classifiers | attributes | coverage | precision | '
          'recall | recall (reliance > 0.25) | FPR (unused) | FPR (reliance < 0.05) | '
          'wrong answers | median Spearman | interval covers the effect | '
          'abs. effect error median / max |')
  return '\n'.join([head, '|' + '---|' * 14] + [
      f'| {r["method"]} | {r["train"]} | {r["classifiers"]} | {r["attributes"]} | '
      f'{num(r["coverage"])} | {num(r["precision"])} | {num(r["recall"])} | '
      f'{num(r["recall_strong"])} ({r["strong"]}) | {num(r["fpr_unused"])} ({r["unused"]}) | '
      f'{num(r["fpr_zero"])} | {r["wrong"]} | {num(r["median_spearman"])} | '
      f'{num(r["interval_covers_effect"])} | {num(r["effect_error_median"])} / '
      f'{num(r["effect_error_max"])} |' for r in rows])


def interaction_effects(pred: np.ndarray, attrs: np.ndarray) -> np.ndarray:
  """[A] a diagnostic, not the verdict: per attribute a, least squares of 1[ŷ = 1] on a, the
  others and a × each other, then the mean over the split of the fitted value at a = 1 minus
  at a = 0 (standardization: the split's average effect where the effect of a differs with
  the other attributes, which an additive fit averages with other weights)."""
  x, y = np.asarray(attrs, np.float64), (np.asarray(pred) == 1).astype(np.float64)
  out = []
  for a in range(x.shape[1]):
    others = np.delete(x, a, 1)
    design = lambda col: np.column_stack([np.ones(len(x)), col, others, col[:, None] * others])
    beta = np.linalg.lstsq(design(x[:, a]), y, rcond=None)[0]
    out.append(float(np.mean((design(np.ones(len(x))) - design(np.zeros(len(x)))) @ beta)))
  return np.array(out)


def effect_errors(lines: list[dict]) -> str:
  """|estimate − signed effect| of the verdict, the additive fit and interaction_effects."""
  err: dict = {'the verdict': [], 'additive': [], 'every interaction (diagnostic)': []}
  for line in lines:
    attrs, _ = test_split(line, line['num_test'])
    rows = {m: {r['attribute']: r['shift'] for r in line['rows'][m]}
            for m in ('prediction_association', 'additive_fit') if m in line['rows']}
    g = interaction_effects(np.asarray(line['pred']), attrs)
    for a, n in enumerate(line['names']):
      truth_ = line['reliance'][n]['effect']
      err['the verdict'].append(abs(rows['prediction_association'][n] - truth_))
      if 'additive_fit' in rows:
        err['additive'].append(abs(rows['additive_fit'][n] - truth_))
      err['every interaction (diagnostic)'].append(abs(g[a] - truth_))
  return (f'|effect − signed effect| over {len(err["the verdict"])} attributes: ' + '; '.join(
      f'{k} median {np.median(v):.3f}, max {np.max(v):.3f}' for k, v in err.items() if v))


def candidates(lines: list[dict], min_cells=(None, 1, 5, 10, 15, 20, 30, 100)) -> list[dict]:
  """The verdict's summary row (all classifiers) per interaction threshold min_cell
  (None: the additive fit), from the stored predictions; one dict per threshold with
  'min_cell' added."""
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  out = []
  for k in min_cells:
    scored = []
    for line in lines:
      attrs, _ = test_split(line, line['num_test'])
      rows = bias.prediction_association(np.asarray(line['pred']), attrs, line['names'], TASK,
                                         2, min_cell=k)
      scored.append(dict(line, rows={'prediction_association': rows}))
    row = [r for r in summarize(scored, ('prediction_association',)) if r['train'] == 'all']
    out.append(dict(row[0], min_cell=k))
  return out


def format_cells(lines: list[dict]) -> str:
  """Per classifier: accuracy, and per attribute 'flip rate (signed effect) → the verdict's
  effect and answer' (R relied on, · no evidence, ? cannot tell)."""
  short = {'relied on': 'R', 'no evidence': '·', 'cannot tell': '?'}
  out = []
  for line in lines:
    rows = {r['attribute']: r for r in line['rows']['prediction_association']}
    rel = line['reliance']
    out.append(f'{line["cell"]} (accuracy {line["accuracy"]:.3f}): ' + ', '.join(
        f'{n} {rel[n]["flip_rate"]:.2f} ({rel[n].get("effect", float("nan")):+.2f}) → '
        f'{rows[n]["shift"]:+.2f}{short[rows[n]["verdict"]]}' for n in line['names']))
  return '\n'.join(out)


def figure(path: str, image_size: int = 32, zoom: int = 4) -> None:
  """A PNG: every attribute 0, then each attribute alone set to 1 (13), then 2 sampled
  images; one row of 16."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from lsei_jax.data import shapes_many  # pylint: disable=g-import-not-at-top
  a = len(shapes_many.ATTRIBUTES)
  attrs = np.concatenate([np.zeros((1, a), bool), np.eye(a, dtype=bool),
                          shapes_many.sample_attributes(np.random.default_rng(0), 2)])
  imgs = shapes_many.render(np.random.default_rng([0, 25]), attrs, image_size)
  row = np.concatenate(list(imgs), axis=1)
  Image.fromarray(row).resize((row.shape[1] * zoom, row.shape[0] * zoom),
                              Image.NEAREST).save(path)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--out', default='runs/celeba_shaped', help='folder of cells.jsonl')
  ap.add_argument('--quick', action='store_true', help='one tiny cell (what the test runs)')
  ap.add_argument('--base', default='small')
  ap.add_argument('--num_test', type=int, default=2048)
  ap.add_argument('--seeds', default='0,1')
  ap.add_argument('--trains', default=','.join(TRAINS))
  ap.add_argument('--difficulty', default='easy,hard')
  ap.add_argument('--table', action='store_true', help='only print the table of --out')
  ap.add_argument('--rescore', action='store_true',
                  help='compute every line\'s rows again with the current code')
  ap.add_argument('--figure', default='', help='write the example images to this PNG and stop')
  ap.add_argument('--candidates', action='store_true',
                  help='score the verdict at several interaction thresholds (min_cell) on '
                       'the stored predictions and stop')
  ap.add_argument('--cache', default=os.path.join(tempfile.gettempdir(), 'lsei_jax_truth_jit'))
  args = ap.parse_args(argv)
  if args.figure:
    figure(args.figure)
    return
  path = os.path.join(args.out, 'cells.jsonl')
  if args.candidates:
    for r in candidates(truthfulness.read_lines(path)):
      print(json.dumps({k: r[k] for k in ('min_cell', 'coverage', 'interval_covers_effect',
                                          'recall', 'recall_strong', 'fpr_unused', 'wrong',
                                          'median_spearman', 'effect_error_max')}))
    return
  if args.rescore:
    truthfulness.rewrite_lines(path, [rescore(l) for l in truthfulness.read_lines(path)])
  elif not args.table:
    base, num_test = ('tiny', 64) if args.quick else (args.base, args.num_test)
    split = lambda v: [x for x in v.split(',') if x]
    truthfulness.run_new_cells(
        grid(args.quick, split(args.trains), split(args.difficulty),
             [int(k) for k in split(args.seeds)]),
        path, lambda cell, wd: run_cell(cell, wd, base, num_test), cell_key,
        lambda line: f'{line["seconds"]:.0f} s ' + format_cells([line]), args.cache)
  lines = truthfulness.read_lines(path)
  rows = summarize(lines)
  print(format_table(rows))
  print(format_cells(lines))
  print(effect_errors(lines))
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
