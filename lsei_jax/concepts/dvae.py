"""The paper's discrete VAE as a concept learner: boolean code z = 1[l(h) > 0]."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

import jax.numpy as jnp

from lsei_jax import losses, models
from lsei_jax.relaxed_bernoulli import hard_code, relaxed_bernoulli
from lsei_jax.train_state import TrainState, apply_gradients, device_rng, example_keys

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Learner:
  """models.DVAE trained on the negative ELBO (make_dvae_step)."""
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
    return make_dvae_step(self.module, cfg)

  def check_input(self, h: np.ndarray) -> None:
    del h  # any real embedding


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
    keys = example_keys(rng, h.shape[0])
    drop = device_rng(jax.random.fold_in(rng, 1))

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
    return apply_gradients(state, grads, dict(parts, loss=loss, temperature=tau, l0=l0))
  return step


def encode_decode(dvae: models.DVAE, params, h: Array) -> tuple[Array, Array]:
  """Eval-mode code and reconstruction: z = 1[l(h) > 0], ĥ = d(z). → ([b,K], [b,d])."""
  z = hard_code(dvae.apply({'params': params}, h, method='encode'))
  return z, dvae.apply({'params': params}, z, method='decode')
