"""The conditional INN of h's invariances (Rombach, Esser & Ommer, ECCV 2020, § 3.1):
docs/method.md § "The INN (issue 26)".

An image autoencoder gives each image a latent v [B, m]; the classifier gives it h [B, d].
A conditional flow ν = τ(v | h) (a `blocks.Flow` whose couplings read an embedding of h)
is trained by maximum likelihood with ν ~ N(0, I) independent of h:

  L = E[½|τ(v | h)|² + (m/2) log 2π − log|det ∂τ/∂v|] / m     (nats per dimension)

At the optimum ν carries what v has beyond h, so for a fixed h the images
D(τ⁻¹(ν | h)), ν ~ N(0, I), are what the classifier's representation cannot tell apart:
its invariances.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.inn import blocks
from lsei_jax import train_state

Array = jax.Array
LOG_2PI = float(np.log(2 * np.pi))


class ConditionalINN(nn.Module):
  """v [B, m] ↔ ν [B, m] given h [B, d]: `__call__(v, h) -> (ν, logdet [B])`,
  `inverse(ν, h) -> v`. h passes through Dense layers `embed` (GELU between; none: h
  itself) before reaching every coupling. data_init=False: ActNorm starts at the identity
  (for standardised v, so that a template needs no data)."""
  num_steps: int = 8
  hidden: Sequence[int] = (128, 128)
  embed: Sequence[int] = (128,)
  clamp: float = 2.0
  linear: str = 'lu'
  seed: int = 0
  data_init: bool = True

  def setup(self):
    self.embed_layers = [nn.Dense(w) for w in self.embed]
    self.flow = blocks.Flow(self.num_steps, tuple(self.hidden), self.clamp, self.data_init,
                            self.linear, self.seed)

  def condition(self, h: Array) -> Array:
    for i, layer in enumerate(self.embed_layers):
      h = layer(h)
      if i < len(self.embed_layers) - 1:
        h = nn.gelu(h)
    return h

  def __call__(self, v: Array, h: Array, reverse: bool = False) -> tuple[Array, Array]:
    return self.flow(v, self.condition(h), reverse)

  def inverse(self, nu: Array, h: Array) -> Array:
    return self(nu, h, reverse=True)[0]


def create_state(inn: ConditionalINN, rng: Array, example_v: Array, example_h: Array,
                 tx) -> train_state.TrainState:
  """Train state; ActNorm starts from example_v [n ≥ 2, m] (use a few hundred rows)."""
  params = inn.init(rng, example_v, example_h)['params']
  return train_state.TrainState.create(apply_fn=inn.apply, params=params, tx=tx)


def nll(inn: ConditionalINN, params, v: Array, h: Array) -> tuple[Array, dict]:
  """L of the module docstring for v [B, m] given h [B, d] → (loss, {'prior', 'logdet'})."""
  nu, logdet = inn.apply({'params': params}, v, h)
  m = v.shape[-1]
  prior = 0.5 * jnp.sum(nu ** 2, -1) + 0.5 * m * LOG_2PI
  return jnp.mean(prior - logdet) / m, {'prior': jnp.mean(prior) / m,
                                        'logdet': jnp.mean(logdet) / m}


def make_step(inn: ConditionalINN, noise_std: float = 0.0) -> Callable:
  """Data-parallel train step (state, batch, rng) -> (state, metrics).
  batch: v [b, m] (autoencoder latents), h [b, d] (the classifier's embedding).

  With noise_std > 0, v gets N(0, noise_std²) noise per example from (rng, global example
  index), the same on any number of devices: a density on v is unbounded where the latents
  lie on a thinner set than R^m, and the noise bounds it. Without, rng is unused."""
  def step(state: train_state.TrainState, batch: dict, rng: Array) -> tuple[train_state.TrainState, dict]:
    v = batch['v']
    if noise_std > 0:
      keys = train_state.example_keys(rng, v.shape[0])
      v = v + noise_std * jax.vmap(lambda k: jax.random.normal(k, v.shape[1:], v.dtype))(keys)
    (loss, parts), grads = jax.value_and_grad(
        lambda p: nll(inn, p, v, batch['h']), has_aux=True)(state.params)
    return train_state.apply_gradients(state, grads, dict(parts, loss=loss))
  return step


def residual(inn: ConditionalINN, params, v: Array, h: Array) -> Array:
  """ν = τ(v | h) [B, m]: what v holds beyond h."""
  return inn.apply({'params': params}, v, h)[0]


def sample_invariances(inn: ConditionalINN, params, h: Array, key: Array, n: int,
                       temperature: float = 1.0) -> Array:
  """v [n, B, m]: n latents per row of h [B, d], v = τ⁻¹(ν | h), ν ~ N(0, temperature²·I).

  Draw i of row b uses only fold_in(fold_in(key, b), i), so a row's samples do not depend
  on the other rows or on n (the first k of n draws equal the k draws).
  """
  b = h.shape[0]
  dim = _latent_dim(params)
  def draw(row, i):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, row), i), (dim,))
  nu = jax.vmap(lambda i: jax.vmap(lambda r: draw(r, i))(jnp.arange(b)))(jnp.arange(n))
  nu = temperature * nu.astype(h.dtype)                       # [n, B, m]
  hs = jnp.broadcast_to(h, (n,) + h.shape).reshape(n * b, -1)
  v = inn.apply({'params': params}, nu.reshape(n * b, dim), hs, method='inverse')
  return v.reshape(n, b, dim)


def _latent_dim(params) -> int:
  """m, read from the first ActNorm's loc [m]."""
  return int(params['flow']['steps_0']['actnorm']['loc'].shape[0])
