"""Truthfulness benchmark: does each explanation method report what the classifier relies on?

A grid of shapes classifiers (task `shape`; a spurious attribute agreeing with the label in
a fraction ρ of the training images; an easy and a hard task) whose reliance on each
attribute is measured directly (lsei_jax.reliance: the unbiased test images re-rendered with
one attribute flipped). Each method's per-attribute score and flagged set are scored against
it: Spearman(score, reliance) per cell, precision / recall of the flagged set against the
relied-on set, recall on attributes with reliance > 0.25, false-positive rate on unused ones.

"Relied on": reliance above the largest reliance among the cell's independent attributes
(never correlated with the label in training, so the classifier has no reason to use them;
their reliance is what a flip does to borderline decisions by itself) by MARGIN = 0.05, more
than twice the standard error of a difference of two flip rates over 1,024 test images
(≤ 0.022). "Unused": reliance at or below that largest independent one. Attributes in between
count in neither.

Methods (all on the same trained stages of a cell):
  flip_all        today's bias report: flip every bit; g and probes trained on the biased
                  data; flagged = bootstrap interval excludes 0 (the report's stars)
  per_bit         the same with, per sample, only its decisive bits flipped
  tcav            TCAV on h (crosscheck.tcav_entries): max over classes of |score − ½|,
                  flagged = significant for some class
  gated           flip_all with bias.report_rows' gates (probe readable on real unbiased
                  images, Bonferroni interval, min |shift|), g and probes still biased
  balanced        g and probes trained on balanced batches (balance.py), flip-all, interval
                  only (no gates)
  balanced_gated  balanced + gates, flip-all (what evaluation reports)
  balanced_gated_decisive   balanced + gates, decisive bits only
  prediction_association   what the report ships as its verdict
                  (bias.prediction_association): |P(ŷ=1|a=1) − P(ŷ=1|a=0)| on the unbiased
                  test split, adjusted for the other attributes (least squares; lines
                  written before the adjustment hold the plain difference), flagged when its
                  Bonferroni interval excludes 0 and it is at least 0.05 (lines written
                  before the rows were stored: the plain difference with the bound
                  s.e. ≤ 1/√N, which is within 0.3% of the exact one at N = 1024)

Closed loop and image editor (issue 25 items 3–4; scored in their own table, with coverage
and wrong answers, on the lines that carry them):
  closed_loop     each DVAE bit flipped alone, g(ĥ'_k) re-classified by c and read by the
                  probes (biased g and probes; balanced_closed_loop: balanced ones);
                  reliance from edits that move one attribute only (reporting/closed_loop.py)
  image_editor    --editor_steps N: an attribute-conditional autoencoder and balanced probes
                  trained on the cell's training split; answered where the edit is trusted
                  (lsei_jax/editor.py, reporting/editor_view.py)

Concept learners (--learners dvae,topk_sae,nmf; lsei_jax.concepts): a cell is (data, seed,
learner). The learners of one (data, seed) share one trained classifier (trained for the
first, its checkpoint copied into the others' workdirs), so they explain the same model
against the same truth. The methods that read the learner's code are the explainer-view
ones (LEARNER_METHODS); tcav and prediction_association read only the classifier and are
the same for every learner (computed once per classifier, copied into each line).

--classifier_only: each cell trains its classifier stage only and scores the verdict
(prediction_association) alone; its lines keep the test predictions (`pred`), so that
another verdict can be scored on the very same classifiers later (cells keyed
`…-classifier`). About 30 s a cell on 2 CPU cores.

Usage (resumable: one JSON line per finished cell; finished cells are skipped):
  python benchmarks/truthfulness.py --out runs/truthfulness            # the full grid
  python benchmarks/truthfulness.py --out runs/truthfulness --shard 0/4   # a quarter of it
  python benchmarks/truthfulness.py --out runs/truthfulness --table    # the table only
  python benchmarks/truthfulness.py --out runs/verdict --classifier_only  # the verdict only
  python benchmarks/truthfulness.py --out runs/learners --learners dvae,topk_sae,nmf \
      --spurious color,background --rhos 0.9,1.0 --difficulty hard --seeds 0   # a sub-grid
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MARGIN = 0.05
STRONG = 0.25
SPURIOUS = ('color', 'background')
RHOS = (0.5, 0.9, 1.0)
# (object_scale, noise): the object's size relative to the default, pixel noise.
DIFFICULTY = {'easy': (1.0, 0.04), 'hard': (0.7, 0.08)}
SEEDS = (0, 1, 2)
METHODS = ('flip_all', 'per_bit', 'tcav', 'gated', 'balanced', 'balanced_gated',
           'balanced_gated_decisive', 'prediction_association')
LEARNERS = ('dvae', 'topk_sae', 'nmf')
# Methods that read the concept learner's code (the rest read only the classifier).
LEARNER_METHODS = ('flip_all', 'per_bit', 'gated', 'balanced', 'balanced_gated',
                   'balanced_gated_decisive')
# Parts of a line that depend only on the cell's classifier: shared by its learners.
SHARED = ('accuracy', 'tcav', 'association', 'association_rows', 'reliance')


def grid(ci: bool = False, learners=('dvae',), spurious=SPURIOUS, rhos=RHOS,
         difficulty=tuple(DIFFICULTY), seeds=SEEDS) -> list[dict]:
  """The cells, the learners of one (data, seed) next to each other (they share its
  classifier)."""
  if ci:
    return [dict(spurious='color', rho=1.0, difficulty='hard', seed=0, learner=l)
            for l in learners]
  return [dict(spurious=s, rho=r, difficulty=d, seed=k, learner=l)
          for s, r, d, k, l in itertools.product(spurious, rhos, difficulty, seeds, learners)]


def base_key(cell: dict) -> str:
  """The cell's data and seed: what its classifier depends on."""
  return f'{cell["spurious"]}-rho{cell["rho"]}-{cell["difficulty"]}-s{cell["seed"]}'


