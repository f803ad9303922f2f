"""The verdict's second look: rows the test split leaves 'cannot tell' answered from the test
images and held-out images of the training distribution that the classifier did not train
on, pooled (CelebA's and a BYO dataset's 'validation' split; the shapes' 'validation', drawn
like 'train' under another name), by the same adjusted association (association.py) at a
stricter level.

Which rows: every row the test split leaves 'cannot tell', whatever the reason: a
confounding attribute (variance inflated more than 2× by a correlate, or collinear: the
test split confounds a pair that the training distribution may separate), an interval too
wide on its own (the interaction that decides the average effect rests on a few test
images), or an attribute constant in the test split. Every other row is the test split's,
unchanged, and the held-out split is not even loaded where no row needs it.

What a pooled row answers: the average effect over both sets of images (the test split's
and the training distribution's), with the other attributes held fixed by the same
least-squares adjustment, a × b interactions entering where each cell of the pool holds
≥ association.MIN_CELL images. Where the classifier's dependence differs between the two
distributions, that effect is their average weighted by the two sets' sizes, and the row
says it is that (answered_from 'test+validation', its estimator and evidence), keeping the
test split's own evidence.

Why pooled and not the held-out split alone (the rule until issue 25's comparison,
docs/truthfulness_celeba_shaped.md): the pool holds every image that separates the pair in
either split, so wherever the held-out split alone separates it the pool does too, and its
cells admit interactions the held-out split alone cannot estimate where it copies the
training correlation (CelebA-shaped `lipstick` classifiers: Wearing_Lipstick = ¬Male in 97%;
alone, it fitted Male × makeup additively and read Male +0.39 for a true +0.13). Why not the
training images themselves: a classifier that memorised them predicts their labels also
where the spurious attribute disagrees, so the task's effect reads too large and the
shortcut's too small there (benchmarks/truthfulness_correlated.py). Why an association and
not an intervention on the representation: it needs no model of h, and a shift of h can
leave the data's manifold (representation_shift.py).

Why stricter: a second look at rows the first left open. At POOLED_ALPHA_SHARE of the
verdict's α (Bonferroni over the same attributes × classes), by the union bound a null
attribute is flagged by either look with probability at most α/(2AK) + share·α/(2AK), so the
family-wise error is at most (1 + share)·α (7.5% at α = 5%; one look per row, where the rule
before took a held-out-alone look at the full α on top); `verdict_calibration.py
--fallback` measures it under the null: under 2% at N = 12, 200, 2048, with and without a
pair the test split confounds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.reporting import association

POOLED_ALPHA_SHARE = 0.5
POOLED_ESTIMATOR = ('average effect over the test and {split} images pooled ({num} images; '
                    f'least squares with a × other-attribute interactions where each cell '
                    f'holds ≥ {association.MIN_CELL} images, HC3, t reference, at '
                    f'{POOLED_ALPHA_SHARE:g} of the verdict\'s α: a second look)')
# One other split alone (fill): not what the verdict ships; the benchmarks' comparisons
# (truthfulness_correlated's train_association, and two_looks: the rule before).
ESTIMATOR = 'adjusted association on held-out images of the training distribution ({split})'


def open_rows(rows: list[dict]) -> list[str]:
  """The attributes the second look answers: every row the test split leaves 'cannot
  tell' (a confounding attribute, an interval too wide, or constant in the test split)."""
  return [r['attribute'] for r in rows if r.get('verdict') == 'cannot tell']


def pooled_level(level: float) -> float:
  """The pooled look's confidence: POOLED_ALPHA_SHARE of the verdict's α (module doc)."""
  return 1 - POOLED_ALPHA_SHARE * (1 - level)


def pool(rows: list[dict], pooled_rows: list[dict] | None, split: str, num_pooled: int,
         level: float, attributes: Sequence[str] | None = None) -> list[dict]:
  """`rows` with each open row (or each of `attributes`) replaced by `pooled_rows`' answer
  (the verdict on the test and `split` images pooled, num_pooled of them, at
  pooled_level(level)) where that answers; otherwise the row stays the test split's 'cannot
  tell' (its confounded_by, partner, separated_by kept) and its evidence says what the
  pool said (or that there was no held-out split: pooled_rows None). Sorted by |shift|."""
  where = (f'the test and {split} images pooled ({num_pooled} images, '
           f'level {pooled_level(level):.3f})')
  return _second_look(
      rows, set(open_rows(rows) if attributes is None else attributes), pooled_rows,
      missing=f'no {split} split to pool with', undecided=f'{where} cannot tell either',
      answered=lambda h, r: dict(
          answered_from=f'test+{split}',
          estimator=POOLED_ESTIMATOR.format(split=split, num=num_pooled),
          evidence=(f'{where}: {h.get("evidence", "")}; the test split alone: '
                    f'{r.get("evidence", "cannot tell")}')))


