"""Factor sweeps (issue 26): a test image decoded while one attribute block of its factor
code z = T(h) moves and the rest of what it is stays its own.

For an image x with embedding h and autoencoder latent v = E(x), its residual
ν = τ(v | h) is what h does not see (conditional INN, `conditional`); for block a and
values t_1..t_S of that block,

  h'(t) = T⁻¹(z with block a set to t),   x'(t) = D(τ⁻¹(ν | h'(t))),

and c2(h'(t)) is the classifier's label of the moved embedding. At t = the image's own
block value h' = h (T's round trip) and x' = D(E(x)) (τ's round trip). Nothing is random:
ν is the image's own.

The maps are handed in as callables (jitted by the caller, standardisation inside them),
so this module holds the sweep's bookkeeping and nothing of the stages.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def block_values(means: np.ndarray, steps: int) -> np.ndarray:
  """[F, S, d_f]: S evenly spaced values from block f's class mean at attribute value 0 to
  that at 1 (means [F, 2, d_f], `factor.class_means`), both ends included."""
  means = np.asarray(means, np.float64)
  w = np.linspace(0.0, 1.0, steps)[None, :, None]
  return (means[:, :1] * (1 - w) + means[:, 1:] * w).astype(np.float32)


def set_blocks(z: np.ndarray, blocks: list[slice], values: np.ndarray) -> np.ndarray:
  """[B, A, S, D]: z [B, D] repeated, block a (columns blocks[a]) set to values[b, a, s]
  (values [B, A, S, d_f], or [A, S, d_f] the same for every row)."""
  z = np.asarray(z, np.float32)
  num_a, steps = len(blocks), np.shape(values)[-2]
  values = np.broadcast_to(values, (len(z), num_a, steps, np.shape(values)[-1]))
  out = np.broadcast_to(z[:, None, None], (len(z), num_a, steps, z.shape[1])).copy()
  for a, cols in enumerate(blocks):
    out[:, a, :, cols] = values[:, a]
  return out


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Images in [0, 1] → uint8 (round to nearest), as a decoded image is stored."""
  return np.round(np.clip(np.asarray(images), 0, 1) * 255).astype(np.uint8)


def factor_sweep(h: np.ndarray, v: np.ndarray, values: np.ndarray, blocks: list[slice], *,
                 encode_h: Callable, decode_z: Callable, residual: Callable,
                 invert: Callable, decode_v: Callable, head: Callable) -> dict:
  """The sweeps of B images over every block (module docstring).

  h [B, d] (the classifier's embedding), v [B, m] (E(x)); values [A, S, d_f] or
  [B, A, S, d_f]; blocks[a]: block a's columns of z. Callables on row batches:
  encode_h h → z = T(h), decode_z z → T⁻¹(z), residual (v, h) → τ(v | h),
  invert (ν, h) → τ⁻¹(ν | h), decode_v v → images in [0, 1] [n, H, W, 3], head h → logits.
  → {'h': h' [B, A, S, d], 'images': uint8 [B, A, S, H, W, 3], 'pred': c2(h') labels
  [B, A, S]}: one call of each map over all B·A·S rows."""
  h, v = np.asarray(h, np.float32), np.asarray(v, np.float32)
  b, num_a, steps = len(h), len(blocks), np.shape(values)[-2]
  n = b * num_a * steps
  z = np.asarray(encode_h(h))
  nu = np.asarray(residual(v, h))                                        # [B, m]
  zs = set_blocks(z, blocks, values).reshape(n, -1)
  h2 = np.asarray(decode_z(zs), np.float32)                              # [n, d]
  nu_rep = np.repeat(nu, num_a * steps, axis=0)                          # row-major as zs
  images = to_uint8(decode_v(np.asarray(invert(nu_rep, h2))))
  pred = np.argmax(np.asarray(head(h2)), -1)
  return {'h': h2.reshape(b, num_a, steps, -1),
          'images': images.reshape((b, num_a, steps) + images.shape[1:]),
          'pred': pred.reshape(b, num_a, steps)}


def endpoint_change(pred: np.ndarray) -> np.ndarray:
  """[A]: share of the B sweeps of block a whose last label differs from their first
  (pred [B, A, S]): how often moving block a from its value-0 class mean to its value-1
  one changes the label, the rest of the image kept."""
  pred = np.asarray(pred)
  return np.mean(pred[:, :, -1] != pred[:, :, 0], axis=0)
