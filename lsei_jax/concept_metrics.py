"""Concept-learner metrics (docs/method.md, DESIGN §8): reconstruction, sparsity, dead units,
accuracy recovered, and recovery of known factors. Pure NumPy (float64) functions of
host arrays: h, ĥ [N, d]; codes [N, K]; attributes [N, A] in {0, 1}.
"""
from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


# ----------------------------------------------------------------------- reconstruction
def variance_explained(h, hhat) -> float:
  """1 − Σ_d Var(h − ĥ) / Σ_d Var(h): 1 for ĥ = h, 0 for ĥ = the mean of h."""
  h, hhat = _f64(h), _f64(hhat)
  total = np.sum(np.var(h, axis=0))
  return float(1.0 - np.sum(np.var(h - hhat, axis=0)) / total) if total > 0 else float('nan')


def normalized_mse(h, hhat, eps: float = 1e-12) -> float:
  """mean_i [ mean_d (ĥ − h)² / mean_d h² ] (rows with h = 0 use eps as denominator)."""
  h, hhat = _f64(h), _f64(hhat)
  return float(np.mean(np.mean((hhat - h) ** 2, 1) / np.maximum(np.mean(h ** 2, 1), eps)))


# ----------------------------------------------------------------------- sparsity
def l0(codes) -> float:
  """Mean number of active (> 0) units per sample."""
  return float(np.mean(np.sum(_f64(codes) > 0, axis=1)))


def activation_frequency(codes) -> np.ndarray:
  """[K]: fraction of samples on which each unit is active."""
  return np.mean(_f64(codes) > 0, axis=0)


def dead_and_always_on(codes) -> tuple[float, float]:
  """(fraction of units never active, fraction active on every sample)."""
  freq = activation_frequency(codes)
  return float(np.mean(freq == 0)), float(np.mean(freq == 1))


def frequency_histogram(freq, num_bins: int = 10) -> dict:
  """Histogram of log10 activation frequencies (the SAE convention), units never active
  counted apart: {'log10_edges': [num_bins + 1], 'counts': [num_bins], 'never': int}."""
  freq = _f64(freq)
  on = freq[freq > 0]
  low = np.floor(np.log10(on.min())) if on.size else -1.0
  edges = np.linspace(min(low, -1.0), 0.0, num_bins + 1)
  counts, _ = np.histogram(np.log10(on), bins=edges)
  return {'log10_edges': edges.tolist(), 'counts': counts.tolist(),
          'never': int(np.sum(freq == 0))}


# ----------------------------------------------------------------------- the head
def accuracy_recovered(acc_h: float, acc_hhat: float, acc_mean: float) -> float:
  """(acc(c2(ĥ)) − acc(c2(h̄))) / (acc(c2(h)) − acc(c2(h̄))): 1 = as good as h, 0 = as good
  as the mean embedding; nan when h is no better than its mean."""
  gap = acc_h - acc_mean
  return float((acc_hhat - acc_mean) / gap) if gap != 0 else float('nan')


def num_decisive_units(decisive) -> int:
  """Units whose single intervention changes at least one prediction; decisive [N, K] bool."""
  return int(np.sum(np.any(np.asarray(decisive, bool), axis=0)))


# ----------------------------------------------------------------------- matching
def hungarian(cost) -> tuple[np.ndarray, np.ndarray]:
  """Minimum-cost assignment of cost [n, m] (Kuhn–Munkres with potentials, O(n²m)).

  Returns (rows, cols), each of length min(n, m), rows ascending: row rows[i] is assigned
  column cols[i] and Σ cost[rows, cols] is minimal (as scipy's linear_sum_assignment).
  """
  cost = _f64(cost)
  if cost.ndim != 2:
    raise ValueError(f'hungarian: cost must be a matrix [n, m], got shape {cost.shape}')
  if not np.all(np.isfinite(cost)):
    raise ValueError('hungarian: cost has non-finite entries; replace nan/inf first')
  if cost.shape[0] > cost.shape[1]:
    cols, rows = hungarian(cost.T)
    order = np.argsort(rows)
    return rows[order], cols[order]
  n, m = cost.shape
  u, v = np.zeros(n + 1), np.zeros(m + 1)
  p = np.zeros(m + 1, int)      # p[j]: row (1-based) matched to column j; p[0] the new row
  way = np.zeros(m + 1, int)
  for i in range(1, n + 1):
    p[0], j0 = i, 0
    minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, bool)
    while True:                 # grow the alternating tree until a free column is reached
      used[j0] = True
      reduced = cost[p[j0] - 1] - u[p[j0]] - v[1:]
      free = ~used[1:]
      better = free & (reduced < minv[1:])
      minv[1:][better] = reduced[better]
      way[1:][better] = j0
      cand = np.where(free, minv[1:], np.inf)
      j1 = int(np.argmin(cand)) + 1
      delta = cand[j1 - 1]
      tree = np.nonzero(used)[0]
      u[p[tree]] += delta
      v[tree] -= delta
      minv[1:][free] -= delta
      j0 = j1
      if p[j0] == 0:
        break
    while j0:                   # augment along the path
      j1 = way[j0]
      p[j0] = p[j1]
      j0 = j1
  cols = np.nonzero(p[1:])[0]
  rows = p[1:][cols] - 1
  order = np.argsort(rows)
  return rows[order], cols[order]


