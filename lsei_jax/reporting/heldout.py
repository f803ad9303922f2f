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
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.reporting import association

ESTIMATOR = 'adjusted association on held-out images of the training distribution ({split})'


def wanted(rows: list[dict]) -> list[str]:
  """The attributes a fallback may answer: 'cannot tell' because a correlated attribute of
  the test split confounds them (not a constant, not a wide interval on its own)."""
  return [r['attribute'] for r in rows if r.get('verdict') == 'cannot tell'
          and r.get('confounded_by')]


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
        estimator=ESTIMATOR.format(split=f'{split} split, {num_held} images'),
        evidence=(f'{split} split: {h.get("evidence", "")}; the test split alone: '
                  f'{r.get("evidence", "cannot tell")}')))
  return sorted(out, key=lambda r: -abs(r['shift']))


def prediction_association(pred: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                           task: str, num_classes: int, held=None, split: str = 'validation',
                           **kw) -> list[dict]:
  """association.prediction_association on the test split, with its confounded rows
  answered from a held-out split of the training distribution (fill).

  held: (pred int [M], attributes [M, A]) of that split, or a callable returning them (or
  None where there is none), called only if a row needs it (loading and classifying a
  split costs time that an independent test split never needs); kw: the verdict's
  level / min_effect / max_hidden, the same for both splits.
  """
  rows = association.prediction_association(pred, attributes, names, task, num_classes, **kw)
  if not wanted(rows) or held is None:
    return rows
  got = held() if callable(held) else held
  if got is None or len(got[0]) == 0:
    return fill(rows, None, split, 0)
  held_rows = association.prediction_association(got[0], got[1], names, task, num_classes,
                                                 split=split, **kw)
  return fill(rows, held_rows, split, len(got[0]))