CLASSIFIER_ONLY = 'classifier'   # the `learner` of --classifier_only cells: none is trained
CLASSIFIER_METHODS = ('prediction_association',)   # what such a cell can score


def learner_of(cell: dict) -> str:
  return cell.get('learner', 'dvae')  # lines written before the learner dimension: the DVAE


def cell_key(cell: dict) -> str:
  return f'{base_key(cell)}-{learner_of(cell)}'


def cell_config(cell: dict, base: str = 'small'):
  """configs/small.py (or tiny.py for the CI cell) with the cell's data; no sanity run, no
  explainer without regularizer (neither is scored here)."""
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{base}').get_config()
  scale, noise = DIFFICULTY[cell['difficulty']]
  with c.unlocked():
    c.seed = cell['seed']
    c.data.update(spurious=cell['spurious'], rho=cell['rho'], seed=cell['seed'])
    c.data.object_scale, c.data.noise = scale, noise
    # Long enough that the classifier learns the easy shape (at 400 steps it reads colour
    # alone at ρ ≥ 0.9); the hard task then mixes shape and shortcut.
    c.classifier.steps = max(c.classifier.steps, 1200) if base == 'small' else c.classifier.steps
    c.explainer.train_noreg = False
    c.explainer.balance = c.probe.balance = False    # the biased variant; see _balanced
    c.sanity.enabled = False
    c.log_every = 10**6
    if learner_of(cell) != CLASSIFIER_ONLY:    # each learner at the base config's sizes
      c.model.concepts.kind = learner_of(cell)
  return c


def _balanced(config):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.explainer.balance = True
    c.probe.balance = True
  return c


