"""Importance weights that remove the label's correlation with each attribute.

The explainer g learns E[x | ĥ] and the attribute probes learn p(attribute | image) from the
training data; where that data ties an attribute to the label, both carry the tie into the
bias report (g fills the attribute in from the class, a probe reads one attribute through
another). Training them on examples drawn with these weights gives priors with no such tie.

The weights make the label independent of each attribute in turn (raking, see
balancing_weights); attributes never seen with some class (ρ = 1) cannot be balanced and
are left as they are.
"""
from __future__ import annotations

import zlib

import numpy as np

_STREAM = zlib.crc32(b'balanced batches')  # a named stream, apart from data.batch_indices'


def balancing_weights(labels: np.ndarray, attributes: np.ndarray, task_index: int | None, *,
                      max_weight: float = 20.0, iterations: int = 50) -> np.ndarray:
  """float64 [N] weights with mean 1 for labels int [N] and attributes bool [N, A].

  Raking (iterative proportional fitting): each pass rescales the weights so that the
  weighted joint of (label, attribute j) equals p(label)·p(a_j) for every non-task j in turn;
  it converges to weights under which the label is independent of every single attribute
  (pairwise), with the label's and each attribute's frequencies unchanged. Attributes with
  an empty (class, value) group (ρ = 1) cannot be balanced and are skipped.

  task_index: the column of `attributes` that is the label itself (skipped), or None.
  max_weight bounds one example's weight relative to the mean (rare groups are not allowed
  to dominate the batches); the bound is applied after the fitting.
  """
  labels = np.asarray(labels)
  attributes = np.asarray(attributes, bool)
  n = len(labels)
  if n == 0:
    return np.zeros(0)
  classes, y = np.unique(labels, return_inverse=True)
  p_y = np.bincount(y, minlength=len(classes)) / n
  columns = []
  for j in range(attributes.shape[1]):
    a = attributes[:, j].astype(int)
    joint = np.zeros((len(classes), 2))
    np.add.at(joint, (y, a), 1.0)
    if j != task_index and (joint > 0).all():
      columns.append((a, np.outer(p_y, joint.sum(0) / n)))
  w = np.ones(n)
  for _ in range(iterations if columns else 0):
    for a, target in columns:
      current = np.zeros_like(target)
      np.add.at(current, (y, a), w)
      w = w * (target / (current / w.sum()))[y, a]
  w /= w.mean()
  w = np.minimum(w, max_weight)
  return w / w.mean()


def weighted_batch_indices(weights: np.ndarray, global_batch: int, step: int, seed: int,
                           process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Indices [global_batch // process_count] of this process's share of batch `step`, drawn
  with replacement with probability ∝ weights; a pure function of its arguments."""
  p = np.asarray(weights, np.float64)
  p = p / p.sum()
  batch = np.random.default_rng([seed, _STREAM, step]).choice(len(p), global_batch, p=p)
  local = global_batch // process_count
  return batch[process_index * local:(process_index + 1) * local]
