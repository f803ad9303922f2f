"""The stage graph's nodes, one module each (lsei_jax.pipeline.graph lists them in order)."""
from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from lsei_jax.training import steps


# uint8 value ↦ float32 value / 255, divided by NumPy on the host: looked up on the device,
# the images are bitwise those the host made. Not x / 255 on the device: XLA:CPU turns the
# division by a constant into a product with its reciprocal, 1 ulp off for some values.
_UNIT = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0


def float_images(batch: dict) -> dict:
  """A batch with uint8 'image' → float32 in [0, 1], for use inside a jitted step: a uint8
  batch is a quarter of the bytes to copy to the device, and the lookup there is bitwise
  the host's x.astype(float32) / 255 (tests/test_loop.py). Float images pass unchanged."""
  return {k: (jnp.asarray(_UNIT)[v] if k == 'image' and v.dtype == jnp.uint8 else v)
          for k, v in batch.items()}


def on_float_images(step_fn: Callable) -> Callable:
  """step_fn(state, batch, …) fed uint8 images converted on the device (float_images)."""
  @functools.wraps(step_fn)
  def step(state, batch, *args):
    return step_fn(state, float_images(batch), *args)
  return step


def host_batch(batch: dict) -> dict:
  """The host transform of a batch: none; images go to the device as uint8."""
  return batch


def init_state(module, rng, example, cfg) -> steps.TrainState:
  """A fresh train state of `module` with the optimizer of its stage section `cfg`."""
  return steps.create_train_state(module, rng, example,
                                  steps.make_optimizer(cfg, max(cfg.steps, 1)))


def image0(spec) -> jnp.ndarray:
  """An example image batch [1, S, S, 3] for initialisation."""
  size = spec.image_size
  return jnp.zeros((1, size, size, 3))
