"""Truthfulness of the verdict on correlated test splits (issue 25): real data's attributes
correlate, so the verdict is scored where the *test* split's do.

Each classifier is trained as a --classifier_only cell of benchmarks/truthfulness.py (task
`shape`; `spurious` agreeing with the label in a fraction ρ_train of the training images).
It is then evaluated on test splits drawn afresh per test correlation r ∈ R_TEST: the
spurious attribute agrees with the task w.p. (1 + r) / 2 (correlation r; r = 1: perfectly
confounded), and so does a nuisance pair (size, position: neither correlated with the label
in training). Ground truth on that same split: each test image re-rendered with one
attribute flipped (shapes.render draws its nuisance from a generator state fixed by N alone,
so the counterfactual differs in that attribute only); reliance = the flip rate.

Who can separate the pair task / spurious: the test split if r < 1, the training split if
ρ_train < 1 (only an interventional estimator can use that), neither if both are 1. The
nuisance pair is confounded in the test split at r = 1 and independent in training.

Scored per method and test correlation: coverage (share of attributes answered, i.e. not
'cannot tell'), precision and recall of 'relied on' (recall on reliance > 0.25), FPR on
unused attributes (truthfulness.truth: reliance at or below the largest among the
attributes independent in training, which on the hard task can be 0.1–0.3: a real
dependence) and on attributes with reliance < 0.05, median Spearman (as truthfulness.summarize), and
wrong answers: 'relied on' for an unused
attribute or 'no evidence' for one with reliance > 0.25.

Methods: prediction_association (the shipped verdict, reporting/association.py);
representation_shift (those rows, with each 'cannot tell' that a confounding attribute caused
answered by reporting/representation_shift.py where the training split separates the pair:
directions in h = c1(x) fitted on the training split's images); and correlation_gate (the verdict before issue 25: HC0 errors, normal reference, 'cannot tell'
for every attribute correlated with another beyond |r| > 0.1), on the same predictions;
inn_factor (the factor INN of docs/method.md § The INN, trained on the training split's h:
block a of each test image moved to the other value's class mean, mapped back, read by
c2; the flip rate's Wilson interval, Bonferroni over the attributes, decides as
representation_shift's does, on every attribute); inn_factor_heldout (the same INN, basis
and class means fitted on the held-out 'validation' images instead: on its own training
images the classifier reads the label it memorised, `memorisation`, and an INN fitted there
inherits that).
Fallbacks for what only the training split separates (fallback_rows): heldout_association
(what the report ships, reporting/heldout.py: every 'cannot tell' row answered from the test
and 'validation' images pooled at half the α), two_looks (the rule before: a confounded row
from the validation split alone at the verdict's α, the others pooled), train_association
(the same on the training images; `memorisation` measures its bias) and stratified_shift.
--table also prints each method's |estimate − flip rate| there.

Usage (resumable, one JSON line per classifier):
  python benchmarks/truthfulness_correlated.py --out runs/correlated
  python benchmarks/truthfulness_correlated.py --quick --out /tmp/c   # one tiny cell (tests)
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

R_TEST = (0.0, 0.3, 0.6, 0.9, 1.0)
PAIR = ('size', 'position')
METHODS = ('prediction_association', 'representation_shift', 'correlation_gate',
           'heldout_association', 'two_looks', 'train_association', 'stratified_shift',
           'inn_factor', 'inn_factor_heldout', 'inn_swap_heldout', 'inn_swap_cell_heldout',
           'inn_weighted_heldout', 'inn_cell_heldout')
# The swap variants of inn_factor_heldout: stored flip rate key → how (inn_factor_fn).
SWAPS = {'inn_heldout_swap_flip_rate': 'swap', 'inn_heldout_swap_cell_flip_rate': 'swap_cell',
         'inn_heldout_weighted_flip_rate': 'mean_weighted',
         'inn_heldout_cell_flip_rate': 'mean_cell'}
SWAP_METHODS = {'inn_heldout_swap_flip_rate': 'inn_swap_heldout',
                'inn_heldout_swap_cell_flip_rate': 'inn_swap_cell_heldout',
                'inn_heldout_weighted_flip_rate': 'inn_weighted_heldout',
                'inn_heldout_cell_flip_rate': 'inn_cell_heldout'}
FALLBACKS = METHODS[3:7]   # need the held-out / training predictions (lines before them lack them)


def grid(quick: bool = False, spurious=('background', 'color'), rhos=(0.9, 1.0),
         difficulty=('hard',), seeds=(0, 1)) -> list[dict]:
  if quick:
    return [dict(spurious='background', rho=1.0, difficulty='hard', seed=0,
                 learner=truthfulness.CLASSIFIER_ONLY)]
  return [dict(spurious=s, rho=r, difficulty=d, seed=k, learner=truthfulness.CLASSIFIER_ONLY)
          for s, r, d, k in itertools.product(spurious, rhos, difficulty, seeds)]


def test_attributes(rng: np.random.Generator, n: int, task: str, spurious: str, r: float,
                    pair=PAIR) -> np.ndarray:
  """bool [n, A]: fair coins; `spurious` correlates with `task` at r, pair[1] with pair[0]."""
  from lsei_jax.data import shapes  # pylint: disable=g-import-not-at-top
  names = shapes.ATTRIBUTES
  attrs = rng.random((n, len(names))) < 0.5
  for a, b in ((task, spurious), pair):
    agree = rng.random(n) < (1 + r) / 2
    attrs[:, names.index(b)] = np.where(agree, attrs[:, names.index(a)],
                                        ~attrs[:, names.index(a)])
  return attrs


def render(data_config, attrs: np.ndarray, seed: int) -> np.ndarray:
  """uint8 images of attrs; the same seed gives the same nuisance whatever attrs are."""
  from lsei_jax.data import shapes  # pylint: disable=g-import-not-at-top
  return shapes.render(np.random.default_rng([seed, 25]), attrs, data_config.image_size,
                       data_config.noise, data_config.object_scale)


def gate_rows(pred: np.ndarray, attrs: np.ndarray, names, level: float = 0.95,
              min_effect: float = 0.05, max_confounding: float = 0.1) -> list[dict]:
  """The verdict before issue 25, two classes (the comparison row): HC0 sandwich errors of
  the least-squares effects, normal Bonferroni interval, a correlation gate."""
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  x = attrs.astype(np.float64)
  y = (np.asarray(pred) == 1).astype(np.float64)
  varies = x.std(0) > 0
  d = np.column_stack([np.ones(len(x)), x[:, varies]])
  pinv = np.linalg.pinv(d)
  beta = pinv @ y
  e = np.zeros(len(names))
  se = np.full(len(names), np.inf)
  e[varies] = beta[1:]
  se[varies] = np.sqrt((pinv[1:] ** 2) @ (y - d @ beta) ** 2)
  corr = np.corrcoef(x.T)
  z = bias._normal_quantile(1 - (1 - level) / (2 * len(names)))  # pylint: disable=protected-access
  rows = []
  for a, n in enumerate(names):
    conf = [names[b] for b in range(len(names)) if b != a and varies[a] and varies[b]
            and abs(corr[a, b]) > max_confounding]
    flagged = bool(abs(e[a]) - z * se[a] > 0 and abs(e[a]) >= min_effect and not conf)
    rows.append({'attribute': n, 'shift': float(e[a]), 'flagged': flagged,
                 'verdict': 'cannot tell' if conf or not varies[a] else
                            'relied on' if flagged else 'no evidence'})
  return rows


def run_cell(cell: dict, workdir: str, base: str, num_test: int, r_test=R_TEST) -> dict:
  """Trains the cell's classifier, then per test correlation: predictions, ground truth,
  the rows of every method. One JSON line."""
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, evaluation  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  from lsei_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import representation_shift  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  config = truthfulness.cell_config(cell, base)
  pipeline.train(config, workdir, ('classifier',))
  ctx = evaluation.load(config, workdir, ['classifier'])
  mesh, split = ctx.mesh, ctx.classifier
  classify = artifacts.classify_fn(split, config.eval.batch_size, mesh)
  names, task = list(shapes.ATTRIBUTES), config.data.task
  embed, head = _embed_head(split, config.eval.batch_size)
  train = data_lib.load(config.data, 'train')
  h_train = embed(train.images)
  beta, ident = representation_shift.directions(h_train, train.attributes)
  held = data_lib.load(config.data, 'validation')
  inn_flip = inn_factor_fn(h_train, train.attributes, head, config.seed)
  inn_held = inn_factor_fn(embed(held.images), held.attributes, head, config.seed)
  line = {'cell': truthfulness.cell_key(cell), **cell, 'names': names, 'task': task,
          'num_test': num_test, 'tests': [],
          'pred_validation': np.argmax(classify(held.images), -1).astype(int).tolist(),
          'pred_train': np.argmax(head(h_train), -1).astype(int).tolist()}
  for r in r_test:
    # Seeded by r's place in R_TEST, so a run of a subset draws the same test splits.
    rng = np.random.default_rng([cell['seed'], R_TEST.index(r), 2025])
    attrs = test_attributes(rng, num_test, task, cell['spurious'], r)
    seed = int(rng.integers(2**31))
    images = render(config.data, attrs, seed)
    pred = np.argmax(classify(images), -1)
    h_test = embed(images)
    rates = representation_shift.flip_rates(h_test, attrs, beta, head)
    strat, counts = representation_shift.stratified_flip_rates(h_train, train.attributes,
                                                               h_test, attrs, head)
    reliance = {}
    for a, n in enumerate(names):
      flipped = attrs.copy()
      flipped[:, a] ^= True
      after = np.argmax(classify(render(config.data, flipped, seed)), -1)
      reliance[n] = {'flip_rate': float(np.mean(after != pred)), 'num_examples': num_test}
    rows = bias.prediction_association(pred, attrs, names, task, 2)
    inn_rates, inn_held_rates = inn_flip(h_test, attrs), inn_held(h_test, attrs)
    swaps = {k: inn_held(h_test, attrs, how).tolist() for k, how in SWAPS.items()}
    line['tests'].append({
        'r_test': r, 'accuracy': float(np.mean(pred == attrs[:, names.index(task)])),
        'reliance': reliance, 'pred': pred.astype(int).tolist(), 'shift_flip_rate': rates.tolist(),
        'stratified_flip_rate': strat.tolist(), 'stratified_count': counts.tolist(),
        'inn_flip_rate': inn_rates.tolist(), 'inn_heldout_flip_rate': inn_held_rates.tolist(),
        **swaps})
    t = line['tests'][-1]
    t['rows'] = {'prediction_association': rows,
                 'representation_shift': representation_shift.combine(
                     rows, rates, ident, names, num_test, len(train)),
                 'correlation_gate': gate_rows(pred, attrs, names),
                 'inn_factor': inn_rows(inn_rates, names, num_test),
                 'inn_factor_heldout': inn_rows(inn_held_rates, names, num_test,
                                                estimator='inn_factor_heldout'),
                 **swap_rows(t, names, num_test),
                 **fallback_rows(line, t, rows, config.data, attrs)}
  line['seconds'] = time.time() - t0
  return line


def rescore(line: dict, base: str = 'small') -> dict:
  """The line with every method's rows computed again by the current code from its stored
  predictions and flip rates (the test attributes are drawn again from their seeds; the
  training split's attributes loaded): a change of the verdict's statistics is scored on
  the very same classifiers."""
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias, representation_shift  # pylint: disable=g-import-not-at-top
  config = truthfulness.cell_config(line, base)
  train = data_lib.load(config.data, 'train')
  _, ident = representation_shift.directions(np.zeros((len(train), 1)), train.attributes)
  names, tests = line['names'], []
  for t in line['tests']:
    rng = np.random.default_rng([line['seed'], R_TEST.index(t['r_test']), 2025])
    attrs = test_attributes(rng, line['num_test'], line['task'], line['spurious'], t['r_test'])
    pred = np.asarray(t['pred'])
    rows = bias.prediction_association(pred, attrs, names, line['task'], 2)
    tests.append(dict(t, rows={
        'prediction_association': rows,
        'representation_shift': representation_shift.combine(
            rows, np.asarray(t['shift_flip_rate']), ident, names, line['num_test'], len(train)),
        'correlation_gate': gate_rows(pred, attrs, names),
        **({'inn_factor': inn_rows(np.asarray(t['inn_flip_rate']), names, line['num_test'])}
           if 'inn_flip_rate' in t else {}),
        **({'inn_factor_heldout': inn_rows(np.asarray(t['inn_heldout_flip_rate']), names,
                                           line['num_test'], estimator='inn_factor_heldout')}
           if 'inn_heldout_flip_rate' in t else {}),
        **swap_rows(t, names, line['num_test'])}))
    if 'pred_validation' in line:
      tests[-1]['rows'].update(fallback_rows(line, tests[-1], rows, config.data, attrs))
  return dict(line, tests=tests)


def fallback_rows(line: dict, t: dict, rows: list[dict], data_config,
                  attrs: np.ndarray) -> dict:
  """The rows of the fallbacks for what the test split confounds (issue 25, item 3), from
  the line's stored predictions (attrs: the test split's, bool [N, A]): heldout_association
  (what the classifier stage ships, reporting/heldout.py: every 'cannot tell' row answered
  from the test and 'validation' images pooled, the latter drawn like 'train', which the
  classifier never saw), two_looks (the rule before), train_association
  (the same on the training images themselves: memorisation may bias it), stratified_shift
  (representation_shift.stratified_flip_rates, checked against the test split like the
  global shift)."""
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import heldout, representation_shift  # pylint: disable=g-import-not-at-top
  names, task = line['names'], line['task']
  out = {}
  _, held_attrs = data_lib.load_annotations(data_config, 'validation')
  held = (np.asarray(line['pred_validation']), held_attrs)
  out['heldout_association'] = heldout.prediction_association(
      np.asarray(t['pred']), attrs, names, task, 2, held=held)
  out['two_looks'] = two_looks(np.asarray(t['pred']), attrs, names, task, held)
  _, train_attrs = data_lib.load_annotations(data_config, 'train')
  pred = np.asarray(line['pred_train'])
  out['train_association'] = heldout.fill(
      rows, association_rows(pred, train_attrs, names, task, 'train'), 'train', len(pred))
  counts = np.asarray(t['stratified_count'])
  out['stratified_shift'] = representation_shift.combine(
      rows, np.asarray(t['stratified_flip_rate']), counts > 0, names, counts,
      len(line['pred_train']), estimator=representation_shift.STRATIFIED,
      how='moved by the difference of its stratum\'s training means in h')
  return out


def two_looks(pred: np.ndarray, attrs: np.ndarray, names, task: str, held, num_classes: int = 2,
              level: float = 0.95) -> list[dict]:
  """The held-out rule the verdict shipped before issue 25's comparison (kept to score it):
  rows 'cannot tell' because of a confounding attribute answered from the held-out split
  alone at the verdict's level (heldout.fill), the other 'cannot tell' rows from the test
  and held-out images pooled at heldout.pooled_level (heldout.pool). held: (pred [M],
  attributes [M, A])."""
  from lsei_jax.reporting import association, heldout  # pylint: disable=g-import-not-at-top
  rows = association.prediction_association(pred, attrs, names, task, num_classes, level=level)
  if heldout.wanted(rows):
    rows = heldout.fill(rows, association.prediction_association(
        held[0], held[1], names, task, num_classes, split='validation', level=level),
                        'validation', len(held[0]))
  wide = [r['attribute'] for r in rows if r['verdict'] == 'cannot tell'
          and not r.get('confounded_by')]
  if wide:
    pooled, num = heldout.pooled_rows_of(pred, attrs, held, names, task, num_classes,
                                         'validation', level)
    rows = heldout.pool(rows, pooled, 'validation', num, level, attributes=wide)
  return rows


def memorisation(lines: list[dict], base: str = 'small') -> list[dict]:
  """Per classifier: the adjusted effects of the task and of the spurious attribute on the
  training images and on the held-out validation split (the same distribution); a
  classifier that memorised its training images reads the task larger and the shortcut
  smaller on the former."""
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  out = []
  for line in (l for l in lines if 'pred_validation' in l):
    data = truthfulness.cell_config(line, base).data
    effect = {}
    for split in ('train', 'validation'):
      _, attrs = data_lib.load_annotations(data, split)
      rows = {r['attribute']: r for r in association_rows(
          np.asarray(line['pred_' + split]), attrs, line['names'], line['task'])}
      effect[split] = {k: rows[line[k]]['shift'] for k in ('task', 'spurious')}
    truth = line['tests'][0]['reliance']     # the flip rates on the independent test split
    out.append({'cell': line['cell'], 'rho': line['rho'], **{
        f'{k}_{s}': effect[s][k] for s in effect for k in ('task', 'spurious')},
                **{f'{k}_flip_rate': truth[line[k]]['flip_rate'] for k in ('task', 'spurious')}})
  return out


def magnitude_errors(lines: list[dict], methods=METHODS) -> dict:
  """{method: [| |shift| − flip rate | over the attributes only the training split
  separates that the method answered]}: how far its estimate is from the ground truth."""
  out: dict = {}
  for line in lines:
    for t in line['tests']:
      for m in (m for m in methods if m in t['rows']):
        out.setdefault(m, []).extend(
            abs(abs(r['shift']) - t['reliance'][r['attribute']]['flip_rate'])
            for r in t['rows'][m] if r.get('verdict') != 'cannot tell'
            and separation(line, t['r_test'], r['attribute']) == 'train')
  return out


def all_magnitude_errors(lines: list[dict], methods=METHODS) -> dict:
  """{(method, r_test): [| |shift| − flip rate |]} over every attribute the method answered
  (not 'cannot tell'), whoever separates it."""
  out: dict = {}
  for line in lines:
    for t in line['tests']:
      for m in (m for m in methods if m in t['rows']):
        out.setdefault((m, t['r_test']), []).extend(
            abs(abs(r['shift']) - t['reliance'][r['attribute']]['flip_rate'])
            for r in t['rows'][m] if r.get('verdict') != 'cannot tell')
  return out


def association_rows(pred, attrs, names, task, split: str = 'test'):
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  return bias.prediction_association(pred, attrs, names, task, 2, split=split)


def inn_factor_fn(h_train: np.ndarray, attrs_train: np.ndarray, head, seed: int):
  """Trains the factor INN (configs/shapes.py's config.inn: attribute basis + flow) on
  h_train [M, d] (the training split's h, or held-out images') and their attributes [M, A];
  → (h [N, d], attributes [N, A] → flip rate [A]): the share of predictions that change
  when block a moves to the other value's class mean (codes of h_train) and T⁻¹ maps it
  back to h."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import train_state  # pylint: disable=g-import-not-at-top
  from lsei_jax.inn import basis, factor  # pylint: disable=g-import-not-at-top
  cfg = shapes.get_config().inn
  bas = basis.fit(h_train, attrs_train, int(cfg.factor_dim))
  x = bas.forward(h_train)
  model = factor.build(cfg, x.shape[1], attrs_train.shape[1])
  model = factor.FactorINN(model.flow.clone(data_init=False), model.layout, model.sigma,
                           model.noise_std, model.flow_dim)
  state = factor.create_state(model, jax.random.key(seed), jnp.zeros((2, x.shape[1])),
                              train_state.make_optimizer(cfg, cfg.steps))
  from lsei_jax.training import parallel  # pylint: disable=g-import-not-at-top
  step = parallel.data_parallel_step(factor.make_step(model), parallel.make_mesh())
  rng = np.random.default_rng(seed)
  table = factor.sample_pair_table(attrs_train, rng, int(cfg.pairs_per_example))
  for i in range(cfg.steps):
    rows = rng.integers(0, len(table[0]), cfg.batch_size)
    state, _ = step(state, factor.pair_batch(x, table, rows), jax.random.key(i))
  params = state.params
  enc = jax.jit(lambda h: factor.encode(model, params, h))
  dec = jax.jit(lambda z: factor.decode(model, params, z))
  means = factor.class_means(np.asarray(enc(x)), attrs_train, model.layout)

  z_fit = np.asarray(enc(x))
  w = basis.independence_weights(attrs_train)
  weighted = np.stack([[np.average(z_fit[attrs_train[:, f] == v][:, model.layout.block(f)], 0,
                                   w[attrs_train[:, f] == v]) for v in (0, 1)]
                       for f in range(attrs_train.shape[1])])

  def flip(h: np.ndarray, attrs: np.ndarray, how: str = 'mean') -> np.ndarray:
    """how: 'mean' (block a moved by the class-mean difference), 'swap' (block a taken
    from a random fitted image of the other value), 'swap_cell' (from one of the other
    value that agrees on every other attribute; any of the other value where none does)."""
    z = np.asarray(enc(bas.forward(h)))
    pred = np.argmax(head(h), -1)
    out = []
    for a in range(attrs.shape[1]):
      if how == 'mean':
        z_f = factor.flip_factor(z, a, model.layout, attrs, means)
      elif how == 'mean_weighted':
        z_f = factor.flip_factor(z, a, model.layout, attrs, weighted)
      elif how == 'mean_cell':
        cols = model.layout.block(a)
        z_f = z.copy()
        z_f[:, cols] += _cell_means(z_fit[:, cols], attrs_train, attrs, a, means[a])
      else:
        z_f = factor.swap_factor(z, z_fit[_partners(attrs_train, attrs, a, how == 'swap_cell',
                                                    np.random.default_rng([seed, 26, a]))],
                                 a, model.layout)
      out.append(np.mean(np.argmax(head(bas.backward(np.asarray(dec(z_f)))), -1) != pred))
    return np.array(out)
  return flip


def _cell_means(zb: np.ndarray, fit_attrs: np.ndarray, attrs: np.ndarray, a: int,
                means: np.ndarray, min_rows: int = 3) -> np.ndarray:
  """[N, d_f]: per row of attrs, mean of block zb [M, d_f] over the fit rows of its cell
  with a flipped minus over those of its own cell (either with < min_rows rows: the
  global class-mean difference means [2, d_f])."""
  bits = 1 << np.arange(fit_attrs.shape[1])
  keys_fit = fit_attrs.astype(np.int64) @ bits
  keys = attrs.astype(np.int64) @ bits
  out = np.zeros((len(attrs), zb.shape[1]))
  for i, (k, y) in enumerate(zip(keys, attrs[:, a].astype(int))):
    own, other = keys_fit == k, keys_fit == (k ^ bits[a])
    if own.sum() >= min_rows and other.sum() >= min_rows:
      out[i] = zb[other].mean(0) - zb[own].mean(0)
    else:
      out[i] = means[1 - y] - means[y]
  return out


def _partners(fit_attrs: np.ndarray, attrs: np.ndarray, a: int, same_cell: bool,
              rng: np.random.Generator) -> np.ndarray:
  """int [N]: per row of attrs [N, A] a random row of fit_attrs [M, A] with the other value
  of attribute a (same_cell: and the same value of every other attribute, where one has)."""
  out = np.zeros(len(attrs), np.int64)
  target = attrs.copy()
  target[:, a] ^= True
  keys_fit = fit_attrs.astype(np.int64) @ (1 << np.arange(fit_attrs.shape[1]))
  for i, t in enumerate(target):
    pool = np.flatnonzero(keys_fit == int(t.astype(np.int64) @ (1 << np.arange(len(t)))))
    if not same_cell or len(pool) == 0:
      pool = np.flatnonzero(fit_attrs[:, a] == t[a])
    out[i] = pool[rng.integers(len(pool))]
  return out


def swap_rows(t: dict, names, num_test: int) -> dict:
  """The swap variants' rows (SWAPS) of a test split t that stores their flip rates."""
  return {SWAP_METHODS[k]: inn_rows(np.asarray(t[k]), names, num_test,
                                    estimator=SWAP_METHODS[k]) for k in SWAPS if k in t}


def inn_rows(rates: np.ndarray, names, num_test: int, level: float = 0.95,
             estimator: str = 'inn_factor') -> list[dict]:
  """The factor INN's verdict rows: flip rate's Wilson interval (Bonferroni over the
  attributes) against min_effect / max_hidden, as representation_shift.shift_verdicts."""
  from lsei_jax.reporting import representation_shift  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting.association import t_quantile  # pylint: disable=g-import-not-at-top
  z = t_quantile(1 - (1 - level) / (2 * len(names)), np.inf)
  return [dict(attribute=n, verdict=v, flagged=v == 'relied on', shift=float(r), ci_low=lo,
               ci_high=hi, estimator=estimator)
          for n, r, (v, lo, hi) in zip(names, rates, representation_shift.shift_verdicts(
              rates, num_test, z))]


def _embed_head(split, batch_size: int):
  """(uint8 images [N, H, W, 3] → h [N, d], h [M, d] → logits [M, C]) as NumPy, jitted."""
  import jax  # pylint: disable=g-import-not-at-top
  emb = jax.jit(lambda x: split.embed(split.params, x.astype(np.float32) / 255.0))
  hd = jax.jit(lambda h: split.head(split.params, h))
  embed = lambda images: np.concatenate([np.asarray(emb(images[i:i + batch_size]))
                                         for i in range(0, len(images), batch_size)])
  return embed, lambda h: np.asarray(hd(np.asarray(h, np.float32)))


def separation(line: dict, r_test: float, attribute: str) -> str:
  """Who separates `attribute` from the others: 'test' (the test split), 'train' (only the
  training split: the test split confounds its pair) or 'neither'."""
  if r_test < 1 or attribute not in (line['task'], line['spurious'], *PAIR):
    return 'test'
  if attribute in PAIR:         # independent of everything in training
    return 'train'
  return 'train' if line['rho'] < 1 else 'neither'


# The tallies of count_row, per (method, group) of the summaries.
COUNT_KEYS = ('n', 'answered', 'tp', 'fp', 'fn', 'strong', 'strong_hit', 'unused', 'fp_unused',
              'wrong', 'zero', 'fp_zero')


def count_row(s: dict, verdict: str | None, reliance: float, relied: bool, unused: bool
              ) -> None:
  """Adds one verdict row to the tallies s (COUNT_KEYS): answered unless 'cannot tell';
  'relied on' is a hit on an attribute relied on, a false positive on an unused one; a
  wrong answer is 'relied on' for an unused attribute or 'no evidence' for reliance above
  truthfulness.STRONG."""
  flag = verdict == 'relied on'
  strong = reliance > truthfulness.STRONG
  s['n'] += 1
  s['answered'] += verdict != 'cannot tell'
  s['tp'] += flag and relied
  s['fp'] += flag and unused
  s['fn'] += (not flag) and relied
  s['strong'] += strong
  s['strong_hit'] += flag and strong
  s['unused'] += unused
  s['fp_unused'] += flag and unused
  s['zero'] += reliance < truthfulness.MARGIN
  s['fp_zero'] += flag and reliance < truthfulness.MARGIN
  s['wrong'] += (flag and unused) or (verdict == 'no evidence' and strong)


def rank_correlation(rows: list[dict], names, rel: dict, unused: dict) -> float:
  """Spearman between the verdict's |effect| of the attributes it calls relied on (0 for
  the rest) and the ground truth's reliance (0 for the unused ones)."""
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  flagged = {r['attribute']: r for r in rows if r.get('verdict') == 'relied on'}
  return bias.spearman([abs(flagged[n]['shift']) if n in flagged else 0.0 for n in names],
                       [0.0 if unused[n] else rel[n] for n in names])


def summarize(lines: list[dict], methods=METHODS) -> list[dict]:
  """One row per (method, test correlation, who separates the attribute): pooled over the
  cells' attributes (see the module docstring for the columns); the median Spearman of a
  split (over all its attributes) sits in the group of its task attribute."""
  acc: dict = {}
  for line in lines:
    for t in line['tests']:
      rel, relied, unused = truthfulness.truth({**line, 'reliance': t['reliance']})
      for m in (m for m in methods if m in t['rows']):   # older lines lack the fallbacks
        new = lambda: dict(dict.fromkeys(COUNT_KEYS, 0), spearman=[])
        if any(relied.values()):     # one rank correlation per split, in its first group
          first = separation(line, t['r_test'], line['task'])
          acc.setdefault((m, t['r_test'], first), new())['spearman'].append(
              rank_correlation(t['rows'][m], line['names'], rel, unused))
        for row in t['rows'][m]:
          n = row['attribute']
          s = acc.setdefault((m, t['r_test'], separation(line, t['r_test'], n)), new())
          count_row(s, row.get('verdict'), rel[n], relied[n], unused[n])
  ratio = lambda a, b: a / b if b else None
  return [{'method': m, 'r_test': r, 'separates': sep, 'attributes': s['n'],
           'coverage': ratio(s['answered'], s['n']),
           'precision': ratio(s['tp'], s['tp'] + s['fp']),
           'recall': ratio(s['tp'], s['tp'] + s['fn']),
           'recall_strong': ratio(s['strong_hit'], s['strong']),
           'fpr_unused': ratio(s['fp_unused'], s['unused']), 'wrong': s['wrong'],
           'fpr_zero': ratio(s['fp_zero'], s['zero']),
           'median_spearman': float(np.median(s['spearman'])) if s['spearman'] else None}
          for (m, r, sep), s in sorted(acc.items(), key=lambda kv: (
              METHODS.index(kv[0][0]) if kv[0][0] in METHODS else len(METHODS), kv[0][0],
              kv[0][1], kv[0][2]))]


def format_table(rows: list[dict]) -> str:
  num = lambda v: '—' if v is None else f'{v:.2f}'
  head = ('| method | test r | separates | attributes | coverage | precision | recall | '
          'recall (reliance > 0.25) | FPR (unused) | FPR (reliance < 0.05) | wrong answers | '
          'median Spearman |')
  return '\n'.join([head, '|' + '---|' * 12] + [
      f'| {r["method"]} | {r["r_test"]:g} | {r["separates"]} | {r["attributes"]} | '
      f'{num(r["coverage"])} | {num(r["precision"])} | {num(r["recall"])} | '
      f'{num(r["recall_strong"])} | {num(r["fpr_unused"])} | {num(r["fpr_zero"])} | '
      f'{r["wrong"]} | '
      f'{num(r["median_spearman"])} |' for r in rows])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--out', default='runs/correlated', help='folder of cells.jsonl')
  ap.add_argument('--quick', action='store_true', help='one tiny cell (what the test runs)')
  ap.add_argument('--base', default='small')
  ap.add_argument('--num_test', type=int, default=1024)
  ap.add_argument('--seeds', default='0,1')
  ap.add_argument('--spurious', default='background,color')
  ap.add_argument('--rhos', default='0.9,1.0', help='ρ_train values')
  ap.add_argument('--r_test', default=','.join(f'{r:g}' for r in R_TEST),
                  help='test correlations r (a subset of the default keeps runs short)')
  ap.add_argument('--difficulty', default='hard', help='easy, hard (benchmarks/truthfulness.py)')
  ap.add_argument('--table', action='store_true', help='only print the table of --out')
  ap.add_argument('--rescore', action='store_true',
                  help='compute every line\'s rows again with the current code (rewrites '
                       'cells.jsonl; stored predictions and flip rates are kept)')
  ap.add_argument('--cache', default=os.path.join(tempfile.gettempdir(), 'lsei_jax_truth_jit'))
  args = ap.parse_args(argv)
  path = os.path.join(args.out, 'cells.jsonl')
  if args.rescore:
    truthfulness.rewrite_lines(path, [rescore(l, args.base)
                                      for l in truthfulness.read_lines(path)])
  elif not args.table:
    base, num_test = ('tiny', 64) if args.quick else (args.base, args.num_test)
    split = lambda v: [x for x in v.split(',') if x]
    truthfulness.run_new_cells(
        grid(args.quick, split(args.spurious), [float(r) for r in split(args.rhos)],
             split(args.difficulty), [int(k) for k in split(args.seeds)]),
        path, lambda cell, wd: run_cell(cell, wd, base, num_test,
                                        [float(r) for r in split(args.r_test)]),
        truthfulness.cell_key,
        lambda line: f'{line["cell"]}: {line["seconds"]:.0f} s, reliance at r = 0: ' + str(
            {k: round(v['flip_rate'], 2) for k, v in line['tests'][0]['reliance'].items()}),
        args.cache)
  rows = summarize(truthfulness.read_lines(path))
  print(format_table(rows))
  for m, err in magnitude_errors(truthfulness.read_lines(path)).items():
    if err:
      print(f'{m}: |estimate − flip rate| where only training separates ({len(err)} answers): '
            f'median {np.median(err):.3f}, max {max(err):.3f}')
  for (m, r), err in all_magnitude_errors(truthfulness.read_lines(path)).items():
    if err and m in ('heldout_association',) + METHODS[7:]:
      print(f'{m} at r = {r:g}: |estimate − flip rate| over its {len(err)} answers: '
            f'median {np.median(err):.3f}, max {max(err):.3f}')
  mem = memorisation(truthfulness.read_lines(path), 'tiny' if args.quick else args.base)
  for k in ('task', 'spurious'):
    d = [m[f'{k}_train'] - m[f'{k}_validation'] for m in mem if m['rho'] < 1]
    if d:
      print(f'{k} effect, training images − validation (ρ_train < 1, {len(d)} classifiers): '
            f'median {np.median(d):+.3f}, range [{min(d):+.3f}, {max(d):+.3f}]; |effect − '
            'flip rate at r = 0|, median: training images ' + ', validation '.join(
                f'{np.median([abs(m[f"{k}_{s}"] - m[f"{k}_flip_rate"]) for m in mem if m["rho"] < 1]):.3f}'
                for s in ('train', 'validation')))
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
