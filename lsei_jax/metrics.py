"""Pure, batched evaluation metrics (Table 1 / Table 2). Means over the batch, in [0, 1]."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lsei_jax.fisher import similarity

Array = jax.Array


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of argmax(logits [B, C]) equal to labels [B]."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def agreement(logits_a: Array, logits_b: Array) -> Array:
  """Fraction of samples whose argmax predictions agree ([B, C] each)."""
  return jnp.mean(jnp.argmax(logits_a, -1) == jnp.argmax(logits_b, -1))


def change_rate(logits_before: Array, logits_after: Array) -> Array:
  """Fraction of predictions changed by an intervention (1 − agreement)."""
  return 1.0 - agreement(logits_before, logits_after)


def recon_accuracy(head_logits_on_hhat: Array, labels: Array) -> Array:
  """Accuracy of c2(ĥ) [B, C] against the task labels [B]."""
  return accuracy(head_logits_on_hhat, labels)


def info_cosine(info_a: Array, info_b: Array) -> Array:
  """Cosine similarity of two information vectors [d] (Table 2)."""
  return similarity(info_a, info_b, 'cosine')