# The fields of a row that another look's answer replaces (the rest stay the test split's:
# partner, separated_by, confounded_by, ...).
ANSWER_FIELDS = ('verdict', 'flagged', 'shift', 'toward_class', 'se', 'ci_low', 'ci_high')


def _second_look(rows: list[dict], want: set[str], other_rows: list[dict] | None, *,
                 missing: str, undecided: str, answered) -> list[dict]:
  """`rows` with each row in `want` replaced by `other_rows`' answer for it where that
  answers ('relied on' / 'no evidence'): its ANSWER_FIELDS and answered(other, row)'s
  fields. Where other_rows has no such row (None: no other look) the row's evidence gains
  `missing`; where the other look
  cannot tell either, `undecided` and its evidence. Sorted by |shift|."""
  other = {r['attribute']: r for r in other_rows or []}
  out = []
  for r in rows:
    h = other.get(r['attribute'])
    if r['attribute'] not in want:
      out.append(r)
    elif h is None:
      out.append(dict(r, evidence=f'{r.get("evidence", "")}; {missing}'))
    elif h['verdict'] == 'cannot tell':
      out.append(dict(r, evidence=f'{r.get("evidence", "")}; {undecided}: '
                                  f'{h.get("evidence", "")}'))
    else:
      out.append(dict(r, **{k: h[k] for k in ANSWER_FIELDS}, **answered(h, r)))
  return sorted(out, key=lambda r: -abs(r['shift']))


def pooled_rows_of(pred: np.ndarray, attributes: np.ndarray, held: tuple, names: Sequence[str],
                   task: str, num_classes: int, split: str, level: float, **kw
                   ) -> tuple[list[dict], int]:
  """(association.prediction_association on the test and held-out images concatenated at
  pooled_level(level), the number of images): each split's coding checked and mapped to
  {0, 1} alone (±1 columns in one of them)."""
  p_test, x_test = association.check_inputs(pred, attributes, names, num_classes)
  p_held, x_held = association.check_inputs(held[0], held[1], names, num_classes)
  rows = association.prediction_association(
      np.concatenate([p_test, p_held]), np.concatenate([x_test, x_held]), names, task,
      num_classes, split=f'test + {split}', level=pooled_level(level), **kw)
  return rows, len(p_test) + len(p_held)


def wanted(rows: list[dict]) -> list[str]:
  """The attributes fill answers: 'cannot tell' because a correlated attribute of the test
  split confounds them (not a constant, not a wide interval on its own)."""
  return [r['attribute'] for r in rows if r.get('verdict') == 'cannot tell'
          and r.get('confounded_by')]


def fill(rows: list[dict], held_rows: list[dict] | None, split: str, num_held: int
         ) -> list[dict]:
  """Not the shipped rule (see ESTIMATOR): `rows` (the test split's verdict) with each
  wanted row replaced by `held_rows`' answer (another split's verdict alone) where it
  answers; where it cannot either or there is none (held_rows None), the row stays 'cannot
  tell' and its evidence says so. Sorted by |shift|."""
  return _second_look(
      rows, set(wanted(rows)), held_rows, missing=f'no {split} split to answer from',
      undecided=f'the {split} split ({num_held} images) cannot tell either',
      answered=lambda h, r: dict(
          answered_from=split,
          estimator=ESTIMATOR.format(split=f'{split} split, {num_held} images'),
          evidence=(f'{split} split: {h.get("evidence", "")}; the test split alone: '
                    f'{r.get("evidence", "cannot tell")}')))


def prediction_association(pred: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                           task: str, num_classes: int, held=None, split: str = 'validation',
                           level: float = 0.95, **kw) -> list[dict]:
  """association.prediction_association on the test split, with every row it leaves
  'cannot tell' answered from the test and held-out images pooled at a stricter level
  (pool; module doc).

  held: (pred int [M], attributes [M, A]) of that split, or a callable returning them (or
  None where there is none), called only if a row needs it (loading and classifying a
  split costs time that a test split answering every row never needs); level: the
  verdict's family-wise confidence (the pooled look's: pooled_level(level)); kw: the
  verdict's min_effect / max_hidden / min_cell, the same for both looks.
  """
  rows = association.prediction_association(pred, attributes, names, task, num_classes,
                                             level=level, **kw)
  if not open_rows(rows) or held is None:
    return rows
  got = held() if callable(held) else held
  if got is None or len(got[0]) == 0:
    return pool(rows, None, split, 0, level)
  pooled_rows, num = pooled_rows_of(pred, attributes, got, names, task, num_classes, split,
                                    level, **kw)
  return pool(rows, pooled_rows, split, num, level)
