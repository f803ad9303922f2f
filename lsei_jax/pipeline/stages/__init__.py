"""The stage graph's nodes, one module each (lsei_jax.pipeline.graph lists them in order)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lsei_jax.training import steps


def float_images(batch: dict) -> dict:
  """A host batch with uint8 'image' → float32 in [0, 1]."""
  return {k: (v.astype(np.float32) / 255.0 if k == 'image' else v) for k, v in batch.items()}


def init_state(module, rng, example, cfg) -> steps.TrainState:
  """A fresh train state of `module` with the optimizer of its stage section `cfg`."""
  return steps.create_train_state(module, rng, example,
                                  steps.make_optimizer(cfg, max(cfg.steps, 1)))


def image0(spec) -> jnp.ndarray:
  """An example image batch [1, S, S, 3] for initialisation."""
  size = spec.image_size
  return jnp.zeros((1, size, size, 3))
