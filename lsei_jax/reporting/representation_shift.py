"""An interventional estimator for what the test split cannot separate: a linear
counterfactual shift of the representation h = c1(x), fitted on the training split.

On the training split, h [N, d] is regressed on every attribute: h ≈ μ + Σ_a a·β_a, so β_a
is attribute a's direction with the other attributes held fixed (identifiable wherever the
*training* split separates a from the others, even if the test split confounds them). On a
test image, a is moved to its other value, h' = h + (1 − 2a)·β_a, and read through the
classifier's head c2; reliance = the share of test images whose prediction flips. It
assumes what the adjustment assumes (an additive, linear encoding of the attributes in h);
the association verdict needs no model of h, so this estimator only answers where the
test split cannot (combine).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

ESTIMATOR = 'representation shift (linear, fitted on the training split, read through c2)'


def directions(h: np.ndarray, attributes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(β [A, d], identifiable bool [A]): least-squares directions of h [N, d] on the binary
  attributes [N, A] (with a constant), and whether each attribute is separable from the
  others in this split (its column is not a linear function of theirs)."""
  x = np.asarray(attributes, np.float64)
  design = np.concatenate([np.ones((len(x), 1)), x], 1)
  beta = np.linalg.lstsq(design, np.asarray(h, np.float64), rcond=None)[0][1:]   # [A, d]
  ident = np.zeros(x.shape[1], bool)
  for a in range(x.shape[1]):
    others = np.delete(design, a + 1, 1)
    r = x[:, a] - others @ np.linalg.lstsq(others, x[:, a], rcond=None)[0]
    ident[a] = float(r @ r) > 1e-8 * max(len(x), 1)
  return beta, ident


