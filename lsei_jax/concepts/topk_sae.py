"""TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

code = TopK_k(ReLU(W_enc (h − b_dec) + b_enc)), ĥ = code W_dec + b_dec, decoder rows kept at
unit norm. Dead latents: an auxiliary loss (AuxK) reconstructs the residual h − ĥ from the
k_aux largest pre-activations of the latents that fired on no row of the (global) batch.
The paper tracks "dead for N steps" in extra state; the per-batch set keeps the train state
a plain TrainState (same gradients on 1 or N devices, as every step here).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsei_jax.training import steps
from lsei_jax.concepts import ModuleLearner
from lsei_jax.errors import UserError
from lsei_jax.training.parallel import AXIS

Array = jax.Array


def topk_relu(pre: Array, k: int) -> Array:
  """Keeps the k largest entries of pre [B, K] per row (ReLU'd), zeros elsewhere: at most
  k nonzero per row, exactly k when the k largest are positive."""
  vals, idx = jax.lax.top_k(pre, k)
  onehot = jax.nn.one_hot(idx, pre.shape[-1], dtype=pre.dtype)      # [B, k, K]
  return jnp.einsum('bk,bkj->bj', nn.relu(vals), onehot)


def _unit_rows(key, shape):
  w = jax.random.normal(key, shape)
  return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


class TopKSAEModule(nn.Module):
  """Parameters W_enc [d, K], b_enc [K], W_dec [K, d] (unit rows), b_dec [d]."""
  hidden_dim: int
  latent_dim: int
  k: int

  def setup(self):
    # Tied initialisation (W_enc = W_decᵀ), as in the TopK SAE paper.
    self.W_dec = self.param('W_dec', _unit_rows, (self.latent_dim, self.hidden_dim))
    self.W_enc = self.param('W_enc', lambda key: self.W_dec.T)
    self.b_enc = self.param('b_enc', nn.initializers.zeros, (self.latent_dim,))
    self.b_dec = self.param('b_dec', nn.initializers.zeros, (self.hidden_dim,))

  def pre(self, h: Array) -> Array:
    """Pre-activations [B, K]."""
    return (h - self.b_dec) @ self.W_enc + self.b_enc

  def encode(self, h: Array) -> Array:
    return topk_relu(self.pre(h), self.k)

  def decode(self, code: Array) -> Array:
    return code @ self.W_dec + self.b_dec

  def __call__(self, h: Array) -> Array:
    return self.decode(self.encode(h))


def normalize_decoder(params) -> dict:
  """Decoder rows rescaled to unit norm (the encoder is left as trained)."""
  w = params['W_dec']
  return dict(params, W_dec=w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-8))


def sae_loss(module: TopKSAEModule, params, h: Array, k_aux: int, aux_weight: float,
             dead: Array) -> tuple[Array, dict]:
  """MSE(ĥ, h) + aux_weight · AuxK; dead [K] bool: latents the auxiliary code may use.

  AuxK = mean (e − ê)² / mean e², e = stop_gradient(h − ĥ), ê = code_aux W_dec with code_aux
  the top-k_aux ReLU pre-activations among dead latents (0 when none is dead).
  """
  v = {'params': params}
  pre = module.apply(v, h, method='pre')
  code = topk_relu(pre, module.k)
  hhat = module.apply(v, code, method='decode')
  mse = jnp.mean((hhat - h) ** 2)
  e = jax.lax.stop_gradient(h - hhat)
  aux_code = topk_relu(jnp.where(dead, pre, -jnp.inf), min(k_aux, pre.shape[-1]))
  aux = jnp.mean((aux_code @ params['W_dec'] - e) ** 2) / (jnp.mean(e ** 2) + 1e-12)
  loss = mse + aux_weight * aux
  return loss, {'mse': mse, 'aux': aux, 'l0': jnp.mean(jnp.sum(code > 0, -1)), 'code': code}


@dataclasses.dataclass(frozen=True)
class Learner(ModuleLearner):
  """TopK SAE; config section model.topk_sae: latent_dim (K), k, k_aux, aux_weight."""
  module: TopKSAEModule
  k_aux: int = 32
  aux_weight: float = 1 / 32
  kind: str = 'topk_sae'
  binary: bool = False

  @classmethod
  def from_config(cls, cfg, embed_dim: int) -> 'Learner':
    if not 0 < cfg.k <= cfg.latent_dim:
      raise UserError(f'config.model.topk_sae.k={cfg.k} must be in [1, latent_dim='
                       f'{cfg.latent_dim}]')
    return cls(TopKSAEModule(embed_dim, cfg.latent_dim, cfg.k), cfg.k_aux, cfg.aux_weight)

  def make_step(self, cfg) -> Callable:
    def step(state, batch: dict, rng: Array):
      del rng  # deterministic
      h = batch['h']
      pre = self.module.apply({'params': state.params}, h, method='pre')
      fired = jnp.any(topk_relu(pre, self.module.k) > 0, axis=0)
      dead = jax.lax.pmax(fired.astype(jnp.float32), AXIS) == 0  # on the global batch

      def loss_fn(params):
        loss, parts = sae_loss(self.module, params, h, self.k_aux, self.aux_weight, dead)
        parts.pop('code')
        return loss, parts

      (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      state, metrics = steps._finish(state, grads,
                                     dict(parts, loss=loss, dead_fraction=jnp.mean(dead)))
      return state.replace(params=normalize_decoder(state.params)), metrics
    return step
