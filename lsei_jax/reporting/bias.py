"""Quantitative reading of interventions: per-bit effects and the attribute bias report.

Pure NumPy on per-example arrays (the expensive model passes happen elsewhere), so every
number here can be recomputed from the arrays saved by eval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# The verdict lives in association.py; bias.prediction_association is its old address.
from lsei_jax.reporting.association import prediction_association  # noqa: F401  pylint: disable=unused-import


def per_bit_summary(decisive: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
  """Summary of single-bit interventions.

  Args:
    decisive: bool [N, K], True where flipping bit k alone changes the prediction.
    pred: int [N], the prediction c2(ĥ) before intervention.

  Returns:
    per_bit_change [K]: fraction of samples whose prediction flips with bit k alone;
    single_bit_change: fraction of samples with at least one decisive bit;
    per_class [C][K]: per_bit_change among the samples predicted as each class.
  """
  decisive = np.asarray(decisive, bool)
  per_class = [decisive[pred == c].mean(0) if np.any(pred == c) else np.zeros(decisive.shape[1])
               for c in range(num_classes)]
  return {'per_bit_change': decisive.mean(0).tolist(),
          'single_bit_change': float(decisive.any(1).mean()),
          'per_class': [p.tolist() for p in per_class]}


def bootstrap_mean_ci(values: np.ndarray, *, num_samples: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean and percentile-bootstrap interval over axis 0 of values [N, …] → 3 × […]."""
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, (num_samples, n))
  means = values[idx].mean(1)                                   # [num_samples, …]
  alpha = (1 - level) / 2
  return values.mean(0), np.quantile(means, alpha, 0), np.quantile(means, 1 - alpha, 0)


def bias_report(p_before: np.ndarray, p_after: np.ndarray, pred: np.ndarray,
                names: Sequence[str], task: str, *, num_bootstrap: int = 1000,
                level: float = 0.95, seed: int = 0) -> list[dict]:
  """How each attribute moves when the classifier's concepts are flipped.

  Args:
    p_before, p_after: probe probabilities [N, A] of every attribute on g(ĥ) and g(ĥ').
    pred: int [N] in {0, 1}: the class predicted from ĥ before the intervention.
    names: the A attribute names; task: the one the classifier was trained on.

  Returns:
    One entry per attribute, sorted by |shift|:
    shift = mean over samples of (p_after − p_before)·s, with s = +1 for samples predicted
    class 0 (intervention towards class 1) and −1 for class 1, so an attribute that the
    classifier ties to class 1 has a positive shift in both directions; a bootstrap
    interval [ci_low, ci_high]; the mean unsigned shift within each predicted class
    (`shift_from_class`: the paper's directions, e.g. smiling → not smiling); is_task.
  """
  classes = np.unique(np.asarray(pred))
  if np.any((classes != 0) & (classes != 1)):
    raise ValueError(f'bias_report signs shifts towards "the other class" and needs 2 classes; '
                     f'pred has classes {classes.tolist()}')
  delta = np.asarray(p_after, np.float64) - np.asarray(p_before, np.float64)   # [N, A]
  direction = np.where(np.asarray(pred) == 0, 1.0, -1.0)[:, None]
  mean, lo, hi = bootstrap_mean_ci(delta * direction, num_samples=num_bootstrap, level=level,
                                   seed=seed)
  rows = []
  for a, name in enumerate(names):
    by_class = {str(c): float(delta[pred == c, a].mean()) if np.any(pred == c) else None
                for c in (0, 1)}
    rows.append({'attribute': name, 'shift': float(mean[a]), 'ci_low': float(lo[a]),
                 'ci_high': float(hi[a]), 'is_task': is_task_attribute(name, task),
                 'shift_from_class': by_class})
  return sorted(rows, key=lambda r: -abs(r['shift']))


def is_task_attribute(name: str, task: str) -> bool:
  """Whether attribute `name` is (part of) the task: the task itself, or one of the
  attributes a compound task joins with '+' (e.g. 'shape+color', data.shapes)."""
  return name == task or name in task.split('+')


