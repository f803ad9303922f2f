"""Boolean latents: binary-concrete (Gumbel-sigmoid) sampling and the KL to Bernoulli(1/2).

docs/method.md §4. All functions are elementwise over a logits array of any shape, e.g. [B, K].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LOG2 = 0.6931471805599453


def relaxed_bernoulli(key: jax.Array, logits: jax.Array, temperature: float | jax.Array,
                      hard: bool = False) -> jax.Array:
  """Binary-concrete sample with the shape of `logits` ([..., K]), values in [0, 1].

  z̃ = σ((l + L) / τ), L ~ Logistic(0, 1) (= log u − log(1 − u), u ~ U(0,1)).
  With `hard=True` the value is the straight-through 1[z̃ > ½] ∈ {0, 1} whose gradient is
  the gradient of z̃. P(1[z̃ > ½] = 1) = σ(l) for every τ.

  `hard` chooses the computation, so it is static under jit:
  `jax.jit(relaxed_bernoulli, static_argnames='hard')`; temperature may be traced.
  """
  if isinstance(hard, jax.core.Tracer):
    raise TypeError('relaxed_bernoulli: hard must be a Python bool; under jax.jit mark it '
                    "static (jax.jit(relaxed_bernoulli, static_argnames='hard'))")
  # jax.random.logistic samples L directly, so no log(0) at u ∈ {0, 1}.
  noise = jax.random.logistic(key, logits.shape, dtype=logits.dtype)
  soft = jax.nn.sigmoid((logits + noise) / temperature)
  if not hard:
    return soft
  return _straight_through(soft)


@jax.custom_jvp
def _straight_through(soft: jax.Array) -> jax.Array:
  """1[soft > ½] exactly in {0, 1}, with the identity as its derivative."""
  # Written as a custom JVP rather than hard + soft − stop_gradient(soft), whose float
  # rounding gives values like 0.99999994 instead of 1.
  return (soft > 0.5).astype(soft.dtype)


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  (soft,), (tangent,) = primals, tangents
  return _straight_through(soft), tangent


def bernoulli_kl(logits: jax.Array) -> jax.Array:
  """KL(Bernoulli(σ(l)) ‖ Bernoulli(½)) per element, same shape as `logits`.

  p·log 2p + (1−p)·log 2(1−p) written with log-sigmoids, which stay finite (and have
  finite gradients) for saturated logits: at |l| = 100 it is log 2 to float precision.
  """
  p = jax.nn.sigmoid(logits)
  return (LOG2 + p * jax.nn.log_sigmoid(logits)
          + (1.0 - p) * jax.nn.log_sigmoid(-logits))


def hard_code(logits: jax.Array) -> jax.Array:
  """Deterministic evaluation code z = 1[l > 0] as float32 [..., K]."""
  return (logits > 0).astype(jnp.float32)
