"""TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

code = TopK_k(ReLU(W_enc (h − b_dec) + b_enc)), ĥ = code W_dec + b_dec, decoder rows kept at
unit norm. Against dead latents, as in that paper:
  - b_dec starts at the centre of the data (b_dec_init 'mean' or 'median', the geometric
    median as in Bricken et al. 2023 / SAELens), set from the first global batch at step 0,
    so that the encoder's directions start around the data and not around 0;
  - AuxK: an auxiliary loss reconstructs the residual h − ĥ from the k_aux largest
    pre-activations of the latents that have not fired for dead_steps steps. The steps since
    each latent last fired (on any row of the global batch) are part of the train state
    (SAEState), so they survive checkpoints and are the same on 1 or N devices. dead_steps=1
    is "dead in this batch".
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsei_jax import train_state
from lsei_jax.concepts import ModuleLearner
from lsei_jax.errors import UserError
from lsei_jax.train_state import AXIS

Array = jax.Array


def topk_relu(pre: Array, k: int) -> Array:
  """Keeps the k largest entries of pre [B, K] per row (ReLU'd), zeros elsewhere: at most
  k nonzero per row, exactly k when the k largest are positive."""
  vals, idx = jax.lax.top_k(pre, k)
  onehot = jax.nn.one_hot(idx, pre.shape[-1], dtype=pre.dtype)      # [B, k, K]
  return jnp.einsum('bk,bkj->bj', nn.relu(vals), onehot)


class SAEState(train_state.TrainState):
  """TrainState plus steps_since_fired [K] int32: steps since each latent last fired."""
  steps_since_fired: Array = None


def create_state(module: 'TopKSAEModule', rng: Array, example: Array, tx) -> SAEState:
  base = train_state.create_train_state(module, rng, example, tx)
  return SAEState(step=base.step, apply_fn=base.apply_fn, params=base.params, tx=base.tx,
                  opt_state=base.opt_state,
                  steps_since_fired=jnp.zeros((module.latent_dim,), jnp.int32))


def update_steps_since_fired(count: Array, fired: Array) -> Array:
  """count [K] int after one step in which `fired` [K] bool: 0 where fired, else count + 1."""
  return jnp.where(fired, 0, count + 1).astype(count.dtype)


def dead_latents(count: Array, dead_steps: int) -> Array:
  """bool [K]: latents that have not fired for at least dead_steps steps (this one included)."""
  return count >= dead_steps


def _total(x: Array, axis_name: str | None) -> Array:
  """x summed over the devices of axis_name (x itself without one)."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def batch_mean(h: Array, axis_name: str | None = None) -> Array:
  """Mean [d] of the rows of h [B, d]; with axis_name, of every device's rows."""
  return _total(jnp.sum(h, 0), axis_name) / _total(jnp.asarray(h.shape[0], h.dtype), axis_name)


def geometric_median(h: Array, iters: int = 20, axis_name: str | None = None) -> Array:
  """Weiszfeld's iterations for argmin_m Σ_i ‖h_i − m‖ over the rows of h [B, d] → [d],
  from the mean; with axis_name, over the rows of every device's h (psum of the sums)."""
  def body(_, m):
    w = 1.0 / jnp.maximum(jnp.linalg.norm(h - m, axis=-1), 1e-6)    # [B]
    return _total(w @ h, axis_name) / _total(jnp.sum(w), axis_name)
  return jax.lax.fori_loop(0, iters, body, batch_mean(h, axis_name))


def data_centre(h: Array, how: str, axis_name: str | None = None) -> Array:
  """The b_dec start [d] from a batch h [B, d]: its mean or geometric median."""
  if how == 'mean':
    return batch_mean(h, axis_name)
  if how == 'median':
    return geometric_median(h, axis_name=axis_name)
  raise ValueError(f'unknown b_dec_init {how!r}')


B_DEC_INITS = ('zeros', 'mean', 'median')


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
  """TopK SAE; config section model.topk_sae: latent_dim (K), k, k_aux, aux_weight,
  dead_steps (AuxK uses latents silent for that many steps), b_dec_init."""
  module: TopKSAEModule
  k_aux: int = 32
  aux_weight: float = 1 / 32
  dead_steps: int = 1
  b_dec_init: str = 'zeros'
  kind: str = 'topk_sae'
  binary: bool = False

  @classmethod
  def from_config(cls, cfg, embed_dim: int) -> 'Learner':
    if not 0 < cfg.k <= cfg.latent_dim:
      raise UserError(f'config.model.topk_sae.k={cfg.k} must be in [1, latent_dim='
                       f'{cfg.latent_dim}]')
    dead_steps, b_dec_init = cfg.get('dead_steps', 1), cfg.get('b_dec_init', 'zeros')
    if not dead_steps >= 1:
      raise UserError(f'config.model.topk_sae.dead_steps={dead_steps} must be ≥ 1 (1: dead '
                       f'in the current batch)')
    if b_dec_init not in B_DEC_INITS:
      raise UserError(f'config.model.topk_sae.b_dec_init={b_dec_init!r}; known: '
                       f'{", ".join(B_DEC_INITS)}')
    return cls(TopKSAEModule(embed_dim, cfg.latent_dim, cfg.k), cfg.k_aux, cfg.aux_weight,
               int(dead_steps), b_dec_init)

  def create_state(self, rng: Array, example: Array, tx) -> SAEState:
    return create_state(self.module, rng, example, tx)

  def make_step(self, cfg) -> Callable:
    def step(state: SAEState, batch: dict, rng: Array):
      del rng  # deterministic
      h = batch['h']
      params = state.params
      if self.b_dec_init != 'zeros':   # b_dec from the first global batch (step 0 only)
        start = data_centre(h, self.b_dec_init, AXIS)
        params = dict(params, b_dec=jnp.where(state.step == 0, start, params['b_dec']))
      pre = self.module.apply({'params': params}, h, method='pre')
      fired = jnp.any(topk_relu(pre, self.module.k) > 0, axis=0)
      fired = jax.lax.pmax(fired.astype(jnp.float32), AXIS) > 0  # on the global batch
      count = update_steps_since_fired(state.steps_since_fired, fired)
      dead = dead_latents(count, self.dead_steps)

      def loss_fn(params):
        loss, parts = sae_loss(self.module, params, h, self.k_aux, self.aux_weight, dead)
        parts.pop('code')
        return loss, parts

      (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      state, metrics = train_state.apply_gradients(state.replace(params=params), grads,
                                     dict(parts, loss=loss, dead_fraction=jnp.mean(dead),
                                          fired_fraction=jnp.mean(fired)))
      return state.replace(params=normalize_decoder(state.params),
                           steps_since_fired=count), metrics
    return step
