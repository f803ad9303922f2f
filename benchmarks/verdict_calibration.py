"""Calibration of the verdict's intervals under a null: predictions independent of every
attribute, so any attribute flagged is a false positive. Prints one JSON object per setting:
the family-wise rate (share of replications flagging at least one attribute; promised
≤ 1 − level), with its binomial standard error.

Vectorised: the attributes of a setting are drawn once per design seed and every
replication's predictions are one more outcome column of the same least-squares fit
(association.effects), so a few thousand replications take seconds.

Usage:
  python benchmarks/verdict_calibration.py [--reps 2000] [--designs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lsei_jax.reporting import association  # noqa: E402  pylint: disable=g-import-not-at-top

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


def run(reps: int, designs: int, seed: int = 0, settings=SETTINGS) -> dict:
  out = {}
  for k, (name, (n, num_a, rare, pair, p)) in enumerate(settings.items()):
    rng = np.random.default_rng([seed, k])
    hits = total = 0
    for _ in range(designs):
      h, t = family_rate(design(rng, n, num_a, rare, pair), p, reps, rng)
      hits, total = hits + h, total + t
    rate = hits / total
    out[name] = {'family_wise_rate': rate, 'se': float(np.sqrt(rate * (1 - rate) / total)),
                 'replications': total, 'N': n, 'attributes': num_a, 'p': p}
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--reps', type=int, default=2000, help='replications per design')
  ap.add_argument('--designs', type=int, default=5, help='attribute draws per setting')
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args(argv)
  for name, v in run(args.reps, args.designs, args.seed).items():
    print(json.dumps({'setting': name, **v}))


if __name__ == '__main__':
  main()
