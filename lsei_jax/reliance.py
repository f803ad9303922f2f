"""Ground truth of reliance: how much a classifier's decision depends on one attribute.

Given images and their counterfactuals (the same images with one attribute changed and
nothing else; shapes data renders them, a researcher can pass a renderer of their own),
reliance on that attribute is the fraction of predictions that change, and the mean drop of
the originally predicted class's probability. The classifier is any function
`classify(images [B, ...]) -> logits [B, C]`, C ≥ 2; no model type is assumed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _logits(classify: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
  out = [np.asarray(classify(images[i:i + batch_size]), np.float64)
         for i in range(0, len(images), batch_size)]
  logits = np.concatenate(out) if out else np.zeros((0, 2))
  if logits.ndim != 2 or logits.shape[0] != len(images):
    raise ValueError(f'classify must map images [B, ...] to logits [B, C]; got shape '
                     f'{logits.shape} for {len(images)} images')
  return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reliance(classify: Callable, images: np.ndarray, flipped_images: np.ndarray, *,
             batch_size: int = 256, base_logits: np.ndarray | None = None) -> dict:
  """How much the decision depends on what differs between images and flipped_images.

  Args:
    classify: images [B, ...] → logits [B, C].
    images, flipped_images: [N, ...], row i of one the counterfactual of row i of the other.
    base_logits: classify(images) [N, C] if already computed (it is the same for every
      attribute).

  Returns:
    flip_rate: fraction of the N predictions that change;
    mean_prob_change: mean over the N of p(ŷ | x) − p(ŷ | x'), ŷ the prediction on x;
    num_examples: N.
  """
  if images.shape != flipped_images.shape:
    raise ValueError(f'images {images.shape} and their counterfactuals '
                     f'{flipped_images.shape} must have the same shape')
  before = _logits(classify, images, batch_size) if base_logits is None else \
      np.asarray(base_logits, np.float64)
  after = _logits(classify, flipped_images, batch_size)
  pred = before.argmax(-1)
  rows = np.arange(len(pred))
  drop = _softmax(before)[rows, pred] - _softmax(after)[rows, pred]
  return {'flip_rate': float(np.mean(after.argmax(-1) != pred)) if len(pred) else 0.0,
          'mean_prob_change': float(drop.mean()) if len(pred) else 0.0,
          'num_examples': int(len(pred))}


def reliance_by_attribute(classify: Callable, images: np.ndarray,
                          render_flipped: Callable[[str], np.ndarray],
                          names: Sequence[str], *, batch_size: int = 256) -> dict[str, dict]:
  """{name: reliance(classify, images, render_flipped(name))} for every attribute name.

  render_flipped(name) returns the counterfactuals [N, ...] of `images` with attribute
  `name` flipped (e.g. data.counterfactual_renderer(config.data, 'test')).
  """
  base = _logits(classify, images, batch_size)
  return {n: reliance(classify, images, render_flipped(n), batch_size=batch_size,
                      base_logits=base) for n in names}


def relied_on(values: dict[str, float], independent: Sequence[str], *, margin: float
              ) -> dict[str, bool]:
  """Attributes whose reliance exceeds the largest reliance among `independent` ones (those
  never correlated with the label in training: a classifier has no reason to use them, so
  their reliance measures how much a flip moves borderline decisions by itself) by `margin`.

  Which attribute is relied on is a property of the classifier; this threshold is what the
  truthfulness benchmark scores methods against.
  """
  floor = max((values[n] for n in independent), default=0.0)
  return {n: bool(v > floor + margin) for n, v in values.items()}


def flip_mask(classify: Callable, images: np.ndarray,
              render_flipped: Callable[[str], np.ndarray], names: Sequence[str], *,
              batch_size: int = 256) -> np.ndarray:
  """bool [N, A]: entry (i, a) True where the prediction on render_flipped(names[a])[i]
  differs from the one on images[i]: per image, whether the decision depends on attribute a
  (reliance()'s flip_rate is a column's mean). render_flipped as in reliance_by_attribute."""
  pred = _logits(classify, images, batch_size).argmax(-1)
  cols = []
  for n in names:
    flipped = np.asarray(render_flipped(n))
    if flipped.shape != np.shape(images):
      raise ValueError(f'the counterfactuals of {n!r} {flipped.shape} must have the shape of '
                       f'the images {np.shape(images)}')
    cols.append(_logits(classify, flipped, batch_size).argmax(-1) != pred)
  return np.stack(cols, -1) if cols else np.zeros((len(pred), 0), bool)
