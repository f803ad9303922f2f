"""Interventions on concept codes: z' = z XOR m for boolean codes (docs/method.md §5), and
the same switch for real-valued codes (ablate a unit / clamp it on). The one intervention API:
the pipeline, `Run.intervene` and the metrics all use it."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _check_codes(z: Array, what: str) -> None:
  if z.ndim != 2:
    raise ValueError(f'{what}: codes z must be [B, K] (a batch of K-bit codes), got shape '
                     f'{tuple(z.shape)}; reshape to [-1, K] first')


def intervene(code: Array, mask: Array, on_value: Array | float = 1.0) -> Array:
  """Switches the masked units of a code, in its dtype: on (> 0) → 0, off → on_value.

  code [B, K] (or one code [K], e.g. under vmap); mask [K] (one for all) or the code's
  shape, nonzero = switch; on_value scalar or [K]. For boolean codes z ∈ {0, 1} and
  on_value 1 this is the paper's z XOR m (docs/method.md §5); for a sparse autoencoder's or
  NMF's real-valued code it is "ablate a latent / clamp it to `on_value`" (usually a high
  quantile of its activations, `on_values`).
  """
  mask = jnp.asarray(mask)
  if mask.ndim > code.ndim or mask.shape != code.shape[code.ndim - mask.ndim:]:
    raise ValueError(f'intervene: mask of shape {tuple(mask.shape)} does not fit codes of '
                     f'shape {tuple(code.shape)}; expected [K] or the codes\' own shape')
  on = jnp.broadcast_to(jnp.asarray(on_value, code.dtype), code.shape[-1:])
  switched = jnp.where(code > 0, jnp.zeros((), code.dtype), on)
  return jnp.where(mask.astype(bool), switched, code)


def flip_all_mask(num_bits: int) -> Array:
  """Mask [K] of ones: intervene(z, flip_all_mask(K)) == 1 − z."""
  return jnp.ones((num_bits,), jnp.float32)


def single_bit_masks(num_bits: int) -> Array:
  """Masks [K, K]; row i flips bit i only."""
  return jnp.eye(num_bits, dtype=jnp.float32)


def bit_set_mask(num_bits: int, bits) -> Array:
  """Mask [K] flipping the chosen bit indices."""
  return jnp.zeros((num_bits,), jnp.float32).at[jnp.asarray(bits)].set(1.0)


def decisive_units(code: Array, decode: Callable[[Array], Array],
                   head: Callable[[Array], Array], on_value: Array | float = 1.0) -> Array:
  """Which single-unit interventions change the head's prediction, per sample.

  Args:
    code: codes [B, K] (the DVAE's bits in {0, 1}, or a real-valued code).
    decode: codes [N, K] → embeddings [N, d] (the concept learner's decoder, eval mode).
    head: embeddings [N, d] → logits [N, C] (c2, eval mode).
    on_value: what a switched-on unit takes (`intervene`).

  Returns:
    bool [B, K]: entry (b, i) is True iff argmax head(decode(code_b with unit i switched))
    differs from argmax head(decode(code_b)).

  Under jax.jit the two callables are static: `jax.jit(decisive_bits, static_argnums=(1, 2))`
  (pass the same function objects to reuse the compilation), or close over them.
  """
  _check_codes(code, 'decisive_bits')
  base = jnp.argmax(head(decode(code)), axis=-1)                        # [B]
  masks = single_bit_masks(code.shape[-1])                              # [K, K]
  preds = jax.vmap(lambda m: jnp.argmax(head(decode(intervene(code, m, on_value))), -1))(masks)
  return (preds != base[None, :]).T                                     # [B, K]


decisive_bits = decisive_units  # the paper's name, for boolean codes


def on_values(codes: np.ndarray, quantile: float = 0.9) -> np.ndarray:
  """Per unit, the `quantile` of its nonzero activations over codes [N, K] → [K].

  A unit never active gets the same quantile over all nonzero activations (so switching it
  on is a typical-size intervention); 1.0 if the code is all zero.
  """
  codes = np.asarray(codes, np.float64)
  nz = codes[codes > 0]
  fallback = float(np.quantile(nz, quantile)) if nz.size else 1.0
  out = np.full(codes.shape[1], fallback)
  for k in range(codes.shape[1]):  # K is small; NumPy's quantile has no masked axis form
    col = codes[:, k][codes[:, k] > 0]
    if col.size:
      out[k] = np.quantile(col, quantile)
  return out.astype(np.float32)


def intervened(decode: Callable[[Array], Array], h: Array, code: Array, new_code: Array,
               add_error: bool = False) -> Array:
  """ĥ' = decode(new_code) [B, d]; with add_error, plus the reconstruction error h − decode(code)
  (SAE steering: the intervention changes only what the code explains)."""
  out = decode(new_code)
  return out + (h - decode(code)) if add_error else out