def flip_rates(h: np.ndarray, attributes: np.ndarray, beta: np.ndarray,
               head: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """[A] share of test images [M] whose argmax head(h) changes when h [M, d] moves along
  β_a to the other value of a (attributes bool [M, A]; head: [M, d] → logits [M, C])."""
  h = np.asarray(h, np.float64)
  x = np.asarray(attributes, np.float64)
  pred = np.argmax(np.asarray(head(h)), -1)
  out = np.zeros(x.shape[1])
  for a in range(x.shape[1]):
    moved = h + (1 - 2 * x[:, a])[:, None] * beta[a][None]
    out[a] = float(np.mean(np.argmax(np.asarray(head(moved)), -1) != pred))
  return out


STRATIFIED = ('stratified representation shift (h moved by the difference of the training '
              'split\'s per-stratum means, the other attributes held fixed; read through c2)')


def stratified_flip_rates(h_train: np.ndarray, x_train: np.ndarray, h: np.ndarray,
                          x: np.ndarray, head: Callable[[np.ndarray], np.ndarray], *,
                          min_count: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """(rates [A], counts int [A]): per attribute a, the share of the test images whose
  argmax head(h) changes when h moves by Δ_s = mean h(a = 1, s) − mean h(a = 0, s), s the
  image's values of every other attribute, means over the training images [N, d] of that
  stratum (its sign: towards the other value of a); counts: the test images [M] whose
  stratum has ≥ min_count training images on both sides (the others are not moved and not
  counted). No model of how the attributes combine in h (the global shift's additivity);
  a stratum the training split never separates contributes nothing.
  """
  h_train, h = np.asarray(h_train, np.float64), np.asarray(h, np.float64)
  xt, x = np.asarray(x_train, bool), np.asarray(x, bool)
  pred = np.argmax(np.asarray(head(h)), -1)
  rates, counts = np.zeros(x.shape[1]), np.zeros(x.shape[1], np.int64)
  weights = 1 << np.arange(x.shape[1] - 1)
  for a in range(x.shape[1]):
    key_t = np.delete(xt, a, 1) @ weights               # stratum of the other attributes
    key = np.delete(x, a, 1) @ weights
    delta = np.zeros_like(h)
    ok = np.zeros(len(h), bool)
    for k in np.unique(key):
      on, off = (key_t == k) & xt[:, a], (key_t == k) & ~xt[:, a]
      if on.sum() < min_count or off.sum() < min_count:
        continue
      sel = key == k
      d = h_train[on].mean(0) - h_train[off].mean(0)
      delta[sel] = np.where(x[sel, a][:, None], -d[None], d[None])
      ok |= sel
    counts[a] = int(ok.sum())
    if counts[a]:
      moved = np.argmax(np.asarray(head(h[ok] + delta[ok])), -1)
      rates[a] = float(np.mean(moved != pred[ok]))
  return rates, counts


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
  """Wilson score interval of a proportion k / n (never zero-width for small n)."""
  if n == 0:
    return 0.0, 1.0
  p = k / n
  mid = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(max(mid - half, 0.0)), float(min(mid + half, 1.0))


def shift_verdicts(rates: np.ndarray, num_test, z: float, *, min_effect: float = 0.05,
                   max_hidden: float = 0.25) -> list[tuple[str, float, float]]:
  """[(verdict, ci_low, ci_high)] per attribute from the shift's flip rates (Wilson) over
  num_test images (an int, or one count per attribute)."""
  out = []
  for rate, n in zip(rates, np.broadcast_to(num_test, np.shape(rates))):
    lo, hi = wilson(int(round(rate * n)), int(n), z)
    out.append(('relied on' if lo >= min_effect else 'no evidence' if hi < max_hidden
                else 'cannot tell', lo, hi))
  return out


def combine(rows: list[dict], rates: np.ndarray, identifiable: np.ndarray,
            names: Sequence[str], num_test, num_train: int, *, level: float = 0.95,
            min_effect: float = 0.05, max_hidden: float = 0.25, estimator: str = ESTIMATOR,
            how: str = 'moved along its direction in h') -> list[dict]:
  """The association verdict's rows with every 'cannot tell' that a confounding attribute
  caused answered by the representation shift, where the training split separates the
  attribute (identifiable); flip rate interval: Wilson, Bonferroni over the attributes.

  Checked first on the same test split: on every attribute the association answered, the
  shift must give the same verdict (a shift that leaves the data's manifold can flip a
  head that no real change of the attribute flips: on the benchmark, a colour-only
  classifier flipped on 26% of images shifted along `size`). If it disagrees anywhere, or
  there is nothing to check it on, no row is changed; the rows say why. Each row names its
  estimator. num_test: the test images each rate is over (an int, or one per attribute:
  stratified_flip_rates' counts); estimator / how: the shift's name and what it did.
  """
  from lsei_jax.reporting.association import t_quantile  # pylint: disable=g-import-not-at-top
  z = t_quantile(1 - (1 - level) / (2 * len(names)), np.inf)
  index = {n: i for i, n in enumerate(names)}
  shift = shift_verdicts(rates, num_test, z, min_effect=min_effect, max_hidden=max_hidden)
  checked = [r['attribute'] for r in rows if r.get('verdict') in ('relied on', 'no evidence')]
  disagree = [n for n in checked if shift[index[n]][0] != next(
      r['verdict'] for r in rows if r['attribute'] == n)]
  wanted = [r for r in rows if r.get('verdict') == 'cannot tell' and r.get('confounded_by')
            and identifiable[index[r['attribute']]]]
  if not wanted:
    return rows
  if disagree or not checked:
    why = (f'; the representation shift was not used: it disagrees with the test split on '
           f'{", ".join(disagree)}' if disagree else
           '; the representation shift was not used: no attribute of the test split to check '
           'it on')
    return [dict(r, evidence=r.get('evidence', '') + why) if r in wanted else r for r in rows]
  out = []
  for r in rows:
    a = index[r['attribute']]
    if r not in wanted:
      out.append(r)
      continue
    verdict, lo, hi = shift[a]
    n = int(np.broadcast_to(num_test, np.shape(rates))[a])
    out.append(dict(r, verdict=verdict, flagged=verdict == 'relied on', shift=float(rates[a]),
                    ci_low=lo, ci_high=hi, estimator=estimator, evidence=(
                        f'flip rate {rates[a]:.3f} [{lo:.3f}, {hi:.3f}] of {n} test '
                        f'images {how} (fitted on {num_train} '
                        f'training images, which separate it; the same shift agrees with the '
                        f'test split on {", ".join(checked)}); the test split alone: '
                        f'{r.get("evidence", "cannot tell")}')))
  return out
