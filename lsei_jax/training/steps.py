"""Per-stage train states and pure, per-device train steps `(state, batch, rng, …) -> (state, metrics)`.

Steps are data-parallel code: gradients and metrics are averaged with `lax.pmean` over
`parallel.AXIS`; run them through `parallel.data_parallel_step`. Randomness that shapes
the result (relaxed-Bernoulli noise, Fisher perturbations) is drawn per *example* from
(step key, global example index), so a step gives the same answer on 1 or N devices;
dropout is drawn per device, as under pmap.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lsei_jax import fisher, losses, models
from lsei_jax.train_state import (AXIS, TrainState, apply_gradients, create_train_state,  # noqa: F401
                                  compute_dtype, device_rng, example_keys, make_optimizer)

Array = jax.Array


def build_models(config) -> tuple[models.Classifier, models.DVAE, models.Explainer]:
  """The three modules from `config.model` (+ data image size)."""
  mc, dtype = config.model, compute_dtype(config)
  clf = models.Classifier(channels=tuple(mc.classifier.channels),
                          strides=tuple(mc.classifier.strides),
                          hidden_dim=mc.classifier.hidden_dim,
                          num_classes=mc.classifier.num_classes,
                          dropout=mc.classifier.dropout, compute_dtype=dtype)
  dvae = models.DVAE(hidden_dim=mc.classifier.hidden_dim, latent_dim=mc.dvae.latent_dim,
                     hidden=tuple(mc.dvae.hidden), dropout=mc.dvae.dropout,
                     compute_dtype=dtype)
  g = models.Explainer(image_size=config.data.image_size, channels=tuple(mc.explainer.channels))
  return clf, dvae, g


# ----------------------------------------------------------------------------- classifier
def classifier_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
  """Cross-entropy on the task label. batch: image [b,H,W,3], label [b]."""
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'], train=True,
                            rngs={'dropout': device_rng(rng)})
    return losses.classifier_loss(logits, batch['label']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  acc = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return apply_gradients(state, grads, {'loss': loss, 'accuracy': acc})


# ----------------------------------------------------------------------------- probe
def probe_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
  """Multi-label attribute probe: independent sigmoid per attribute.

  batch: image [b,H,W,3], attributes float [b,A] in {0,1}.
  """
  del rng  # the probe has no dropout
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'])
    return losses.bce_with_logits(logits, batch['attributes']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  acc = jnp.mean((logits > 0) == (batch['attributes'] > 0.5))
  return apply_gradients(state, grads, {'loss': loss, 'accuracy': acc})


# ----------------------------------------------------------------------------- explainer
def per_example_fisher(fn: Callable[[Array], Array], e: Array, keys: Array, sigma: Array, *,
                       num_samples: int, loss: str, chunk_size: int | None = None,
                       group_size: int | None = None, per_example: bool = False) -> Array:
  """Information [d] averaged over the rows of e [b, d] (or [b, d] per row), row i perturbed
  from keys[i].

  With a fixed σ this is `fisher.fisher_information` on the batch; per-row keys make the
  draws independent of how rows are split across devices. fn still runs on whole batches.
  """
  noise = jax.vmap(lambda k: jax.random.normal(k, (num_samples, e.shape[-1]), e.dtype))(keys)
  return fisher.fisher_information_from_noise(fn, e, jnp.swapaxes(noise, 0, 1), sigma,
                                              loss=loss, chunk_size=chunk_size,
                                              group_size=group_size, per_example=per_example)


def make_explainer_step(explainer: models.Explainer, cfg, regularize: bool = True) -> Callable:
  """Eq. 6 on precomputed ĥ. batch: image [b,H,W,3], hhat [b,d]; replicated: info_c2 [d], sigma [d].

  The regularizer is estimated on every (batch_size / fisher_batch)-th row of the batch
  (the same rows on any number of devices). regularize=False (or fisher_weight 0) gives
  the same step without it; `parallel.every_nth` alternates the two for fisher_every > 1.
  Not a lax.cond inside one step: XLA:CPU ran convolutions inside a conditional ~45×
  slower (measured: second-order Upsample2x gradient 0.8 s → 37 s), as it still runs any
  convolution gradient that is not a `layers.canonical_conv` (Upsample2x's now are).
  """
  weight = float(cfg.fisher_weight)

  def step(state: TrainState, batch: dict, rng: Array, info_c2: Array, sigma: Array
           ) -> tuple[TrainState, dict]:
    images, hhat = batch['image'], batch['hhat']
    stride = max(cfg.batch_size // cfg.fisher_batch, 1)
    keys = example_keys(rng, hhat.shape[0])[::stride]

    def loss_fn(params):
      g = lambda e: explainer.apply({'params': params}, e)
      reg = jnp.zeros((), jnp.float32)
      if regularize and weight > 0:
        info = per_example_fisher(g, hhat[::stride], keys, sigma,
                                  num_samples=cfg.fisher_samples, loss='bce',
                                  chunk_size=cfg.get('fisher_chunk') or None,
                                  group_size=cfg.get('fisher_group') or None)
        info_g = jax.lax.pmean(info, AXIS)
        reg = fisher.fisher_regularizer(info_g, info_c2, cfg.similarity)
      return losses.explainer_loss(g(hhat), images, reg, weight)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return apply_gradients(state, grads, dict(parts, loss=loss))
  return step
