"""Interventions on boolean codes: z' = z XOR m (docs/method.md §5)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_codes(z: Array, what: str) -> None:
  if z.ndim != 2:
    raise ValueError(f'{what}: codes z must be [B, K] (a batch of K-bit codes), got shape '
                     f'{tuple(z.shape)}; reshape to [-1, K] first')


def intervene(z: Array, mask: Array) -> Array:
  """z XOR mask, in z's dtype. z [B, K] (or one code [K], e.g. under vmap) in {0,1};
  mask [K] (one for all) or [B, K]."""
  mask = jnp.asarray(mask)
  if mask.ndim > z.ndim or mask.shape != z.shape[z.ndim - mask.ndim:]:
    raise ValueError(f'intervene: mask of shape {tuple(mask.shape)} does not fit codes of '
                     f'shape {tuple(z.shape)}; expected [K] or the codes\' own shape')
  flipped = jnp.logical_xor(z.astype(bool), jnp.asarray(mask).astype(bool))
  return flipped.astype(z.dtype)


def flip_all_mask(num_bits: int) -> Array:
  """Mask [K] of ones: intervene(z, flip_all_mask(K)) == 1 − z."""
  return jnp.ones((num_bits,), jnp.float32)


def single_bit_masks(num_bits: int) -> Array:
  """Masks [K, K]; row i flips bit i only."""
  return jnp.eye(num_bits, dtype=jnp.float32)


def bit_set_mask(num_bits: int, bits) -> Array:
  """Mask [K] flipping the chosen bit indices."""
  return jnp.zeros((num_bits,), jnp.float32).at[jnp.asarray(bits)].set(1.0)


def decisive_bits(z: Array, decode: Callable[[Array], Array],
                  head: Callable[[Array], Array]) -> Array:
  """Which single-bit flips change the head's prediction, per sample.

  Args:
    z: codes [B, K] in {0, 1}.
    decode: codes [N, K] → embeddings [N, d] (the DVAE decoder, eval mode).
    head: embeddings [N, d] → logits [N, C] (c2, eval mode).

  Returns:
    bool [B, K]: entry (b, i) is True iff argmax head(decode(z_b with bit i flipped))
    differs from argmax head(decode(z_b)).

  Under jax.jit the two callables are static: `jax.jit(decisive_bits, static_argnums=(1, 2))`
  (pass the same function objects to reuse the compilation), or close over them.
  """
  _check_codes(z, 'decisive_bits')
  base = jnp.argmax(head(decode(z)), axis=-1)                           # [B]
  masks = single_bit_masks(z.shape[-1])                                 # [K, K]
  preds = jax.vmap(lambda m: jnp.argmax(head(decode(intervene(z, m))), -1))(masks)
  return (preds != base[None, :]).T                                     # [B, K]
