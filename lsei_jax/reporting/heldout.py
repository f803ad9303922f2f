"""The verdict's fallback where the test split confounds a pair that the training
distribution separates: the same adjusted association (association.py), computed on
held-out images drawn from the training distribution that the classifier did not train on
(CelebA's and a BYO dataset's 'validation' split; the shapes' 'validation', drawn like
'train' under another name).

Why held-out images and not the training images themselves: a classifier that memorised
its training images predicts their labels also where the spurious attribute disagrees, so
on the training split the task's effect reads too large and the shortcut's too small
(benchmarks/truthfulness_correlated.py measures both). Why an association and not an
intervention on the representation: it needs no model of h, and a shift of h can leave the
data's manifold (representation_shift.py: a wrong answer on the benchmark).

What it answers: the effect of the attribute on the predictions over the training
distribution, with the other attributes held fixed by the same least-squares adjustment;
where the classifier's dependence differs between the two distributions (an interaction
with the attribute the test split confounds it with), that is the effect it reports. It
fills only rows that the test split left 'cannot tell' because of a confounding attribute;
every other row is the test split's, unchanged. Each filled row names this estimator, the
split and its evidence, and keeps the test split's own evidence.

The pooled look (pool): a row the test split leaves 'cannot tell' *without* a confounding
attribute (an interval too wide, e.g. the interaction that decides the average effect rests
on a few test images; or an attribute constant in the test split) is answered from the test
and held-out images pooled: the same average effect over both sets (the test split's images
and the training distribution's), at a stricter level, POOLED_ALPHA_SHARE of the verdict's
α (Bonferroni over the same attributes × classes). Why stricter: it is a second look at rows
the first left open; by the union bound a null attribute is flagged by either look with
probability at most α/(2AK) + share·α/(2AK), so the family-wise error is at most
(1 + share)·α (7.5% at α = 5%; the confounded rows' held-out look, at the verdict's own
level, can add up to α more in the worst case); `verdict_calibration.py --fallback`
measures all looks together under the null: under 2% at N = 12, 200, 2048. Where the
classifier's dependence differs between the two distributions, the pooled effect is their average weighted by the two sets' sizes, and its
row says it is that, not the test split's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.reporting import association

ESTIMATOR = 'adjusted association on held-out images of the training distribution ({split})'
POOLED_ALPHA_SHARE = 0.5
POOLED_ESTIMATOR = ('average effect over the test and {split} images pooled ({num} images; '
                    f'least squares with a × other-attribute interactions where each cell '
                    f'holds ≥ {association.MIN_CELL} images, HC3, t reference, at '
                    f'{POOLED_ALPHA_SHARE:g} of the verdict\'s α: a second look)')


def wanted(rows: list[dict]) -> list[str]:
  """The attributes a fallback may answer: 'cannot tell' because a correlated attribute of
  the test split confounds them (not a constant, not a wide interval on its own)."""
  return [r['attribute'] for r in rows if r.get('verdict') == 'cannot tell'
          and r.get('confounded_by')]


def too_wide(rows: list[dict]) -> list[str]:
  """The attributes the pooled look may answer: 'cannot tell' with no confounding attribute
  (an interval too wide on its own, or constant in the test split)."""
  return [r['attribute'] for r in rows if r.get('verdict') == 'cannot tell'
          and not r.get('confounded_by')]


def pooled_level(level: float) -> float:
  """The pooled look's confidence: POOLED_ALPHA_SHARE of the verdict's α (module doc)."""
  return 1 - POOLED_ALPHA_SHARE * (1 - level)


def pool(rows: list[dict], pooled_rows: list[dict] | None, split: str, num_pooled: int,
         level: float) -> list[dict]:
  """`rows` with each too_wide row replaced by `pooled_rows`' answer (the verdict on the
  test and `split` images pooled, num_pooled of them, at pooled_level(level)) where that
  answers; otherwise the row stays the test split's 'cannot tell' and its evidence says
  what the pool said (or that there was no held-out split: pooled_rows None). Sorted by
  |shift|."""
  want = set(too_wide(rows))
  pooled = {r['attribute']: r for r in pooled_rows or []}
  where = (f'the test and {split} images pooled ({num_pooled} images, '
           f'level {pooled_level(level):.3f})')
  out = []
  for r in rows:
    if r['attribute'] not in want:
      out.append(r)
      continue
    h = pooled.get(r['attribute'])
    if h is None:
      out.append(dict(r, evidence=f'{r.get("evidence", "")}; no {split} split to pool with'))
    elif h['verdict'] == 'cannot tell':
      out.append(dict(r, evidence=(f'{r.get("evidence", "")}; {where} cannot tell either: '
                                   f'{h.get("evidence", "")}')))
    else:
      out.append(dict(
          r, verdict=h['verdict'], flagged=h['flagged'], shift=h['shift'],
          toward_class=h['toward_class'], se=h['se'], ci_low=h['ci_low'],
          ci_high=h['ci_high'], answered_from=f'test+{split}',
          estimator=POOLED_ESTIMATOR.format(split=split, num=num_pooled),
          evidence=(f'{where}: {h.get("evidence", "")}; the test split alone: '
                    f'{r.get("evidence", "cannot tell")}')))
  return sorted(out, key=lambda r: -abs(r['shift']))


def fill(rows: list[dict], held_rows: list[dict] | None, split: str, num_held: int
         ) -> list[dict]:
  """`rows` (the test split's verdict) with each wanted row replaced by `held_rows`' answer
  for that attribute where it answers ('relied on' / 'no evidence'); where it cannot either
  (the training distribution confounds the pair too) or there are no held-out images
  (held_rows None), the row stays 'cannot tell' and its evidence says so. Sorted by |shift|
  like association.prediction_association's rows."""
  want = set(wanted(rows))
  held = {r['attribute']: r for r in held_rows or []}
  out = []
  for r in rows:
    if r['attribute'] not in want:
      out.append(r)
      continue
    h = held.get(r['attribute'])
    if h is None:
      out.append(dict(r, evidence=f'{r.get("evidence", "")}; no {split} split to answer from'))
      continue
    if h['verdict'] == 'cannot tell':
      out.append(dict(r, evidence=(f'{r.get("evidence", "")}; the {split} split ({num_held} '
                                   f'images) cannot tell either: {h.get("evidence", "")}')))
      continue
    out.append(dict(
        r, verdict=h['verdict'], flagged=h['flagged'], shift=h['shift'],
        toward_class=h['toward_class'], se=h['se'], ci_low=h['ci_low'], ci_high=h['ci_high'],
        answered_from=split, estimator=ESTIMATOR.format(split=f'{split} split, {num_held} images'),
        evidence=(f'{split} split: {h.get("evidence", "")}; the test split alone: '
                  f'{r.get("evidence", "cannot tell")}')))
  return sorted(out, key=lambda r: -abs(r['shift']))


def prediction_association(pred: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                           task: str, num_classes: int, held=None, split: str = 'validation',
                           level: float = 0.95, **kw) -> list[dict]:
  """association.prediction_association on the test split, with its confounded rows
  answered from a held-out split of the training distribution (fill) and its rows too wide
  to decide from the test and held-out images pooled at a stricter level (pool).

  held: (pred int [M], attributes [M, A]) of that split, or a callable returning them (or
  None where there is none), called only if a row needs it (loading and classifying a
  split costs time that a test split answering every row never needs); level: the
  verdict's family-wise confidence (the pooled look's: pooled_level(level)); kw: the
  verdict's min_effect / max_hidden / min_cell, the same for every look.
  """
  rows = association.prediction_association(pred, attributes, names, task, num_classes,
                                             level=level, **kw)
  if not (wanted(rows) or too_wide(rows)) or held is None:
    return rows
  got = held() if callable(held) else held
  if got is None or len(got[0]) == 0:
    return pool(fill(rows, None, split, 0), None, split, 0, level)
  if wanted(rows):
    held_rows = association.prediction_association(got[0], got[1], names, task, num_classes,
                                                   split=split, level=level, **kw)
    rows = fill(rows, held_rows, split, len(got[0]))
  if too_wide(rows):
    # Each split's coding checked and mapped to {0, 1} alone (±1 columns in one of them).
    p_test, x_test = association.check_inputs(pred, attributes, names, num_classes)
    p_held, x_held = association.check_inputs(got[0], got[1], names, num_classes)
    pooled_rows = association.prediction_association(
        np.concatenate([p_test, p_held]), np.concatenate([x_test, x_held]), names, task,
        num_classes, split=f'test + {split}', level=pooled_level(level), **kw)
    rows = pool(rows, pooled_rows, split, len(p_test) + len(p_held), level)
  return rows
