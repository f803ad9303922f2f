"""The paper's view, closed loop: does the rendered counterfactual g(ĥ') flip the classifier
itself, and which attributes did the edit change (issue 25 item 4)?

The explainer's view (bias.reliance_report) reads attributes on g(ĥ) and g(ĥ') with probes
and relates their shifts to c2's decision on ĥ'. Here the loop is closed through the
classifier c on the rendered images: for each single-bit edit k of each test sample n,

  flip[k, n]     = c(g(ĥ'_k)) ≠ c(g(ĥ))          (validity: the edit moved c)
  moved[k, n, a] = the probe's reading of attribute a on g(ĥ'_k) crosses 0.5 against g(ĥ)

and an attribute's reliance is estimated from the edits that changed that attribute and no
other ("clean" edits): the share of them that flip c, minus the share among edits that
changed no attribute (what re-rendering moves by itself). Pure NumPy on per-example arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.reporting.bias import _normal_quantile, is_task_attribute  # pylint: disable=protected-access


def attribute_moves(p_before: np.ndarray, p_after: np.ndarray, threshold: float = 0.5
                    ) -> np.ndarray:
  """bool [K, N, A]: where the probe's reading of g(ĥ'_k) falls on the other side of
  `threshold` than its reading of g(ĥ). p_before [N, A], p_after [K, N, A]."""
  before = np.asarray(p_before, np.float64) > threshold
  return (np.asarray(p_after, np.float64) > threshold) != before[None]


def bit_summary(pred_before: np.ndarray, pred_after: np.ndarray, moved: np.ndarray,
                names: Sequence[str]) -> list[dict]:
  """Per bit k: validity (share of samples whose prediction on g(ĥ'_k) differs from that on
  g(ĥ)), edit_rate {attribute: share of samples whose attribute the edit moved}, the
  attribute it moves most (`assigned`, None when it moves none) and leakage (the largest
  edit rate among the other attributes). pred_before [N], pred_after [K, N], moved [K, N, A].
  """
  flips = np.asarray(pred_after) != np.asarray(pred_before)[None]
  rates = moved.mean(1)                                     # [K, A]
  out = []
  for k in range(moved.shape[0]):
    top = int(np.argmax(rates[k]))
    assigned = names[top] if rates[k, top] > 0 else None
    others = np.delete(rates[k], top)
    out.append({'bit': k, 'validity': float(flips[k].mean()), 'assigned': assigned,
                'edit_rate': {n: float(r) for n, r in zip(names, rates[k])},
                'leakage': float(others.max()) if len(others) else 0.0})
  return out


def _agresti_caffo(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float]:
  """Difference of two proportions x1/n1 − x0/n0 and its Agresti–Caffo standard error (one
  success and one failure added to each group: never a zero-width interval from a few
  pairs)."""
  p1, p0 = (x1 + 1) / (n1 + 2), (x0 + 1) / (n0 + 2)
  return x1 / n1 - x0 / n0, float(np.sqrt(p1 * (1 - p1) / (n1 + 2) + p0 * (1 - p0) / (n0 + 2)))


def closed_loop_rows(pred_before: np.ndarray, pred_after: np.ndarray, p_before: np.ndarray,
                     p_after: np.ndarray, names: Sequence[str], task: str, *,
                     level: float = 0.95, min_effect: float = 0.05, max_hidden: float = 0.25,
                     min_edits: int = 20, threshold: float = 0.5) -> list[dict]:
  """Attribute-level reliance from the closed loop, one row per attribute (in `names` order).

  Args:
    pred_before: int [N], c's prediction on g(ĥ); pred_after: int [K, N], on g(ĥ'_k).
    p_before: probe probabilities [N, A] on g(ĥ); p_after: [K, N, A] on g(ĥ'_k).
    min_effect: the smallest effect called "relied on"; max_hidden: "no evidence" needs the
      interval to rule out an effect this large; min_edits: fewer clean edits (or null
      edits) than this answer "cannot tell".

  Row: flip_rate (share of the attribute's clean edits that flip c), null_rate (share of
  the edits that moved no attribute that flip c), effect = flip_rate − null_rate with a
  Bonferroni (over attributes) Agresti–Caffo interval, num_edits, num_null, leakage (share of
  the edits that moved the attribute which also moved another one), verdict ('relied on',
  'no evidence', 'cannot tell'), flagged (= relied on), estimator, evidence. The (k, n)
  pairs of one sample are counted as independent: the interval is narrower than it should
  be where a few samples supply most edits.
  """
  pred_before, pred_after = np.asarray(pred_before), np.asarray(pred_after)
  moved = attribute_moves(p_before, p_after, threshold)              # [K, N, A]
  if pred_after.shape != moved.shape[:2] or moved.shape[-1] != len(names):
    raise ValueError(f'closed_loop_rows: pred_after {pred_after.shape}, p_after '
                     f'{np.shape(p_after)} and {len(names)} names do not fit')
  flips = pred_after != pred_before[None]                            # [K, N]
  count = moved.sum(-1)
  null = count == 0
  n0, x0 = int(null.sum()), int(flips[null].sum())
  z = _normal_quantile(1 - (1 - level) / (2 * max(len(names), 1)))
  rows = []
  for a, name in enumerate(names):
    clean = moved[..., a] & (count == 1)
    n1, x1 = int(clean.sum()), int(flips[clean].sum())
    any_a = int(moved[..., a].sum())
    leak = 1 - n1 / any_a if any_a else 0.0
    row = {'attribute': name, 'is_task': is_task_attribute(name, task), 'num_edits': n1,
           'num_null': n0, 'leakage': float(leak), 'estimator': 'closed_loop',
           'flip_rate': x1 / n1 if n1 else None, 'null_rate': x0 / n0 if n0 else None}
    if n1 < min_edits or n0 < min_edits:
      row.update(effect=None, ci_low=None, ci_high=None, verdict='cannot tell', flagged=False,
                 evidence=f'{n1} clean edits of {name}, {n0} edits that move no attribute '
                          f'(at least {min_edits} of each needed)')
    else:
      eff, se = _agresti_caffo(x1, n1, x0, n0)
      lo, hi = eff - z * se, eff + z * se
      verdict = ('relied on' if lo > 0 and eff >= min_effect else
                 'no evidence' if max(abs(lo), abs(hi)) < max_hidden else 'cannot tell')
      row.update(effect=float(eff), ci_low=float(lo), ci_high=float(hi), verdict=verdict,
                 flagged=verdict == 'relied on',
                 evidence=f'c flips on {x1} of {n1} rendered edits that move {name} alone, '
                          f'{x0} of {n0} that move no attribute')
    rows.append(row)
  return rows


def closed_loop_report(pred_before: np.ndarray, pred_after: np.ndarray, p_before: np.ndarray,
                       p_after: np.ndarray, names: Sequence[str], task: str,
                       pred_flip_all: np.ndarray | None = None,
                       pred_real: np.ndarray | None = None, **kw) -> dict:
  """{'validity_flip_all' (share of samples whose prediction on g of the flip-all ĥ' differs
  from that on g(ĥ); None without pred_flip_all), 'agreement_real' (share whose prediction
  on g(ĥ) is c's on the real image x: whether the renders carry what c reads; None without
  pred_real), 'bits' (bit_summary), 'rows' (closed_loop_rows)}: metrics.json's
  `closed_loop`."""
  moved = attribute_moves(p_before, p_after, kw.get('threshold', 0.5))
  return {'validity_flip_all': (None if pred_flip_all is None else
                                float(np.mean(np.asarray(pred_flip_all) != pred_before))),
          'agreement_real': (None if pred_real is None else
                             float(np.mean(np.asarray(pred_real) == pred_before))),
          'bits': bit_summary(pred_before, pred_after, moved, names),
          'rows': closed_loop_rows(pred_before, pred_after, p_before, p_after, names, task,
                                   **kw),
          'label': "the explainer's view, closed loop (not the verdict)"}