def run_cell(cell: dict, workdir: str, base: str = 'small', classifier_from: str | None = None,
             shared: dict | None = None, editor_steps: int = 0) -> dict:
  """Trains the cell's stages (both variants of g and the probes) and returns its JSON line.

  classifier_from: a finished classifier checkpoint folder of the same (data, seed) (another
  learner's cell) to reuse instead of training one; shared: that cell's line, whose
  classifier-only parts (SHARED) are copied instead of computed again.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, closed_loop, evaluation  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.stages import probe as probe_stage  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias, crosscheck  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  config = cell_config(cell, base)
  wd, wd_bal = os.path.join(workdir, 'biased'), os.path.join(workdir, 'balanced')
  if classifier_from is not None and not os.path.isdir(os.path.join(wd, 'classifier')):
    # The classifier's signature has no concept-learner field: the copy loads as complete.
    shutil.copytree(classifier_from, os.path.join(wd, 'classifier'))
  pipeline.train(config, wd)
  for stage in ('classifier', 'concepts'):        # the same classifier and concept learner
    if not os.path.isdir(os.path.join(wd_bal, stage)):
      shutil.copytree(os.path.join(wd, stage), os.path.join(wd_bal, stage))
  config_bal = _balanced(config)
  pipeline.train(config_bal, wd_bal, ('explainer', 'probe'))
  t_train = time.time() - t0

  stage_names = ['classifier', 'concepts', 'explainer', 'probe']
  ctx, ctx_bal = (evaluation.load(c, w, stage_names) for c, w in ((config, wd),
                                                                  (config_bal, wd_bal)))
  mesh, mods, test, split = ctx.mesh, ctx.mods, ctx.data, ctx.classifier
  names, task, num_classes = test.attribute_names, test.task, config.model.classifier.num_classes
  clf_p = split.params['params']
  out = artifacts.explain(ctx, split, ctx.params('concepts'),
                          np.ones(mods.learner.latent_dim, np.float32), 'explain')
  pred = np.argmax(out['logits_hat'], -1)
  after = {'flip_all': np.argmax(out['logits_flip'], -1),
           'decisive': np.argmax(out['logits_decisive'], -1)}
  hhat_after = {'flip_all': out['hhat_flip'], 'decisive': out['hhat_decisive']}
  ec = config.eval
  line = {'cell': cell_key(cell), **cell, 'names': list(names), 'task': task,
          'accuracy': float(np.mean(np.argmax(out['logits'], -1) == test.labels)),
          'flip_all_change': float(np.mean(after['flip_all'] != pred)),
          'decisive_change': float(np.mean(after['decisive'] != pred))}
  for variant, c in (('biased', ctx), ('balanced', ctx_bal)):
    probe_acc_real = None
    for inter in ('flip_all', 'decisive'):
      probs = probe_stage.probe(c, c.params('explainer'), out['hhat'], hhat_after[inter],
                                f'probe {variant} {inter}')
      probe_acc_real = [float(np.mean((probs['real'][:, a] > 0.5) == test.attributes[:, a]))
                        for a in range(len(names))]
      probe_acc_gen = [float(np.mean((probs['before'][:, a] > 0.5) == test.attributes[:, a]))
                       for a in range(len(names))]
      s = bias.directed_shifts(probs['before'], probs['after'], pred, after[inter], num_classes)
      old = bias.bias_report(probs['before'], probs['after'], pred, names, task,
                             num_bootstrap=ec.num_bootstrap, level=ec.ci_level, seed=config.seed)
      line[f'{variant}/{inter}'] = {
          'shift_mean': s['mean'].tolist(),
          'shift_se': np.where(np.isfinite(s['se']), s['se'], 1e9).tolist(),
          'num_changed': s['num_changed'], 'num_to': s['num_to'], 'num_from': s['num_from'],
          'old_report': {r['attribute']: [r['shift'], r['ci_low'], r['ci_high']] for r in old}}
    line[f'{variant}/probe_accuracy_real'] = probe_acc_real
    # The closed loop (issue 25 item 4): g(ĥ'_k) read back by the classifier and the probes.
    loop = closed_loop.loop_arrays(c, split, c.params('concepts'), c.params('explainer'),
                                   c.params('probe'), f'closed loop {variant}')
    line[f'{variant}/closed_loop'] = closed_loop.report(c, loop)
    line[f'{variant}/probe_accuracy_generated'] = probe_acc_gen
  if editor_steps:
    line['editor'] = editor_cell(config, split, test, mesh, editor_steps)
  if shared is not None:
    line.update({k: shared[k] for k in SHARED})
    line['seconds'] = {'train': t_train, 'total': time.time() - t0}
    return line
  line['tcav'] = crosscheck.tcav_entries(jax.random.key(config.seed + 7),
                                         lambda e: mods.classifier.apply({'params': clf_p}, e,
                                                                         method='head'),
                                         out['h'], test.attributes, test.labels, names, ec.tcav)
  pred_c = np.argmax(out['logits'], -1)
  line['association'] = [float(abs(np.mean(pred_c[test.attributes[:, a]] == 1)
                                   - np.mean(pred_c[~test.attributes[:, a]] == 1)))
                         for a in range(len(names))]
  line.update(_verdict_and_truth(config, split, test, mesh, pred_c))
  line['seconds'] = {'train': t_train, 'total': time.time() - t0}
  return line


def editor_cell(config, split, test, mesh, steps: int) -> dict:
  """The image editor (issue 25 item 3): an attribute-conditional autoencoder and attribute
  probes (batches balanced by training.balance: no attribute tied to the label) trained on
  the cell's training split; each test image edited in one attribute at a time and read by
  the classifier and the probes; an attribute is answered only where its edit is trusted."""
  from lsei_jax import data as data_lib, editor  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import editor_view  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import balance  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  train = data_lib.load(config.data, 'train')
  names = list(test.attribute_names)
  task_index = names.index(test.task) if test.task in names else None
  weights = balance.balancing_weights(train.labels, train.attributes, task_index)
  read = editor.train_probe(train.images, train.attributes, weights, seed=config.seed,
                            steps=1500)
  module, params = editor.train_editor(train.images, train.attributes, seed=config.seed,
                                       steps=steps)
  classify = artifacts.classify_fn(split, config.eval.batch_size, mesh)
  ref = editor.edit_images(module, params, test.images, test.attributes, None)
  pred_ref, p_ref = np.argmax(classify(ref), -1), read(ref)
  pred_edit, trust = [], []
  for j in range(len(names)):
    edited = editor.edit_images(module, params, test.images, test.attributes, j)
    pred_edit.append(np.argmax(classify(edited), -1))
    trust.append(editor.edit_trust(p_ref, read(edited), test.attributes, j))
  pred_x = np.argmax(classify(test.images), -1)
  p_x = read(test.images)
  rows = editor_view.editor_rows(pred_ref, np.stack(pred_edit), test.attributes, trust, names,
                                 test.task, level=config.eval.ci_level)
  acc = lambda p: [float(np.mean((p[:, a] > 0.5) == test.attributes[:, a]))
                   for a in range(len(names))]
  return {'rows': rows, 'steps': steps, 'seconds': time.time() - t0,
          'recon_agreement': float(np.mean(pred_ref == pred_x)),
          'probe_accuracy_real': acc(p_x), 'probe_accuracy_recon': acc(p_ref)}


def _verdict_and_truth(config, split, test, mesh, pred: np.ndarray) -> dict:
  """The verdict's rows on the classifier's test predictions, and the ground truth."""
  from lsei_jax.pipeline import artifacts  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  return {'association_rows': bias.prediction_association(
              pred, test.attributes, list(test.attribute_names), test.task,
              config.model.classifier.num_classes),
          'reliance': artifacts.ground_truth_reliance(config.data, split, test,
                                                      config.eval.batch_size, mesh)}


def run_classifier_cell(cell: dict, workdir: str, base: str = 'small',
                        editor_steps: int = 0) -> dict:
  """The cell's classifier stage only: its accuracy, verdict rows, ground truth and test
  predictions (so that any verdict can be scored again on the same classifier)."""
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import artifacts, evaluation  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  config = cell_config(cell, base)
  pipeline.train(config, workdir, ('classifier',))
  ctx = evaluation.load(config, workdir, ['classifier'])
  mesh, test, split = ctx.mesh, ctx.data, ctx.classifier
  logits = artifacts.classify_fn(split, config.eval.batch_size, mesh)(test.images)
  pred = np.argmax(logits, -1)
  edited = {'editor': editor_cell(config, split, test, mesh, editor_steps)} if editor_steps \
      else {}
  return {'cell': cell_key(cell), **cell, 'names': list(test.attribute_names),
          'task': test.task, 'accuracy': float(np.mean(pred == test.labels)),
          **_verdict_and_truth(config, split, test, mesh, pred), **edited,
          'pred': pred.astype(int).tolist(), 'seconds': {'total': time.time() - t0}}


# ------------------------------------------------------------------------------ scoring
def method_scores(line: dict, method: str) -> tuple[dict, dict]:
  """({attribute: score}, {attribute: flagged}) of `method` in one cell's line."""
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  names, task = line['names'], line['task']
  if method in ('flip_all', 'per_bit'):
    rep = line['biased/' + ('flip_all' if method == 'flip_all' else 'decisive')]['old_report']
    return ({n: abs(v[0]) for n, v in rep.items()},
            {n: bool(v[1] > 0 or v[2] < 0) for n, v in rep.items()})
  if method == 'image_editor':
    rows = line['editor']['rows']
    return ({r['attribute']: abs(r['effect']) if r['trusted'] else 0.0 for r in rows},
            {r['attribute']: r['flagged'] for r in rows})
  if method.endswith('closed_loop'):     # closed_loop (biased g, probes), balanced_closed_loop
    rows = line[('balanced' if method.startswith('balanced') else 'biased') + '/closed_loop']
    rows = rows['rows']
    return ({r['attribute']: abs(r['effect'] or 0.0) for r in rows},
            {r['attribute']: r['flagged'] for r in rows})
  if method == 'tcav':
    score, flag = {n: 0.0 for n in names}, {n: False for n in names}
    for t in line['tcav']:
      score[t['concept']] = max(score[t['concept']], abs(t['score'] - 0.5))
      flag[t['concept']] |= bool(t['significant'])
    return score, flag
  if method == 'prediction_association':
    if 'association_rows' in line:
      rows = line['association_rows']
      return ({r['attribute']: abs(r['shift']) for r in rows},
              {r['attribute']: r['flagged'] for r in rows})
    n_test = line['reliance'][names[0]]['num_examples']
    z = bias._normal_quantile(1 - 0.05 / (2 * len(names)))  # pylint: disable=protected-access
    se = 1.0 / np.sqrt(n_test)   # ≈ max s.e. of a difference of two proportions, n ≈ N/2 each
    return ({n: v for n, v in zip(names, line['association'])},
            {n: bool(v - z * se > 0 and v >= 0.05) for n, v in zip(names, line['association'])})
  variant = 'balanced' if method.startswith('balanced') else 'biased'
  inter = 'decisive' if method.endswith('decisive') else 'flip_all'
  gated = method.endswith('gated') or method.endswith('gated_decisive') or method == 'gated'
  s = line[f'{variant}/{inter}']
  shifts = {'mean': s['shift_mean'], 'se': s['shift_se'], 'num_changed': s['num_changed']}
  acc = line[f'{variant}/probe_accuracy_real']
  kw = {} if gated else dict(min_probe_accuracy=0.0, min_shift=0.0)
  rows = bias.report_rows(shifts, names, task, len(shifts['mean']), acc, **kw)
  return ({r['attribute']: abs(r['shift']) if r['readable'] else 0.0 for r in rows},
          {r['attribute']: r['flagged'] for r in rows})


