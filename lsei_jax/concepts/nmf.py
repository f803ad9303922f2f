"""Non-negative matrix factorisation of the ReLU embedding: h [N, d] ≈ W [N, K] · H [K, d].

The dictionary H is the learned parameter; a code W of new embeddings is solved with H fixed
by HALS (hierarchical alternating least squares, Cichocki & Phan 2009), a fixed number of
sweeps, so encode is a pure jit-able function. `fit` factorises a whole matrix (alternating
HALS on W and H); the pipeline's step instead takes a projected gradient step on H against
the HALS codes of a batch (online NMF), so it trains like every other stage.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import train_state
from lsei_jax.concepts import ModuleLearner
from lsei_jax.errors import UserError

Array = jax.Array


def hals_codes(h: Array, H: Array, W: Array, sweeps: int) -> Array:
  """`sweeps` HALS sweeps on W ≥ 0 [N, K] for min ‖h − W H‖², H [K, d] fixed, from W."""
  G = H @ H.T                                         # [K, K]
  R = h @ H.T                                         # [N, K]
  K = H.shape[0]

  def unit(k, W):
    step = (R[:, k] - W @ G[:, k]) / jnp.maximum(G[k, k], 1e-12)
    return W.at[:, k].set(jnp.maximum(W[:, k] + step, 0.0))

  return jax.lax.fori_loop(0, sweeps * K, lambda i, W: unit(i % K, W), W)


def initial_codes(h: Array, H: Array) -> Array:
  """Least-squares codes clipped at 0 [N, K]: the start of HALS."""
  return jnp.maximum(h @ jnp.linalg.pinv(H), 0.0)


def encode(h: Array, H: Array, sweeps: int) -> Array:
  """Non-negative code W [N, K] of h [N, d] under dictionary H [K, d]."""
  return hals_codes(h, H, initial_codes(h, H), sweeps)


def fit(h: Array, rank: int, key: Array, iters: int = 200) -> tuple[Array, Array]:
  """(W [N, K], H [K, d]) ≥ 0 minimising ‖h − W H‖_F for non-negative h [N, d], by `iters`
  rounds of alternating HALS sweeps from a random non-negative start."""
  kw, kh = jax.random.split(key)
  scale = jnp.sqrt(jnp.mean(h) / rank)
  W = jax.random.uniform(kw, (h.shape[0], rank), h.dtype) * scale
  H = jax.random.uniform(kh, (rank, h.shape[1]), h.dtype) * scale

  def round_(_, WH):
    W, H = WH
    W = hals_codes(h, H, W, 1)
    H = hals_codes(h.T, W.T, H.T, 1).T
    return W, H

  return jax.lax.fori_loop(0, iters, round_, (W, H))


class NMFModule(nn.Module):
  """Dictionary H [K, d] ≥ 0; encode solves codes by HALS, decode is W H."""
  hidden_dim: int
  latent_dim: int
  encode_sweeps: int = 20

  def setup(self):
    self.H = self.param('H', lambda key: jax.random.uniform(
        key, (self.latent_dim, self.hidden_dim)) / self.latent_dim)

  def encode(self, h: Array) -> Array:
    return encode(h, self.H, self.encode_sweeps)

  def decode(self, code: Array) -> Array:
    return code @ self.H

  def __call__(self, h: Array) -> Array:
    return self.decode(self.encode(h))


@dataclasses.dataclass(frozen=True)
class Learner(ModuleLearner):
  """NMF; config section model.nmf: latent_dim (K), encode_sweeps."""
  module: NMFModule
  kind: str = 'nmf'
  binary: bool = False

  @classmethod
  def from_config(cls, cfg, embed_dim: int) -> 'Learner':
    return cls(NMFModule(embed_dim, cfg.latent_dim, cfg.encode_sweeps))

  def make_step(self, cfg) -> Callable:
    def step(state, batch: dict, rng: Array):
      del rng
      h = batch['h']
      W = jax.lax.stop_gradient(self.encode(state.params, h))

      def loss_fn(params):
        return jnp.mean((W @ params['H'] - h) ** 2)

      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      state, metrics = train_state.apply_gradients(state, grads, {'loss': loss, 'mse': loss,
                                                    'l0': jnp.mean(jnp.sum(W > 0, -1))})
      # Projection onto the constraint H ≥ 0 (projected gradient).
      return state.replace(params=jax.tree.map(lambda p: jnp.maximum(p, 0.0),
                                               state.params)), metrics
    return step

  def check_input(self, h: np.ndarray) -> None:
    low = float(np.min(h))
    if low < 0:
      raise UserError(f'NMF needs a non-negative embedding (the layer after a ReLU), but h '
                       f'has entries down to {low:.3g}; cut the classifier after a ReLU or '
                       f'set config.model.concepts.kind=topk_sae')
