"""Per-stage train states and pure, per-device train steps `(state, batch, rng, …) -> (state, metrics)`.

Steps are data-parallel code: gradients and metrics are averaged with `lax.pmean` over
`parallel.AXIS`; run them through `parallel.data_parallel_step`. Randomness that shapes
the result (relaxed-Bernoulli noise, Fisher perturbations) is drawn per *example* from
(step key, global example index), so a step gives the same answer on 1 or N devices;
dropout is drawn per device, as under pmap.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from lsei_jax import fisher, losses, models
from lsei_jax.training.parallel import AXIS
from lsei_jax.relaxed_bernoulli import hard_code, relaxed_bernoulli

Array = jax.Array
TrainState = train_state.TrainState


def compute_dtype(config) -> str:
  """config.model.compute_dtype: the dense layers' matmul dtype ('float32' when absent)."""
  return config.model.get('compute_dtype', 'float32')


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


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
  """Optax optimizer from a stage config: optimizer, learning_rate, schedule, warmup_steps,
  weight_decay, grad_clip."""
  lr = cfg.learning_rate
  if cfg.get('schedule', 'constant') == 'cosine':
    warmup = cfg.get('warmup_steps', 0) or 0
    if not 0 <= warmup < max(num_steps, 1):  # optax's own error names decay_steps < 0
      raise ValueError(f'warmup_steps={warmup} must be in [0, steps={num_steps}) for the '
                       f"cosine schedule: lower warmup_steps, raise steps, or use "
                       f"schedule='constant'")
    lr = optax.warmup_cosine_decay_schedule(0.0, lr, cfg.get('warmup_steps', 0) or 0,
                                            max(num_steps, 1), end_value=lr * 0.01)
  elif cfg.get('schedule', 'constant') != 'constant':
    raise ValueError(f"unknown schedule {cfg.schedule!r}: expected 'constant' or 'cosine'")
  name = cfg.get('optimizer', 'adam')
  if name == 'adam':
    tx = optax.adam(lr)
  elif name == 'adamw':
    tx = optax.adamw(lr, weight_decay=cfg.get('weight_decay', 1e-4))
  elif name == 'sgd':
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"unknown optimizer {name!r}: expected 'adam', 'adamw' or 'sgd'")
  if cfg.get('grad_clip', 0):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def create_train_state(module: nn.Module, rng: Array, example_input: Array,
                       tx: optax.GradientTransformation, method: str | None = None) -> TrainState:
  params = module.init(rng, example_input)['params']
  apply = module.apply if method is None else (
      lambda v, *a, **k: module.apply(v, *a, method=method, **k))
  return TrainState.create(apply_fn=apply, params=params, tx=tx)


def _device_rng(rng: Array) -> Array:
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))


def _global_index(local_batch: int) -> Array:
  """Global example indices [b] of this device's rows."""
  return jax.lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def _example_keys(rng: Array, local_batch: int) -> Array:
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, _global_index(local_batch))


def _finish(state: TrainState, grads, metrics: dict) -> tuple[TrainState, dict]:
  grads = jax.lax.pmean(grads, AXIS)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return state.apply_gradients(grads=grads), jax.lax.pmean(metrics, AXIS)


# ----------------------------------------------------------------------------- classifier
def classifier_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
  """Cross-entropy on the task label. batch: image [b,H,W,3], label [b]."""
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'], train=True,
                            rngs={'dropout': _device_rng(rng)})
    return losses.classifier_loss(logits, batch['label']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  acc = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return _finish(state, grads, {'loss': loss, 'accuracy': acc})


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
  return _finish(state, grads, {'loss': loss, 'accuracy': acc})


# ----------------------------------------------------------------------------- dvae
def temperature_at(step: Array, start: float, end: float, anneal_steps: int) -> Array:
  """Exponential annealing start → end over anneal_steps, then constant."""
  frac = jnp.clip(step / max(anneal_steps, 1), 0.0, 1.0)
  return start * (end / start) ** frac


def make_dvae_step(dvae: models.DVAE, cfg) -> Callable:
  """Negative ELBO on precomputed embeddings. batch: h [b, d]."""
  def step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
    h = batch['h']
    tau = temperature_at(state.step, cfg.temperature_start, cfg.temperature_end,
                         cfg.anneal_steps)
    keys = _example_keys(rng, h.shape[0])
    drop = _device_rng(jax.random.fold_in(rng, 1))

    def loss_fn(params):
      v = {'params': params}
      logits = dvae.apply(v, h, True, method='encode', rngs={'dropout': drop})
      z = jax.vmap(relaxed_bernoulli, (0, 0, None, None))(keys, logits, tau, cfg.hard)
      h_hat = dvae.apply(v, z, True, method='decode',
                         rngs={'dropout': jax.random.fold_in(drop, 1)})
      loss, parts = losses.dvae_loss(h, h_hat, logits, cfg.beta)
      return loss, (parts, logits)

    (loss, (parts, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    l0 = jnp.mean(jnp.sum(logits > 0, -1))
    return _finish(state, grads, dict(parts, loss=loss, temperature=tau, l0=l0))
  return step


def encode_decode(dvae: models.DVAE, params, h: Array) -> tuple[Array, Array]:
  """Eval-mode code and reconstruction: z = 1[l(h) > 0], ĥ = d(z). → ([b,K], [b,d])."""
  z = hard_code(dvae.apply({'params': params}, h, method='encode'))
  return z, dvae.apply({'params': params}, z, method='decode')


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
    keys = _example_keys(rng, hhat.shape[0])[::stride]

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
    return _finish(state, grads, dict(parts, loss=loss))
  return step