def truth(line: dict) -> tuple[dict, dict, dict]:
  """({attribute: reliance}, relied_on, unused) of a cell (see the module docstring)."""
  from lsei_jax import reliance  # pylint: disable=g-import-not-at-top
  rel = {n: v['flip_rate'] for n, v in line['reliance'].items()}
  independent = [n for n in line['names'] if n not in (line['task'], line['spurious'])]
  floor = max(rel[n] for n in independent)
  relied = reliance.relied_on(rel, independent, margin=MARGIN)
  unused = {n: v <= floor for n, v in rel.items()}
  return rel, relied, unused


def summarize(lines: list[dict], methods=METHODS) -> dict:
  """Per method: median Spearman over cells, precision, recall, recall on reliance > 0.25,
  false-positive rate on unused attributes (pooled over the cells' attributes).

  Spearman compares what a method ranks with what the classifier uses: the method's score
  where it flags the attribute and 0 where it does not (a report ranks only what it claims),
  against the reliance, with the unused attributes' reliance set to 0 (their differences are
  within the noise of a flip rate, so their order means nothing). Cells where the classifier
  relies on nothing (it predicts one class) have no order to recover and are left out of the
  Spearman median. `spearman_raw` is the same over raw scores and raw reliance.
  """
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  out = {}
  for m in methods:
    rho, rho_raw, tp, fp, fn, strong_hit, strong, fp_unused, unused_n = ([], [], 0, 0, 0, 0, 0,
                                                                        0, 0)
    for line in lines:
      rel, relied, unused = truth(line)
      score, flag = method_scores(line, m)
      names = line['names']
      if any(relied.values()):
        rho.append(bias.spearman([score[n] if flag[n] else 0.0 for n in names],
                                 [0.0 if unused[n] else rel[n] for n in names]))
        rho_raw.append(bias.spearman([score[n] for n in names], [rel[n] for n in names]))
      for n in names:
        tp += flag[n] and relied[n]
        fp += flag[n] and unused[n]
        fn += (not flag[n]) and relied[n]
        if rel[n] > STRONG:
          strong += 1
          strong_hit += flag[n]
        if unused[n]:
          unused_n += 1
          fp_unused += flag[n]
    out[m] = {'median_spearman': float(np.median(rho)) if rho else None,
              'median_spearman_raw': float(np.median(rho_raw)) if rho_raw else None,
              'spearman_cells': len(rho),
              'precision': tp / (tp + fp) if tp + fp else None,
              'recall': tp / (tp + fn) if tp + fn else None,
              'recall_strong': strong_hit / strong if strong else None,
              'fpr_unused': fp_unused / unused_n if unused_n else None,
              'cells': len(lines)}
  return out


