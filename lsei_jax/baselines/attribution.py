"""Input attribution maps for a classifier: gradient, gradient × input, integrated
gradients, SmoothGrad, occlusion.

Every method is `fn(logit_fn, images [B, H, W, 3], target int [B], ...) → maps`, where
`logit_fn: images [B, H, W, 3] → logits [B, C]` treats rows independently (eval mode, no
batch statistics), so the gradient of the summed target logits is each row's own gradient.
Maps are [B, H, W, 3] except occlusion's [B, H, W] (one patch covers every channel).
Methods with an inner loop (steps, noise samples, patches) take `chunk_size`: that many
iterations run at once (lax.map with batch_size); the result does not depend on it.
"""
from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LogitFn = Callable[[Array], Array]


def target_logits(logit_fn: LogitFn, images: Array, target: Array) -> Array:
  """logit_fn(images)[b, target[b]] → [B]."""
  logits = logit_fn(images)
  return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1)[:, 0]


def _grad(logit_fn: LogitFn, images: Array, target: Array) -> Array:
  """∂ logit_target / ∂ image per row: [B, H, W, 3]."""
  return jax.grad(lambda x: jnp.sum(target_logits(logit_fn, x, target)))(images)


def _map(fn: Callable[[Array], Array], xs: Array, chunk_size: int | None) -> Array:
  """fn over the leading axis of xs, all at once (vmap) or chunk_size at a time."""
  if chunk_size is None or chunk_size >= xs.shape[0]:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


def vanilla_gradient(logit_fn: LogitFn, images: Array, target: Array) -> Array:
  """∂ logit_target / ∂ x (Simonyan et al. 2014): [B, H, W, 3]."""
  return _grad(logit_fn, images, target)


def gradient_x_input(logit_fn: LogitFn, images: Array, target: Array) -> Array:
  """x ⊙ ∂ logit_target / ∂ x (Shrikumar et al. 2016): [B, H, W, 3]."""
  return images * _grad(logit_fn, images, target)


def _baseline_like(baseline: float | Array, images: Array) -> Array:
  return jnp.broadcast_to(jnp.asarray(baseline, images.dtype), images.shape)


def integrated_gradients(logit_fn: LogitFn, images: Array, target: Array, *,
                         baseline: float | Array = 0.0, steps: int = 32,
                         rule: Literal['trapezoid', 'midpoint'] = 'trapezoid',
                         chunk_size: int | None = None) -> Array:
  """Integrated gradients (Sundararajan et al. 2017): [B, H, W, 3].

  (x − x₀) ⊙ ∫₀¹ ∇f(x₀ + α(x − x₀)) dα, the integral by the trapezoid rule on steps + 1
  points (default: exact at both ends, error O(1/steps²)) or the midpoint rule on `steps`
  points. baseline x₀: a scalar, [H, W, 3] or [B, H, W, 3] (default black image).
  Attributions sum to about f(x) − f(x₀); see `completeness_gap`.
  """
  if steps < 1:
    raise ValueError(f'steps must be ≥ 1, got {steps}')
  x0 = _baseline_like(baseline, images)
  if rule == 'trapezoid':
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full(steps + 1, 1.0 / steps).at[jnp.array([0, steps])].set(0.5 / steps)
  elif rule == 'midpoint':
    alphas = (jnp.arange(steps) + 0.5) / steps
    weights = jnp.full(steps, 1.0 / steps)
  else:
    raise ValueError(f"rule must be 'trapezoid' or 'midpoint', got {rule!r}")
  delta = images - x0

  def weighted_grad(aw: Array) -> Array:
    return aw[1] * _grad(logit_fn, x0 + aw[0] * delta, target)

  aw = jnp.stack([alphas, weights], axis=1).astype(images.dtype)       # [S, 2]
  return delta * jnp.sum(_map(weighted_grad, aw, chunk_size), axis=0)


def completeness_gap(logit_fn: LogitFn, images: Array, target: Array, attributions: Array,
                     baseline: float | Array = 0.0) -> tuple[Array, Array]:
  """(Σ attributions, f(x) − f(x₀)), both [B], for the completeness axiom of IG."""
  x0 = _baseline_like(baseline, images)
  total = jnp.sum(attributions.reshape(attributions.shape[0], -1), axis=1)
  return total, target_logits(logit_fn, images, target) - target_logits(logit_fn, x0, target)


