"""The paper's discrete VAE as a concept learner: boolean code z = 1[l(h) > 0]."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from lsei_jax import models
from lsei_jax.training import steps
from lsei_jax.relaxed_bernoulli import hard_code

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Learner:
  """models.DVAE trained on the negative ELBO (steps.make_dvae_step)."""
  module: models.DVAE
  kind: str = 'dvae'
  binary: bool = True

  @classmethod
  def from_config(cls, cfg, embed_dim: int) -> 'Learner':
    return cls(models.DVAE(hidden_dim=embed_dim, latent_dim=cfg.latent_dim,
                           hidden=tuple(cfg.hidden), dropout=cfg.dropout))

  @property
  def latent_dim(self) -> int:
    return self.module.latent_dim

  def encode(self, params, h: Array) -> Array:
    """z = 1[l(h) > 0] [B, K] in {0, 1}."""
    return hard_code(self.module.apply({'params': params}, h, method='encode'))

  def decode(self, params, code: Array) -> Array:
    return self.module.apply({'params': params}, code, method='decode')

  def make_step(self, cfg) -> Callable:
    return steps.make_dvae_step(self.module, cfg)

  def check_input(self, h: np.ndarray) -> None:
    del h  # any real embedding