# The closed loop's estimators (issue 25 item 4): the explainer's view closed through the
# classifier, with biased or balanced g and probes; scored on the lines that carry them.
LOOP_METHODS = ('closed_loop', 'balanced_closed_loop')


def loop_summary(lines: list[dict], methods=LOOP_METHODS + ('prediction_association',)) -> dict:
  """summarize() of the lines that carry the closed loop, plus per method: coverage (share
  of attributes answered, not "cannot tell"), wrong answers ("relied on" for an unused
  attribute, "no evidence" for one with reliance > 0.25) and, for the closed loop, the
  median validity of the flip-all edit (share of samples whose c(g(ĥ')) ≠ c(g(ĥ)))."""
  needs = {'image_editor': 'editor', 'closed_loop': 'biased/closed_loop',
           'balanced_closed_loop': 'balanced/closed_loop'}
  lines = [l for l in lines if all(needs.get(m, 'names') in l for m in methods)]
  out = summarize(lines, methods)
  for m in methods:
    answered = wrong = total = 0
    for line in lines:
      rel, _, unused = truth(line)
      if m == 'image_editor':
        if 'editor' not in line:
          continue
        verdict = {r['attribute']: r['verdict'] for r in line['editor']['rows']}
      elif m == 'prediction_association':
        verdict = {r['attribute']: r.get('verdict', 'relied on' if r['flagged'] else
                                         'no evidence') for r in line['association_rows']}
      else:
        key = ('balanced' if m.startswith('balanced') else 'biased') + '/closed_loop'
        verdict = {r['attribute']: r['verdict'] for r in line[key]['rows']}
      for n in line['names']:
        total += 1
        answered += verdict[n] != 'cannot tell'
        wrong += ((verdict[n] == 'relied on' and unused[n])
                  or (verdict[n] == 'no evidence' and rel[n] > STRONG))
    out[m].update(coverage=answered / total if total else None, wrong=wrong, attributes=total)
    if m in LOOP_METHODS and lines:
      key = ('balanced' if m.startswith('balanced') else 'biased') + '/closed_loop'
      out[m]['median_validity'] = float(np.median([l[key]['validity_flip_all'] for l in lines]))
      agree = [l[key]['agreement_real'] for l in lines if l[key].get('agreement_real') is not None]
      out[m]['median_agreement_real'] = float(np.median(agree)) if agree else None
  return out


