"""Bias-control training splits (the paper's Smiling experiment), sampled from train.

A split keeps only two groups: a majority (e.g. smiling women) making up `fraction` of it
and a minority (non-smiling men) making up the rest, so the task label and the group
attribute agree perfectly and the classifier may use either. Sampling is a pure function
of (attributes, name, fraction, size, seed).
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from absl import logging

# name → (group attribute, its value in the majority). The majority has label 1
# (e.g. Smiling), the minority label 0 and the other group value.
CELEBA = {'female_majority': ('Male', False), 'male_majority': ('Male', True)}


def sample(attributes: np.ndarray, names: Sequence[str], task: str, name: str,
           fraction: float = 0.7, size: int = 0, seed: int = 0,
           splits: dict | None = None) -> tuple[np.ndarray, dict]:
  """Indices (sorted int64 [n]) of the bias split `name` of attributes bool [N, A], and its
  statistics. size 0 takes the largest split the groups allow."""
  splits = CELEBA if splits is None else splits
  if name not in splits:
    raise ValueError(f'unknown bias split {name!r}; known: {", ".join(splits)}')
  group, major_value = splits[name]
  for attr in (task, group):
    if attr not in names:
      raise ValueError(f'bias split {name!r} needs attribute {attr!r}, which this data '
                       f'lacks; known: {", ".join(names)}')
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'bias fraction must be in (0, 1), got {fraction}')
  label = attributes[:, list(names).index(task)]
  g = attributes[:, list(names).index(group)]
  major = np.flatnonzero(label & (g == major_value))
  minor = np.flatnonzero(~label & (g != major_value))
  largest = int(min(len(major) / fraction, len(minor) / (1 - fraction)))
  n = size or largest
  n_major = int(round(fraction * n))
  n_minor = n - n_major
  if n_major > len(major) or n_minor > len(minor) or n <= 0:
    raise ValueError(
        f'bias split {name!r} of {n} examples needs {n_major} with {task}=1, '
        f'{group}={int(major_value)} and {n_minor} with {task}=0, {group}={int(not major_value)}; '
        f'the train split has {len(major)} and {len(minor)} (largest possible size: '
        f'{largest}); lower config.data.bias_size')
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  idx = np.sort(np.concatenate([rng.choice(major, n_major, replace=False),
                                rng.choice(minor, n_minor, replace=False)]))
  stats = statistics(attributes[idx], names, task, group)
  stats.update(name=name, fraction=fraction, source_examples=int(len(attributes)))
  logging.info('bias split %s: %d examples, %s', name, len(idx),
               ', '.join(f'{k}={v}' for k, v in stats['groups'].items()))
  return idx, stats


def statistics(attributes: np.ndarray, names: Sequence[str], task: str, group: str) -> dict:
  """Counts of the four (task, group) cells and the rates of each attribute."""
  label = attributes[:, list(names).index(task)]
  g = attributes[:, list(names).index(group)]
  groups = {f'{task}={int(a)},{group}={int(b)}': int(np.sum((label == a) & (g == b)))
            for a in (1, 0) for b in (1, 0)}
  n = max(len(attributes), 1)
  return {'size': int(len(attributes)), 'groups': groups,
          'fractions': {k: v / n for k, v in groups.items()},
          f'{task}_rate': float(label.mean()) if len(label) else 0.0,
          f'{group}_rate': float(g.mean()) if len(g) else 0.0,
          'label_group_agreement': float(np.mean(label == g)) if len(g) else 0.0}