def top_candidate(report: list[dict]) -> dict | None:
  """The non-task attribute with the largest |shift| (the likeliest bias)."""
  return next((r for r in report if not r['is_task']), None)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation of two vectors (average ranks for ties)."""
  ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denom = np.sqrt((ra**2).sum() * (rb**2).sum())
  return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=float)
  for v in np.unique(x):          # ties share their average rank
    tie = x == v
    ranks[tie] = ranks[tie].mean()
  return ranks


def sanity_summary(trained: list[dict], randomized: list[dict],
                   threshold: float = 0.5, min_shift: float = 0.01) -> dict:
  """Compares the explainer's views (reliance_report rows) of the trained and the randomised
  classifier, each with its own DVAE and explainer (Adebayo et al.'s model randomisation).

  rank_correlation: Spearman correlation of |shift| per attribute across the two reports.
  The explanation is flagged as not depending on the model when that correlation exceeds
  `threshold` and both reports name the same top candidate bias, counting the randomised
  report's top candidate only when its interval excludes zero and |shift| ≥ min_shift: a
  random classifier whose decisions no intervention moves has shifts that are all ≈ 0
  (e.g. 1e-5, with equally tiny intervals), ranked by float noise.
  """
  names = [r['attribute'] for r in trained]
  rand = {r['attribute']: r for r in randomized}
  a = np.array([abs(r['shift']) for r in trained])
  b = np.array([abs(rand[n]['shift']) for n in names])
  rho = spearman(a, b)
  top_t, top_r = top_candidate(trained), top_candidate(randomized)
  if top_r is not None and (abs(top_r['shift']) < min_shift
                            or top_r['ci_low'] <= 0 <= top_r['ci_high']):
    top_r = None
  same_top = bool(top_t and top_r and top_t['attribute'] == top_r['attribute'])
  warn = bool(rho > threshold and same_top)
  return {'rank_correlation': rho, 'top_trained': top_t and top_t['attribute'],
          'top_randomized': top_r and top_r['attribute'], 'same_top': same_top,
          'warning': ('the explanation does not depend on the trained model: the randomised '
                      'classifier gives the same ranking') if warn else None,
          'randomized_report': randomized}


def aggregate_seeds(results: Sequence[dict], keys: Sequence[str]) -> dict:
  """Mean ± std (ddof 1) of each key over several runs' metrics → {key: {mean, std, n, values}}."""
  out = {}
  for k in keys:
    vals = [r[k] for r in results if r.get(k) is not None]
    if vals:
      arr = np.asarray(vals, float)
      out[k] = {'mean': float(arr.mean()), 'std': float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
                'n': len(arr), 'values': [float(v) for v in arr]}
  return out


# ------------------------------------------------------------------ what the classifier relies on
def directed_shifts(p_before: np.ndarray, p_after: np.ndarray, pred_before: np.ndarray,
                    pred_after: np.ndarray, num_classes: int) -> dict:
  """How each attribute moves as decisions move towards each class.

  Per class k and attribute a, with Δ = p_after − p_before:
    to_k   = mean of Δ[:, a] over the samples whose prediction moved to k,
    from_k = mean of Δ[:, a] over those whose prediction moved away from k,
    shift[k, a] = ½ (to_k − from_k).
  The two directions get equal weight, so a change the intervention makes to every sample
  alike (say, every g(ĥ') drawn lighter) cancels whatever the mix of directions; only an
  attribute that moves with the decision remains. Positive: the attribute rises as decisions
  move to k and falls as they leave it (two classes: k = 1 is the bias report's sign).
  Samples whose prediction did not change count in neither mean.

  Returns {'mean' [C, A], 'se' [C, A] (standard error; inf where a direction has fewer than
  2 samples: a one-way move cannot be told from a uniform change), 'num_changed',
  'num_to' [C], 'num_from' [C]}.
  """
  delta = np.asarray(p_after, np.float64) - np.asarray(p_before, np.float64)
  pb, pa = np.asarray(pred_before), np.asarray(pred_after)
  changed = pb != pa
  num_a = delta.shape[-1]
  mean = np.zeros((num_classes, num_a))
  se = np.full((num_classes, num_a), np.inf)
  n_to, n_from = np.zeros(num_classes, int), np.zeros(num_classes, int)

  def stats(rows):
    if len(rows) < 2:
      return (rows.mean(0) if len(rows) else np.zeros(num_a)), np.full(num_a, np.inf)
    return rows.mean(0), rows.std(0, ddof=1) / np.sqrt(len(rows))

  for k in range(num_classes):
    to, away = changed & (pa == k), changed & (pb == k)
    n_to[k], n_from[k] = to.sum(), away.sum()
    (m_to, s_to), (m_from, s_from) = stats(delta[to]), stats(delta[away])
    mean[k] = 0.5 * (m_to - m_from)
    se[k] = 0.5 * np.sqrt(s_to**2 + s_from**2)
  return {'mean': mean, 'se': se, 'num_changed': int(changed.sum()),
          'num_to': n_to.tolist(), 'num_from': n_from.tolist()}


def _normal_quantile(p: float) -> float:
  """Φ⁻¹(p) by bisection on erf (no SciPy)."""
  from math import erf, sqrt  # pylint: disable=g-import-not-at-top
  lo, hi = -40.0, 40.0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if 0.5 * (1 + erf(mid / sqrt(2))) < p else (lo, mid)
  return (lo + hi) / 2


def reliance_report(p_before: np.ndarray, p_after: np.ndarray, pred_before: np.ndarray,
                    pred_after: np.ndarray, names: Sequence[str], task: str,
                    num_classes: int, probe_accuracy: Sequence[float], *,
                    min_probe_accuracy: float = 0.75, min_shift: float = 0.05,
                    level: float = 0.95) -> list[dict]:
  """Which attributes the classifier's decision moves, with what can and cannot be read.

  Args:
    p_before, p_after: probe probabilities [N, A] on g(ĥ) and on g(ĥ') after an intervention.
    pred_before, pred_after: int [N], c2's prediction before / after it.
    probe_accuracy: [A] accuracy of each probe on real images of an unbiased split. A probe
      that cannot read its attribute there (e.g. one that learned it through a correlated
      attribute) is not used: its attribute is 'not readable', never flagged.
    min_probe_accuracy: that bar (chance is about 0.5 for a balanced binary attribute).
    min_shift: the smallest |shift| (in probe probability) reported as relied on.
    level: family-wise confidence: intervals are Bonferroni-corrected over the attributes
      and the classes they are tested against.

  Returns one row per attribute, sorted by |shift| (unreadable ones last): shift, the class
  it is signed towards (`toward_class`; with 2 classes always 1, so the sign says which
  class the attribute goes with; with C > 2 the class of the largest |shift|), a corrected
  normal interval [ci_low, ci_high], readable, flagged (readable, interval excluding 0 and
  |shift| ≥ min_shift), is_task, num_changed (samples whose prediction changed).
  """
  return report_rows(directed_shifts(p_before, p_after, pred_before, pred_after, num_classes),
                     names, task, num_classes, probe_accuracy,
                     min_probe_accuracy=min_probe_accuracy, min_shift=min_shift, level=level)


def report_rows(s: dict, names: Sequence[str], task: str, num_classes: int,
                probe_accuracy: Sequence[float], *, min_probe_accuracy: float = 0.75,
                min_shift: float = 0.05, level: float = 0.95) -> list[dict]:
  """reliance_report's rows from directed_shifts' output `s` (see reliance_report)."""
  s = dict(s, mean=np.asarray(s['mean'], np.float64), se=np.asarray(s['se'], np.float64))
  classes = [1] if num_classes == 2 else list(range(num_classes))
  tests = len(names) * len(classes)
  z = _normal_quantile(1 - (1 - level) / (2 * tests))
  rows = []
  for a, name in enumerate(names):
    k = max(classes, key=lambda c: abs(s['mean'][c, a]))
    mean, se = float(s['mean'][k, a]), float(s['se'][k, a])
    readable = bool(probe_accuracy[a] >= min_probe_accuracy)
    lo, hi = mean - z * se, mean + z * se
    rows.append({'attribute': name, 'shift': mean, 'se': se, 'ci_low': lo, 'ci_high': hi,
                 'toward_class': int(k), 'readable': readable,
                 'probe_accuracy': float(probe_accuracy[a]),
                 'flagged': bool(readable and (lo > 0 or hi < 0) and abs(mean) >= min_shift),
                 'is_task': is_task_attribute(name, task), 'num_changed': s['num_changed']})
  return sorted(rows, key=lambda r: (not r['readable'], -abs(r['shift'])))


def label_association(labels: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                      num_classes: int) -> dict[str, dict]:
  """How much each attribute goes with the label in a split (a property of the data).

  {name: {'by_class': [P(a = 1 | y = k) for k], 'spread': max_k − min_k of those}}; with two
  classes, spread = |P(a | y = 1) − P(a | y = 0)| (0: independent, 1: the same as the label).
  """
  labels = np.asarray(labels)
  attributes = np.asarray(attributes, bool)
  out = {}
  for a, name in enumerate(names):
    by = [float(attributes[labels == k, a].mean()) if np.any(labels == k) else None
          for k in range(num_classes)]
    seen = [v for v in by if v is not None]
    out[name] = {'by_class': by, 'spread': float(max(seen) - min(seen)) if seen else 0.0}
  return out