def format_loop_table(summary: dict) -> str:
  num = lambda v: '—' if v is None else f'{v:.2f}'
  head = ['method', 'attributes', 'coverage', 'wrong answers', 'validity (flip all)',
          'c(g(ĥ)) = c(x)'] + [
      h for h, _ in _COLUMNS]
  rows = [[m, str(s['attributes']), num(s['coverage']), str(s['wrong']),
           num(s.get('median_validity')), num(s.get('median_agreement_real'))] + [
               num(s[k]) for _, k in _COLUMNS]
          for m, s in summary.items()]
  return '\n'.join(['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
                   + ['| ' + ' | '.join(r) + ' |' for r in rows])


# The scored columns of both tables: (header, summarize() key).
_COLUMNS = (('median Spearman', 'median_spearman'), ('(raw)', 'median_spearman_raw'),
            ('precision', 'precision'), ('recall', 'recall'),
            ('recall (reliance > 0.25)', 'recall_strong'), ('FPR (unused)', 'fpr_unused'))


def _table(first: list[str], rows: list[tuple[list[str], dict]]) -> str:
  """A Markdown table: the `first` columns (given per row), then the scored ones of `s`."""
  cols = first + [h for h, _ in _COLUMNS]
  num = lambda v: '—' if v is None else f'{v:.2f}'
  return '\n'.join(['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)] + [
      '| ' + ' | '.join(lead + [num(s[k]) for _, k in _COLUMNS]) + ' |' for lead, s in rows])


def format_table(summary: dict) -> str:
  return _table(['method'], [([m], s) for m, s in summary.items()])


def by_learner(lines: list[dict]) -> dict[str, list[dict]]:
  """{learner: its lines}, restricted to the (data, seed) cells every learner finished, so
  that the learners are compared on the same classifiers."""
  groups: dict[str, list[dict]] = {}
  for line in lines:
    groups.setdefault(learner_of(line), []).append(line)
  common = set.intersection(*({base_key(l) for l in g} for g in groups.values())) if groups \
      else set()
  order = [l for l in LEARNERS if l in groups] + sorted(set(groups) - set(LEARNERS))
  return {k: [l for l in groups[k] if base_key(l) in common] for k in order}


def format_learner_table(summaries: dict[str, dict]) -> str:
  """One row per (method, learner); the methods that read only the classifier (tcav,
  prediction_association) get one row, the same for every learner."""
  first = next(iter(summaries))
  return _table(['method', 'learner'], [
      ([m, k if m in LEARNER_METHODS else 'any (classifier only)'], summaries[k][m])
      for m in METHODS for k in (list(summaries) if m in LEARNER_METHODS else [first])])


def todo_cells(cells: list[dict], lines: list[dict], shard: tuple[int, int] = (0, 1)
               ) -> list[list[dict]]:
  """The unfinished cells of this shard, grouped by (data, seed) in grid order (a group
  shares one classifier); shards split the (data, seed) groups, never a group."""
  done = {cell_key(l) for l in lines}
  bases = list(dict.fromkeys(base_key(c) for c in cells))[shard[0]::shard[1]]
  groups = [[c for c in cells if base_key(c) == b and cell_key(c) not in done] for b in bases]
  return [g for g in groups if g]


def read_lines(out: str) -> list[dict]:
  """The lines of a JSON-lines file, or of a folder's cells*.jsonl (what runs write)."""
  lines = []
  paths = [out] if out.endswith('.jsonl') else sorted(glob.glob(os.path.join(out, 'cells*.jsonl')))
  for path in paths:
    with open(path) as f:
      lines += [json.loads(l) for l in f if l.strip()]
  return lines


def rewrite_lines(path: str, lines: list[dict]) -> None:
  """Replaces the JSON-lines file `path` by `lines` at once (a kill leaves the old file)."""
  with open(path + '.tmp', 'w') as f:
    f.write(''.join(json.dumps(l) + '\n' for l in lines))
  os.replace(path + '.tmp', path)


def run_new_cells(cells: list[dict], path: str, run: Callable[[dict, str], dict],
                  key: Callable[[dict], str], describe: Callable[[dict], str],
                  cache: str) -> None:
  """run(cell, workdir) → line for every cell whose key no line of `path` has (resumable),
  each in a fresh temporary workdir, its line appended as it finishes; the persistent
  compilation cache at `cache` is shared by the cells."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  done = {l['cell'] for l in read_lines(path)} if os.path.exists(path) else set()
  for cell in cells:
    if key(cell) in done:
      continue
    with tempfile.TemporaryDirectory() as wd:
      line = run(cell, wd)
    with open(path, 'a') as f:
      f.write(json.dumps(line) + '\n')
    print(describe(line), flush=True)


def _append_line(out: str, shard: int, line: dict) -> None:
  with open(os.path.join(out, f'cells.{shard}.jsonl'), 'a') as f:
    f.write(json.dumps(line) + '\n')
  rel = {k: round(v['flip_rate'], 2) for k, v in line['reliance'].items()}
  print(f'{line["cell"]}: acc {line["accuracy"]:.3f} reliance {rel} '
        f'({line["seconds"]["total"]:.0f} s)', flush=True)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--out', default='runs/truthfulness',
                  help='folder of cells*.jsonl files (with --table also one .jsonl file)')
  ap.add_argument('--shard', default='0/1', help='i/n: run every n-th cell from the i-th')
  ap.add_argument('--base', default='small', help='config the cells derive from')
  ap.add_argument('--ci', action='store_true', help='one tiny cell (what CI runs)')
  ap.add_argument('--table', action='store_true', help='only print the table of --out')
  ap.add_argument('--cache', default=os.path.join(tempfile.gettempdir(), 'lsei_jax_truth_jit'))
  ap.add_argument('--learners', default='dvae', help=f'comma-separated, of {",".join(LEARNERS)}')
  ap.add_argument('--spurious', default=','.join(SPURIOUS), help='sub-grid: spurious attributes')
  ap.add_argument('--rhos', default=','.join(map(str, RHOS)), help='sub-grid: values of ρ')
  ap.add_argument('--difficulty', default=','.join(DIFFICULTY), help='sub-grid: easy, hard')
  ap.add_argument('--seeds', default=','.join(map(str, SEEDS)), help='sub-grid: seeds')
  ap.add_argument('--classifier_only', action='store_true',
                  help='train each cell\'s classifier only and score the verdict alone')
  ap.add_argument('--editor_steps', type=int, default=0,
                  help='train the image editor (issue 25 item 3) this many steps per cell')
  args = ap.parse_args(argv)
  split = lambda v: [x for x in v.split(',') if x]
  learners = split(args.learners)
  bad = [l for l in learners if l not in LEARNERS]
  if bad or not learners:
    raise SystemExit(f'--learners: unknown {bad or "(none)"}; known: {",".join(LEARNERS)}')
  if args.classifier_only:
    learners = [CLASSIFIER_ONLY]
  if not args.table and args.out.endswith('.jsonl'):
    raise SystemExit('--out: runs write cells.<shard>.jsonl into a folder; give a folder '
                     '(a .jsonl file is read with --table only)')
  if not args.table:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', args.cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    i, n = (int(x) for x in args.shard.split('/'))
    os.makedirs(args.out, exist_ok=True)
    cells = grid(args.ci, learners, split(args.spurious), [float(r) for r in split(args.rhos)],
                 split(args.difficulty), [int(k) for k in split(args.seeds)])
    for group in todo_cells(cells, read_lines(args.out), (i, n)):
      with tempfile.TemporaryDirectory() as wd:
        clf, first = None, None     # the group's classifier, trained with its first cell
        for cell in group:
          if args.classifier_only:
            line = run_classifier_cell(cell, wd, args.base, args.editor_steps)
            _append_line(args.out, i, line)
            continue
          line = run_cell(cell, os.path.join(wd, learner_of(cell)), args.base, clf, first,
                          args.editor_steps)
          if first is None:
            clf = os.path.join(wd, learner_of(cell), 'biased', 'classifier')
            first = line
          _append_line(args.out, i, line)
  lines = read_lines(args.out)
  # --classifier_only lines score the verdict alone; they never mix into the full tables.
  only = [l for l in lines if learner_of(l) == CLASSIFIER_ONLY]
  lines = [l for l in lines if learner_of(l) != CLASSIFIER_ONLY]
  groups = by_learner(lines)
  if args.classifier_only or not lines:
    summary = summarize(only, CLASSIFIER_METHODS)
    print(f'{len(only)} cells (classifier only)')
    print(format_table(summary))
  elif len(groups) > 1:
    summaries = {k: summarize(v) for k, v in groups.items()}
    print(f'{len(next(iter(groups.values())))} cells per learner (those every learner finished)')
    print(format_learner_table(summaries))
    summary = {'by_learner': summaries}
  else:
    summary = summarize(lines)
    print(f'{len(lines)} cells')
    print(format_table(summary))
  if any('biased/closed_loop' in l for l in lines):
    summary['closed_loop'] = loop_summary(lines)
    print(f'closed loop: {sum("biased/closed_loop" in l for l in lines)} cells')
    print(format_loop_table(summary['closed_loop']))
  edited = [l for l in lines + only if 'editor' in l]
  if edited:
    summary['image_editor'] = loop_summary(edited, ('image_editor', 'prediction_association'))
    print(f'image editor: {len(edited)} cells')
    print(format_loop_table(summary['image_editor']))
  path = (os.path.splitext(args.out)[0] + '_summary.json' if args.out.endswith('.jsonl')
          else os.path.join(args.out, 'summary.json'))
  with open(path, 'w') as f:
    json.dump(summary, f, indent=2)


if __name__ == '__main__':
  main()
