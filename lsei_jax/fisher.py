"""Functional Fisher information of a function of an embedding (docs/method.md §6, Eq. 3–5).

For F: R^d → R^m (logits) and embeddings e [B, d]:
  e_ε = e + ε,  ε_i ~ N(0, σ_i²)
  f(e_ε) = loss(F(e_ε), stop_gradient(F(e))) ≥ 0
  I_i(F) = E_{x, ε}[(∂f/∂e_i)² / max(f, floor)]                → [d]
"""
from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp

Array = jax.Array
LossName = Literal['ce', 'bce']


def _loss_against_target(loss: str, logits: Array, target_logits: Array) -> Array:
  """Per-row loss [B] of `logits` [B, ...] against soft targets from `target_logits`."""
  target_logits = jax.lax.stop_gradient(target_logits)
  if loss == 'ce':
    target = jax.nn.softmax(target_logits, axis=-1)
    return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  if loss == 'bce':
    target = jax.nn.sigmoid(target_logits)
    # BCE with logits: log(1 + e^x) − t·x, stable for large |x|.
    per_out = jax.nn.softplus(logits) - target * logits
    return jnp.sum(per_out.reshape(per_out.shape[0], -1), axis=-1)
  raise ValueError(f"unknown Fisher loss {loss!r}: expected 'ce' or 'bce'")


def batch_sigma(e: Array, scale: float = 1.0) -> Array:
  """σ = scale · per-coordinate (unbiased) standard deviation of e [B, d] → [d]."""
  ddof = 1 if e.shape[0] > 1 else 0
  return scale * jnp.std(e, axis=0, ddof=ddof)


# `jax.jit(fisher_information, static_argnames=STATIC_ARGNAMES)` compiles the estimator
# itself; everything else (e, key, sigma, sigma_scale, floor) may be traced.
STATIC_ARGNAMES = ('fn', 'num_samples', 'loss', 'chunk_size', 'group_size', 'precision')
# Matmul precision of fn's products inside the estimator. JAX's default is not float32
# everywhere: an H200 ran float32 dots and convolutions at TF32 (relative error 2.9e-4
# against float64, 2e-7 at 'highest'; benchmarks/gpu_figures.sh), and 17 of the first 29
# exact-oracle tests of this module failed there; TPUs default to one bfloat16 pass.
# XLA:CPU computes float32 either way.
Precision = Literal['default', 'high', 'highest', 'bfloat16', 'tensorfloat32', 'float32']
DEFAULT_PRECISION: Precision = 'highest'

def _check_arguments(e: Array, sigma, loss: str) -> None:
  if loss not in ('ce', 'bce'):
    raise ValueError(f"unknown Fisher loss {loss!r}: expected 'ce' or 'bce'")
  if e.ndim != 2:
    raise ValueError(f'Fisher information needs embeddings e of shape [B, d]; got shape '
                     f'{tuple(e.shape)}: reshape to [B, d] or jax.vmap over the extra axes')
  if sigma is None and e.shape[0] < 2:
    raise ValueError(f'sigma=None perturbs by the batch std of e, which is 0 for a batch of '
                     f'{e.shape[0]} row: pass more rows or a fixed sigma (a float or a '
                     f'[{e.shape[1]}] array)')


def _check_num_samples(num_samples: int) -> None:
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples}: the Fisher estimate needs at least one '
                     'perturbation per embedding (e.g. num_samples=8)')


