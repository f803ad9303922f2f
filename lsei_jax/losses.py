"""Training losses of the three stages (docs/method.md §2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lsei_jax.relaxed_bernoulli import bernoulli_kl

Array = jax.Array


def classifier_loss(logits: Array, labels: Array) -> Array:
  """Mean cross-entropy of logits [B, C] against integer labels [B]."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def dvae_loss(h: Array, h_hat: Array, logits: Array, beta: float | Array = 1.0
              ) -> tuple[Array, dict[str, Array]]:
  """Negative ELBO (Eq. 1): mean over the batch of Σ_d (ĥ − h)² + β Σ_K KL(q(z|h) ‖ B(½)).

  h, h_hat: [B, d]; logits: encoder logits [B, K]. Returns (loss, {'recon', 'kl'}).
  """
  recon = jnp.mean(jnp.sum((h_hat - h) ** 2, axis=-1))
  kl = jnp.mean(jnp.sum(bernoulli_kl(logits), axis=-1))
  return recon + beta * kl, {'recon': recon, 'kl': kl}


def bce_with_logits(logits: Array, targets: Array) -> Array:
  """Mean binary cross-entropy of logits against targets in [0, 1] (any equal shapes).

  softplus(x) − t·x equals −t log σ(x) − (1−t) log(1−σ(x)) and never overflows.
  """
  return jnp.mean(jax.nn.softplus(logits) - targets * logits)


def explainer_loss(image_logits: Array, images: Array, regularizer: Array | float = 0.0,
                   weight: float | Array = 0.0) -> tuple[Array, dict[str, Array]]:
  """Eq. 6: BCE(g(ĥ), x) + λ · R with R = 1 / sim(I_g, I_c2). Images [B, H, W, 3] in [0,1]."""
  bce = bce_with_logits(image_logits, images)
  return bce + weight * regularizer, {'bce': bce, 'reg': jnp.asarray(regularizer)}
