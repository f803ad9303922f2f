"""Train states and the per-device step helpers every learner shares (stage steps in
`training.steps`, concept learners in `concepts/`): one module below both, so that neither
imports the other.

Steps are data-parallel code over the mesh axis `AXIS` (`training.parallel` runs them under
`jax.shard_map`): gradients and metrics are averaged with `lax.pmean`, and randomness that
shapes a result is drawn per example from (step key, global example index).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

Array = jax.Array
TrainState = train_state.TrainState
AXIS = 'data'  # the 1-D device mesh's axis name


def compute_dtype(config) -> str:
  """config.model.compute_dtype: the dense layers' matmul dtype ('float32' when absent)."""
  return config.model.get('compute_dtype', 'float32')


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


def device_rng(rng: Array) -> Array:
  """This device's key (dropout is drawn per device, as under pmap)."""
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))


def global_index(local_batch: int) -> Array:
  """Global example indices [b] of this device's rows."""
  return jax.lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def example_keys(rng: Array, local_batch: int) -> Array:
  """One key per example [b], from its global index: the same on 1 or N devices."""
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, global_index(local_batch))


def apply_gradients(state: TrainState, grads, metrics: dict) -> tuple[TrainState, dict]:
  """Averages gradients and metrics over the devices and takes the optimizer step."""
  grads = jax.lax.pmean(grads, AXIS)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return state.apply_gradients(grads=grads), jax.lax.pmean(metrics, AXIS)