def fisher_information(fn: Callable[[Array], Array], e: Array, key: Array, *,
                       num_samples: int, loss: LossName,
                       sigma: float | Array | None = None, sigma_scale: float = 1.0,
                       floor: float = 1e-8, chunk_size: int | None = None,
                       group_size: int | None = None,
                       precision: Precision | None = DEFAULT_PRECISION) -> Array:
  """Per-neuron functional Fisher information of `fn` at embeddings `e`.

  Args:
    fn: maps embeddings [B, d] to logits [B, m] (or [B, H, W, C] for 'bce'). Rows must
      be processed independently (no batch statistics), as in any eval-mode network.
    e: embeddings [B, d] (B ≥ 2 when sigma is None).
    key: PRNG key for the perturbations.
    num_samples: perturbations per embedding (S ≥ 1).
    loss: 'ce' (cross-entropy against softmax(fn(e))) or 'bce' (binary cross-entropy
      against sigmoid(fn(e)), summed over outputs).
    sigma: None → `sigma_scale` × the batch std of each coordinate of e; a float or a
      [d] array fixes it.
    floor: lower bound on f in the denominator.
    chunk_size: if set, perturbations are processed `chunk_size` at a time in a lax.scan,
      each chunk recomputed in the backward pass (jax.checkpoint): bounds memory, also
      when the estimate is differentiated. Same noise, same value as unchunked. On
      XLA:CPU as fast as unchunked when fn's convolutions are `layers.canonical_conv`
      (models.Explainer's are); lax.conv's own gradients inside the loop run as naive
      loops, 10-20× slower (see canonical_conv).
    group_size: if set, perturbations are traced `group_size` at a time in an unrolled
      loop: the same values and memory, but smaller working sets, which is faster on CPU
      for convolutional fn (e.g. 2 of 8 perturbations: regularized explainer step 1.6×).
    precision: jax.default_matmul_precision for every product of fn in the estimator and
      its gradient: 'highest' (default) keeps the statistic float32 on GPUs and TPUs,
      whose defaults round operands (TF32, bfloat16); None leaves the backend's default.

  Returns:
    I [d] = mean over batch and perturbations of (∂f/∂e_i)² / f. Differentiable with
    respect to whatever `fn` closes over (second-order gradients).

  Under jax.jit, pass STATIC_ARGNAMES as static_argnames (fn must be hashable).
  """
  _check_arguments(e, sigma, loss)
  _check_num_samples(num_samples)
  if sigma is None:
    sigma = batch_sigma(jax.lax.stop_gradient(e), sigma_scale)
  noise = jax.random.normal(key, (num_samples,) + e.shape, e.dtype)  # [S, B, d]
  return fisher_information_from_noise(fn, e, noise, sigma, loss=loss, floor=floor,
                                       chunk_size=chunk_size, group_size=group_size,
                                       precision=precision)


def fisher_information_from_noise(fn: Callable[[Array], Array], e: Array, noise: Array,
                                  sigma: float | Array, *, loss: LossName,
                                  floor: float = 1e-8, chunk_size: int | None = None,
                                  group_size: int | None = None,
                                  per_example: bool = False,
                                  precision: Precision | None = DEFAULT_PRECISION) -> Array:
  """`fisher_information` with given standard-normal draws `noise` [S, B, d] (ε = σ·noise).

  For callers that draw the noise themselves, e.g. per example from its own key so that
  the estimate does not depend on how a batch is split across devices. per_example=True
  returns the per-row vectors [B, d] (mean over perturbations only) instead of [d].
  """
  if precision is not None:
    # Read when the products are traced (lax canonicalizes precision=None then), so the
    # setting holds inside any outer jit, and transposed products keep it in the gradient.
    with jax.default_matmul_precision(precision):
      return fisher_information_from_noise(fn, e, noise, sigma, loss=loss, floor=floor,
                                           chunk_size=chunk_size, group_size=group_size,
                                           per_example=per_example, precision=None)
  _check_arguments(e, sigma, loss)
  if noise.ndim != 3 or noise.shape[1:] != e.shape:
    raise ValueError(f'noise must have shape [S, B, d] = [S, {e.shape[0]}, {e.shape[1]}] '
                     f'for e of shape {tuple(e.shape)}; got {tuple(noise.shape)}')
  num_samples = noise.shape[0]
  _check_num_samples(num_samples)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, e.dtype), e.shape[-1:])
  target = jax.lax.stop_gradient(fn(e))
  if chunk_size is not None and chunk_size < num_samples:
    # A device loop: the one formulation whose buffers XLA:CPU reuses from chunk to chunk.
    # Planned temp memory of the gradient of the 64×64 explainer's Fisher vector (batch
    # 64, 8 draws; compiled.memory_analysis()): 102 MB in chunks of 1, 192 in chunks of 2,
    # 372 in chunks of 4, against 633 MB unbounded in groups of 2 and 729 MB all at once;
    # every unrolled formulation tried (jax.checkpoint per chunk, optimization barriers
    # between chunks) planned 634-733 MB. Each chunk returns its sum, never a stacked
    # [S, B, d] array: lax.map's stacked outputs were miscompiled by XLA:CPU's default
    # YNNPACK fusion (5% off, jaxlib 0.10). Checkpointed: the backward pass recomputes each
    # chunk from its draws.
    chunk = jax.checkpoint(lambda z: _information_sum(fn, e, target, sigma, z, loss, floor))
    num_full = num_samples // chunk_size
    full = noise[:num_full * chunk_size].reshape((num_full, chunk_size) + e.shape)
    total, _ = jax.lax.scan(lambda acc, z: (acc + chunk(z), None),
                            jnp.zeros(e.shape, e.dtype), full)
    if num_samples % chunk_size:
      total = total + chunk(noise[num_full * chunk_size:])
    per = total / num_samples
  elif group_size is not None and group_size < num_samples:
    per = sum(_information_sum(fn, e, target, sigma, noise[i:i + group_size], loss, floor)
              for i in range(0, num_samples, group_size)) / num_samples
  else:
    per = _information_sum(fn, e, target, sigma, noise, loss, floor) / num_samples
  return per if per_example else jnp.mean(per, axis=0)