def check_completeness(logit_fn: LogitFn, images: Array, target: Array, attributions: Array,
                       baseline: float | Array = 0.0, *, rtol: float = 1e-2,
                       atol: float = 1e-3) -> Array:
  """bool [B]: |Σ attributions − (f(x) − f(x₀))| ≤ atol + rtol·|f(x) − f(x₀)|."""
  total, diff = completeness_gap(logit_fn, images, target, attributions, baseline)
  return jnp.abs(total - diff) <= atol + rtol * jnp.abs(diff)


def smoothgrad(logit_fn: LogitFn, images: Array, target: Array, key: Array, *,
               num_samples: int = 16, noise_level: float = 0.15,
               value_range: tuple[float, float] | None = None,
               chunk_size: int | None = None) -> Array:
  """SmoothGrad (Smilkov et al. 2017): mean gradient at x + N(0, σ²): [B, H, W, 3].

  σ = noise_level · (max − min) of the input range: of each image's own values (the
  paper's x_max − x_min) when value_range is None, else of the fixed (lo, hi). Sample i's
  noise comes from fold_in(key, i), so the result does not depend on chunk_size.
  """
  if value_range is None:
    flat = images.reshape(images.shape[0], -1)
    span = (jnp.max(flat, axis=1) - jnp.min(flat, axis=1)).reshape((-1,) + (1,) * 3)
  else:
    span = jnp.asarray(value_range[1] - value_range[0], images.dtype)
  sigma = noise_level * span

  def noisy_grad(i: Array) -> Array:
    eps = jax.random.normal(jax.random.fold_in(key, i), images.shape, images.dtype)
    return _grad(logit_fn, images + sigma * eps, target)

  return jnp.mean(_map(noisy_grad, jnp.arange(num_samples), chunk_size), axis=0)


def _starts(size: int, patch: int, stride: int) -> list[int]:
  """Patch offsets along one axis; the last patch is moved flush with the edge so that
  every pixel is covered even when the stride does not tile the image."""
  starts = list(range(0, size - patch + 1, stride))
  return starts if starts[-1] == size - patch else starts + [size - patch]


def occlusion_masks(height: int, width: int, patch_size: int, stride: int | None = None
                    ) -> np.ndarray:
  """bool [P, H, W]: one square patch per position (static shapes, built on the host)."""
  stride = patch_size if stride is None else stride
  if not (1 <= patch_size <= min(height, width) and stride >= 1):
    raise ValueError(f'need 1 ≤ patch_size ≤ {min(height, width)} and stride ≥ 1, got '
                     f'patch_size={patch_size}, stride={stride}')
  masks = []
  for i in _starts(height, patch_size, stride):
    for j in _starts(width, patch_size, stride):
      m = np.zeros((height, width), bool)
      m[i:i + patch_size, j:j + patch_size] = True
      masks.append(m)
  return np.stack(masks)


def occlusion(logit_fn: LogitFn, images: Array, target: Array, *, patch_size: int = 4,
              stride: int | None = None, fill_value: float | Array = 0.0,
              chunk_size: int | None = None) -> Array:
  """Occlusion (Zeiler & Fergus 2014): [B, H, W], channels not separate.

  Each patch (every channel) is replaced by fill_value (a scalar or [3]); the patch's drop
  f(x) − f(x_occluded) of the target logit is spread over its pixels, and each pixel gets
  the mean drop of the patches covering it. stride defaults to patch_size.
  """
  _, h, w, _ = images.shape
  masks = jnp.asarray(occlusion_masks(h, w, patch_size, stride))        # [P, H, W]
  fill = jnp.asarray(fill_value, images.dtype)
  base = target_logits(logit_fn, images, target)                       # [B]

  def drop(mask: Array) -> Array:
    occluded = jnp.where(mask[None, :, :, None], fill, images)
    return base - target_logits(logit_fn, occluded, target)

  drops = _map(drop, masks, chunk_size)                                # [P, B]
  m = masks.astype(images.dtype)
  return jnp.einsum('pb,phw->bhw', drops, m) / jnp.maximum(jnp.sum(m, axis=0), 1.0)
