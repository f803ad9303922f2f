"""Invertible building blocks for the INNs of docs/method.md § "The INN (issue 26)".

Every module maps x [B, d] (and an optional condition cond [B, c]) to
`(y [B, d], logdet [B])` with logdet = log|det ∂y/∂x| per example, exactly, and has
`inverse(y, cond=None) -> x`. All of them are one `nn.compact` `__call__(x, cond, reverse)`;
`inverse` calls it with reverse=True, so both directions share one set of parameters.
Initialise through the forward direction (`module.init(rng, x)`): ActNorm's data-dependent
start reads the forward activations.

Blocks (Kingma & Dhariwal 2018, "Glow"; Dinh et al. 2017, "Real NVP"):
  ActNorm           y = (x + b) ⊙ exp(s),              logdet = Σ s
  Permute           y = x[:, π] (π fixed by a seed),   logdet = 0
  InvertibleLinear  y = x Wᵀ, W = P L (U + diag e^s),  logdet = Σ s
                    (P fixed permutation, L unit lower, U strictly upper; starts at W = P)
  AffineCoupling    y₁ = x₁, y₂ = x₂ ⊙ exp(ŝ) + t,     logdet = Σ ŝ,
                    (ŝ_raw, t) = MLP([x₁, cond]), ŝ = clamp · tanh(ŝ_raw / clamp)
  Flow              K × (ActNorm → InvertibleLinear|Permute → AffineCoupling)

No library is used: distrax 0.1.9 (the installable JAX bijector library) depends on
`tfp-nightly`, has no ActNorm, and its bijectors hold no Flax parameters, so each block
would still be written here around it; the blocks are a few lines each.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _zeros_logdet(x: Array) -> Array:
  return jnp.zeros(x.shape[:1], x.dtype)


class ActNorm(nn.Module):
  """Per-feature affine y = (x + loc) ⊙ exp(log_scale). x [B, d] → (y [B, d], logdet [B]).

  data_init: at init, loc = −mean(x) and log_scale = −log(std(x) + eps) over the init
  batch, so the output starts standardised (Glow); else loc = 0, log_scale = 0.
  """
  data_init: bool = True
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    del cond
    d = x.shape[-1]
    if self.data_init:
      if self.is_initializing() and x.shape[0] < 2:
        raise ValueError(f'ActNorm data init needs a batch of at least 2 rows to take '
                         f'a std over, got {x.shape[0]}: initialise with more rows')
      # Only evaluated at init; stop_gradient keeps the init free of a data path.
      x0 = jax.lax.stop_gradient(x)
      loc = self.param('loc', lambda _: -jnp.mean(x0, 0))
      log_scale = self.param('log_scale', lambda _: -jnp.log(jnp.std(x0, 0) + self.eps))
    else:
      loc = self.param('loc', nn.initializers.zeros, (d,), x.dtype)
      log_scale = self.param('log_scale', nn.initializers.zeros, (d,), x.dtype)
    logdet = jnp.broadcast_to(jnp.sum(log_scale), x.shape[:1]).astype(x.dtype)
    if reverse:
      return x * jnp.exp(-log_scale) - loc, -logdet
    return (x + loc) * jnp.exp(log_scale), logdet

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


def permutation(d: int, seed: int) -> np.ndarray:
  """The fixed permutation [d] of a block with this seed (NumPy: same on every host)."""
  return np.random.default_rng(seed).permutation(d)


class Permute(nn.Module):
  """y = x[:, π], π = permutation(d, seed). No parameters; logdet = 0."""
  seed: int = 0

  @nn.compact
  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    del cond
    perm = permutation(x.shape[-1], self.seed)
    idx = np.argsort(perm) if reverse else perm
    return x[:, idx], _zeros_logdet(x)

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


class InvertibleLinear(nn.Module):
  """y = x Wᵀ with W = P L (U + diag exp(log_s)). x [B, d] → (y, logdet = Σ log_s [B]).

  P = permutation(d, seed) is fixed; L (unit lower triangular) and U (strictly upper) are
  learned from zero, so W starts as the permutation P. exp(log_s) > 0 keeps W invertible at
  every step; the inverse is two triangular solves.
  """
  seed: int = 0

  @nn.compact
  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    del cond
    d = x.shape[-1]
    lower = self.param('lower', nn.initializers.zeros, (d, d), x.dtype)
    upper = self.param('upper', nn.initializers.zeros, (d, d), x.dtype)
    log_s = self.param('log_s', nn.initializers.zeros, (d,), x.dtype)
    eye = jnp.eye(d, dtype=x.dtype)
    l_mat = jnp.tril(lower, -1) + eye
    u_mat = jnp.triu(upper, 1) + jnp.diag(jnp.exp(log_s))
    perm = permutation(d, self.seed)      # P e_j = e_{perm[j]}: (P v)[perm] = v
    logdet = jnp.broadcast_to(jnp.sum(log_s), x.shape[:1]).astype(x.dtype)
    if not reverse:
      v = x @ u_mat.T @ l_mat.T           # rows: L U x_b
      out = jnp.zeros_like(v).at[:, perm].set(v)
      return out, logdet
    v = x[:, perm]                        # Pᵀ y
    # Solve L U x = v for all rows at once (columns of the transposed system).
    w = jax.scipy.linalg.solve_triangular(l_mat, v.T, lower=True, unit_diagonal=True)
    return jax.scipy.linalg.solve_triangular(u_mat, w, lower=False).T, -logdet

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


class AffineCoupling(nn.Module):
  """Real NVP coupling on x = [x₁ | x₂] (x₁ = first d // 2 features).

  y₂ = x₂ ⊙ exp(ŝ) + t with (ŝ_raw, t) = MLP([x₁, cond]) and ŝ = clamp · tanh(ŝ_raw / clamp):
  the log-scale stays in (−clamp, clamp), so one step can neither overflow nor collapse a
  feature. The MLP's last layer starts at zero: the coupling starts as the identity.
  x [B, d], cond [B, c] or None → (y [B, d], logdet [B]).
  """
  hidden: Sequence[int] = (64, 64)
  clamp: float = 2.0

  @nn.compact
  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    d = x.shape[-1]
    if d < 2:
      raise ValueError(f'AffineCoupling needs at least 2 features, got {d}')
    d1 = d // 2
    x1, x2 = x[:, :d1], x[:, d1:]
    u = x1 if cond is None else jnp.concatenate([x1, cond.astype(x.dtype)], -1)
    for i, width in enumerate(self.hidden):
      u = nn.gelu(nn.Dense(width, name=f'hidden_{i}')(u))
    out = nn.Dense(2 * (d - d1), kernel_init=nn.initializers.zeros, name='out')(u)
    raw, shift = out[:, :d - d1], out[:, d - d1:]
    log_s = self.clamp * jnp.tanh(raw / self.clamp)
    logdet = jnp.sum(log_s, -1)
    if reverse:
      return jnp.concatenate([x1, (x2 - shift) * jnp.exp(-log_s)], -1), -logdet
    return jnp.concatenate([x1, x2 * jnp.exp(log_s) + shift], -1), logdet

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


class FlowStep(nn.Module):
  """ActNorm → InvertibleLinear (or Permute) → AffineCoupling; logdets add."""
  seed: int = 0
  hidden: Sequence[int] = (64, 64)
  clamp: float = 2.0
  data_init: bool = True
  linear: str = 'lu'     # 'lu': InvertibleLinear; 'permute': fixed Permute

  def setup(self):
    if self.linear not in ('lu', 'permute'):
      raise ValueError(f"linear={self.linear!r}: expected 'lu' or 'permute'")
    mix = InvertibleLinear if self.linear == 'lu' else Permute
    self.actnorm = ActNorm(self.data_init)
    self.mix = mix(self.seed)
    self.coupling = AffineCoupling(tuple(self.hidden), self.clamp)

  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    logdet = _zeros_logdet(x)
    layers = (self.actnorm, self.mix, self.coupling)
    for layer in (reversed(layers) if reverse else layers):
      x, ld = layer(x, cond, reverse)
      logdet = logdet + ld
    return x, logdet

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


class Flow(nn.Module):
  """K flow steps: x [B, d] (cond [B, c] for a conditional INN) → (z [B, d], logdet [B]).

  Step k's permutation has seed `seed + k` (distinct fixed permutations per step, chosen
  on the host; not a PRNG stream, since they are architecture, not randomness of a run).
  unpermute: end with the fixed permutation that undoes the steps' starting permutations
  (`composite_permutation`), so that a flow without data init starts as the identity and
  keeps the feature order of its input (the factor INN's blocks start where its linear
  basis put them); logdet 0.
  """
  num_steps: int = 8
  hidden: Sequence[int] = (64, 64)
  clamp: float = 2.0
  data_init: bool = True
  linear: str = 'lu'
  seed: int = 0
  unpermute: bool = False

  def setup(self):
    if self.num_steps < 1:
      raise ValueError(f'num_steps={self.num_steps} must be ≥ 1')
    self.steps = [FlowStep(self.seed + k, tuple(self.hidden), self.clamp, self.data_init,
                           self.linear) for k in range(self.num_steps)]

  def __call__(self, x: Array, cond: Array | None = None, reverse: bool = False
               ) -> tuple[Array, Array]:
    logdet = _zeros_logdet(x)
    if self.unpermute and reverse:
      x = x[:, composite_permutation(x.shape[-1], self.num_steps, self.linear, self.seed)]
    for step in (reversed(self.steps) if reverse else self.steps):
      x, ld = step(x, cond, reverse)
      logdet = logdet + ld
    if self.unpermute and not reverse:
      x = x[:, np.argsort(composite_permutation(x.shape[-1], self.num_steps, self.linear,
                                                self.seed))]
    return x, logdet

  def inverse(self, y: Array, cond: Array | None = None) -> Array:
    return self(y, cond, reverse=True)[0]


def composite_permutation(d: int, num_steps: int, linear: str, seed: int) -> np.ndarray:
  """int [d]: c[j] = the input feature at output position j of a Flow's steps at their
  start (identity couplings and ActNorm, each mix at its permutation)."""
  c = np.arange(d)
  for k in range(num_steps):
    perm = permutation(d, seed + k)
    if linear == 'lu':          # out[:, perm] = v
      nxt = np.empty_like(c)
      nxt[perm] = c
      c = nxt
    else:                       # y = x[:, perm]
      c = c[perm]
  return c


INN = Flow