def _information_sum(fn: Callable[[Array], Array], e: Array, target: Array, sigma: Array,
                     noise: Array, loss: str, floor: float) -> Array:
  """Σ over the draws noise [G, B, d] of the per-row information (∂f/∂e)² / f → [B, d]."""
  g, b, d = noise.shape
  # The G draws are stacked as G·B rows of one batch rather than vmapped: the same
  # arithmetic, but a vmap over a custom_vjp layer (layers.canonical_conv) would compute a
  # weight gradient per draw (grouped convolutions, slower and larger).
  e_eps = (e + sigma * noise).reshape(g * b, d)
  target = jnp.broadcast_to(target, (g,) + target.shape).reshape((g * b,) + target.shape[1:])
  def total_loss(e_eps):
    f = _loss_against_target(loss, fn(e_eps), target)
    return jnp.sum(f), f
  # Rows are independent, so the gradient of the summed loss is every row's own gradient.
  grads, f = jax.grad(total_loss, has_aux=True)(e_eps)
  return jnp.sum((grads**2 / jnp.maximum(f, floor)[:, None]).reshape(g, b, d), axis=0)



def similarity(a: Array, b: Array, kind: str = 'cosine', eps: float = 1e-12) -> Array:
  """Similarity of two information vectors [d]: 'dot' (paper) or 'cosine' (scale-free)."""
  if kind == 'dot':
    return jnp.dot(a, b)
  if kind == 'cosine':
    # Cosine is scale-free, so rescale first: information vectors can be ~1e-20, whose
    # squared norms underflow in float32. Clamp before the square root: the gradient of
    # ‖a‖ at a = 0 is NaN, and a vector is exactly 0 when the function ignores its input.
    a, b = _max_scaled(a), _max_scaled(b)
    return jnp.dot(a, b) / jnp.sqrt(jnp.maximum(jnp.dot(a, a) * jnp.dot(b, b), eps**2))
  raise ValueError(f"unknown similarity {kind!r}: expected 'dot' or 'cosine'")


def _max_scaled(v: Array) -> Array:
  # The cosine does not depend on the scale, so no gradient flows through it (exactly);
  # letting it flow would give 0/0 for tiny vectors.
  scale = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(v)), jnp.finfo(v.dtype).tiny))
  return v / scale


def fisher_regularizer(info_g: Array, info_c: Array, kind: str = 'cosine',
                       eps: float = 1e-12) -> Array:
  """R = 1 / sim(I_g, I_c) (Eq. 6); small when g relies on the coordinates c2 relies on."""
  return 1.0 / jnp.maximum(similarity(info_g, info_c, kind, eps), eps)