def correlation(a, b) -> np.ndarray:
  """Pearson correlation [K, A] of the columns of a [N, K] with those of b [N, A]; a
  constant column correlates 0 with everything."""
  a, b = _f64(a), _f64(b)
  a, b = a - a.mean(0), b - b.mean(0)
  na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
  c = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)
  c[(na == 0)[:, None] | (nb == 0)[None, :]] = 0.0
  return np.clip(c, -1.0, 1.0)


def matched_correlation(a, b) -> dict:
  """Hungarian matching of the columns of a [N, K] to those of b [N, A] on |correlation|.

  Returns {'mcc': mean matched |corr| over the min(K, A) pairs, 'pairs': [(i, j, corr)]}.
  """
  c = correlation(a, b)
  rows, cols = hungarian(-np.abs(c))
  matched = c[rows, cols]
  return {'mcc': float(np.mean(np.abs(matched))) if matched.size else float('nan'),
          'pairs': [(int(i), int(j), float(x)) for i, j, x in zip(rows, cols, matched)]}


def auc(scores, labels) -> float:
  """ROC AUC of scores [N] for binary labels [N] (Mann–Whitney, ties counted ½); nan if
  one class is absent."""
  scores, labels = _f64(scores), np.asarray(labels) > 0.5
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def best_unit_auc(codes, attributes, names) -> dict:
  """Per attribute, the unit whose activation separates it best: {name: {'unit', 'auc',
  'sign'}}, auc = max(AUC, 1 − AUC) ≥ ½ and sign −1 when the unit is on for its absence."""
  codes, attributes = _f64(codes), np.asarray(attributes)
  out = {}
  for a, name in enumerate(names):
    aucs = np.array([auc(codes[:, k], attributes[:, a]) for k in range(codes.shape[1])])
    if np.all(np.isnan(aucs)):
      out[name] = {'unit': None, 'auc': float('nan'), 'sign': 0}
      continue
    folded = np.maximum(aucs, 1.0 - aucs)
    k = int(np.nanargmax(folded))
    out[name] = {'unit': k, 'auc': float(folded[k]), 'sign': 1 if aucs[k] >= 0.5 else -1}
  return out


def factor_recovery(codes, attributes, names) -> dict:
  """Recovery of known factors: MCC (Hungarian on |corr| of units vs attributes) and the
  best unit's AUC per attribute."""
  m = matched_correlation(codes, attributes)
  return {'mcc': m['mcc'],
          'matched': {names[j]: {'unit': i, 'corr': c} for i, j, c in m['pairs']},
          'best_unit_auc': best_unit_auc(codes, attributes, names)}


def stability(codes_a, codes_b) -> float:
  """Hungarian-matched mean |corr| between the units of two codes [N, K] of the same inputs
  (e.g. two training seeds): 1 when one is a permutation (and rescaling) of the other."""
  return matched_correlation(codes_a, codes_b)['mcc']


def summary(h, hhat, codes, *, acc_h: float, acc_hhat: float, acc_mean: float,
            decisive=None, num_bins: int = 10) -> dict:
  """The concept-learner metrics of one learner on one split, JSON-able."""
  dead, always = dead_and_always_on(codes)
  out = {'variance_explained': variance_explained(h, hhat),
         'normalized_mse': normalized_mse(h, hhat), 'l0': l0(codes),
         'num_units': int(np.shape(codes)[1]), 'dead_fraction': dead,
         'always_on_fraction': always,
         'frequency_histogram': frequency_histogram(activation_frequency(codes), num_bins),
         'accuracy_mean_ablation': float(acc_mean),
         'accuracy_recovered': accuracy_recovered(acc_h, acc_hhat, acc_mean)}
  if decisive is not None:
    out['num_decisive_units'] = num_decisive_units(decisive)
  return out
