"""Calibration of the verdict's intervals under a null: predictions independent of every
attribute, so any attribute flagged is a false positive. Prints one JSON object per setting:
the family-wise rate (share of replications flagging at least one attribute; promised
≤ 1 − level), with its binomial standard error.

--fallback: the verdict as the classifier stage ships it (reporting/heldout.py): every row
the test split leaves 'cannot tell' (confounded, too wide or constant) is looked at again on
the test and held-out images pooled, at half the α; a replication counts if either look
flags any attribute. The held-out split has the test split's size and
design (its pair's correlation `held_pair`), and predictions independent of it too.

Vectorised: the attributes of a setting are drawn once per design seed and every
replication's predictions are one more outcome column of the same least-squares fit
(association.effects), so a few thousand replications take seconds.

Usage:
  python benchmarks/verdict_calibration.py [--reps 2000] [--designs 5] [--fallback]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsei_jax.reporting import association, heldout  # noqa: E402  pylint: disable=g-import-not-at-top

# name: (N, number of attributes, positives of the rare first attribute or None, correlation
# of the pair (1, 2) or None, P(ŷ = 1))
SETTINGS = {
    'N12_one_attribute_p0.5': (12, 1, None, None, 0.5),
    'N12_one_attribute_p0.2': (12, 1, None, None, 0.2),
    'N12_three_attributes': (12, 3, None, None, 0.5),
    'N200_rare8_p0.1': (200, 6, 8, None, 0.1),
    'N200_rare8_p0.3': (200, 6, 8, None, 0.3),
    'N200_rare8_pair0.6': (200, 6, 8, 0.6, 0.5),
    'N2048_rare8_p0.05': (2048, 6, 8, None, 0.05),
    'N2048_rare8_pair0.9': (2048, 6, 8, 0.9, 0.3),
}
# Settings only the fallback adds: a pair the test split confounds (r = 1) that the held-out
# split separates (r = 0.6), so that confounded rows take the pooled look too.
FALLBACK_SETTINGS = {
    'N200_rare8_pair1_held0.6': (200, 6, 8, 1.0, 0.3, 0.6),
    'N2048_rare8_pair1_held0.6': (2048, 6, 8, 1.0, 0.3, 0.6),
}


def design(rng: np.random.Generator, n: int, num_a: int, rare: int | None,
           pair_r: float | None) -> np.ndarray:
  """float {0, 1} [n, num_a]: fair coins; the first has exactly `rare` positives; columns
  1 and 2 agree with probability (1 + pair_r) / 2 (correlation ≈ pair_r)."""
  x = (rng.random((n, num_a)) < 0.5).astype(np.float64)
  if num_a == 1 and n % 2 == 0:             # a balanced single attribute (6 / 6 at N = 12)
    x[:, 0] = rng.permutation(np.arange(n) < n // 2)
  if rare is not None:
    x[:, 0] = rng.permutation(np.arange(n) < rare)
  if pair_r is not None:
    agree = rng.random(n) < (1 + pair_r) / 2
    x[:, 2] = np.where(agree, x[:, 1], 1 - x[:, 1])
  return x


def family_rate(x: np.ndarray, p: float, reps: int, rng: np.random.Generator, *,
                level: float = 0.95, min_effect: float = 0.0) -> tuple[int, int]:
  """(replications flagging ≥ 1 attribute, replications) for predictions ~ Bernoulli(p)
  drawn independently of x [N, A], as prediction_association flags (two classes)."""
  y = (rng.random((len(x), reps)) < p).astype(np.float64)
  varies = x.std(0) > 0
  fit = association.effects(y, x[:, varies])
  q = association.t_quantile(1 - (1 - level) / (2 * x.shape[1]), fit['df'])   # [A, R]
  e, s = fit['effect'], fit['se']
  flagged = (np.abs(e) - q * s > 0) & (np.abs(e) >= min_effect)
  return int(flagged.any(0).sum()), reps


def looks(x: np.ndarray, y: np.ndarray, level: float, min_effect: float,
          max_hidden: float) -> dict:
  """One look of prediction_association (two classes) at x [N, A], vectorised over the
  outcome columns y [N, R]: {'flagged', 'open' ('cannot tell'), 'confounded' (open because
  of a correlated attribute, or not identifiable)}, each bool [A, R]; constant columns are
  open and not confounded."""
  num_a, reps = x.shape[1], y.shape[1]
  out = {k: np.zeros((num_a, reps), bool) for k in ('flagged', 'open', 'confounded')}
  varies = x.std(0) > 0 if len(x) else np.zeros(num_a, bool)
  out['open'][~varies] = True
  cols = np.nonzero(varies)[0]
  if not len(cols):
    return out
  fit = association.effects(y, x[:, cols])
  q = association.t_quantile(1 - (1 - level) / (2 * num_a), fit['df'])
  e, s = fit['effect'], fit['se']
  lo, hi = e - q * s, e + q * s
  flagged = ((lo > 0) | (hi < 0)) & (np.abs(e) >= min_effect)
  small = (lo > -max_hidden) & (hi < max_hidden)
  vif = len(x) * x[:, cols].var(0) / np.maximum(fit['residual_ss'], 1e-300)
  partner = len(cols) > 1
  bad = ~fit['identifiable'] | ((vif > 2) & partner)
  out['flagged'][cols] = flagged
  out['open'][cols] = ~flagged & ~small
  out['confounded'][cols] = out['open'][cols] & bad[:, None]
  return out


def fallback_flags(x: np.ndarray, y: np.ndarray, xh: np.ndarray, yh: np.ndarray, *,
                   level: float = 0.95, min_effect: float = 0.0, max_hidden: float = 0.25
                   ) -> np.ndarray:
  """bool [R]: the replications (columns of y [N, R] and yh [M, R]) in which the shipped
  verdict (heldout.prediction_association) flags some attribute: the test split's look,
  then the test and held-out images pooled for every row it leaves open (at
  heldout.pooled_level)."""
  t = looks(x, y, level, min_effect, max_hidden)
  p = looks(np.concatenate([x, xh]), np.concatenate([y, yh]), heldout.pooled_level(level),
            min_effect, max_hidden)
  return (t['flagged'] | (t['open'] & p['flagged'])).any(0)


def run(reps: int, designs: int, seed: int = 0, settings=SETTINGS,
        fallback: bool = False) -> dict:
  """{setting: family-wise rate, its s.e., …}; fallback: the shipped verdict with its
  held-out looks (fallback_flags), over SETTINGS and FALLBACK_SETTINGS."""
  out = {}
  if fallback:
    settings = {**settings, **FALLBACK_SETTINGS}
  for k, (name, (n, num_a, rare, pair, p, *held_pair)) in enumerate(settings.items()):
    rng = np.random.default_rng([seed, k])
    hits = total = 0
    for _ in range(designs):
      x = design(rng, n, num_a, rare, pair)
      if fallback:
        xh = design(rng, n, num_a, rare, held_pair[0] if held_pair else pair)
        y = (rng.random((n, reps)) < p).astype(np.float64)
        yh = (rng.random((n, reps)) < p).astype(np.float64)
        h, t = int(fallback_flags(x, y, xh, yh).sum()), reps
      else:
        h, t = family_rate(x, p, reps, rng)
      hits, total = hits + h, total + t
    rate = hits / total
    out[name] = {'family_wise_rate': rate, 'se': float(np.sqrt(rate * (1 - rate) / total)),
                 'replications': total, 'N': n, 'attributes': num_a, 'p': p,
                 'fallback': fallback}
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--reps', type=int, default=2000, help='replications per design')
  ap.add_argument('--designs', type=int, default=5, help='attribute draws per setting')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--fallback', action='store_true',
                  help='the shipped verdict with its held-out looks (reporting/heldout.py)')
  args = ap.parse_args(argv)
  for name, v in run(args.reps, args.designs, args.seed, fallback=args.fallback).items():
    print(json.dumps({'setting': name, **v}))


if __name__ == '__main__':
  main()
