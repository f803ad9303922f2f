"""The factor INN on h (Esser, Rombach & Ommer, CVPR 2020, "A Disentangling Invertible
Interpretation Network"; used in Rombach, Esser & Ommer, ECCV 2020). Equations:
docs/method.md § "The INN (issue 26)".

An invertible T maps h [B, d] to z = T(h) [B, d], read as F factor
blocks of d_f features each (block f = z[:, f·d_f:(f+1)·d_f], one per annotated attribute)
and a residual block z[:, F·d_f:] of d − F·d_f features. Training pairs (h_a, h_b) share
the value of attribute f; their likelihood is a standard normal on every block except f,
where the pair is jointly normal with correlation σ per feature:

  −log p(z_a, z_b | f) = Σ_{k≠f} ½(|z_a^k|² + |z_b^k|²)
                         + Σ_{i∈f} [(z_a,i² − 2σ z_a,i z_b,i + z_b,i²) / (2(1−σ²)) + ½ log(1−σ²)]
                         + d log 2π
  L = E_pairs[−log p(T(h_a), T(h_b) | f) − log|det T'(h_a)| − log|det T'(h_b)|] / (2d)

(nats per dimension; f = −1 marks a pair that shares nothing: both independent normals).
In the pipeline T = flow ∘ A with A the fixed attribute basis of `inn.basis` (its log-det a
constant, left out) and the flow (a `blocks.Flow` that starts as the identity) on the first
flow_dim features only, the rest passed through: d above is then flow_dim, and this
module's h is A(h).
σ is fixed (config), not learned: a learned σ can fall to 0 and undo the factorisation.
Block f then carries what pairs sharing attribute f have in common, which includes the
attribute and excludes attributes independent of it; the residual carries the rest.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.errors import UserError
from lsei_jax.inn import blocks
from lsei_jax import train_state

Array = jax.Array
LOG_2PI = float(np.log(2 * np.pi))


@dataclasses.dataclass(frozen=True)
class FactorLayout:
  """How z [B, dim] splits: num_factors blocks of factor_dim features, then the residual."""
  dim: int
  num_factors: int
  factor_dim: int

  def __post_init__(self):
    if self.num_factors < 1 or self.factor_dim < 1:
      raise UserError(f'the factor INN needs num_factors ≥ 1 and factor_dim ≥ 1, got '
                      f'{self.num_factors} and {self.factor_dim}')
    if self.num_factors * self.factor_dim > self.dim:
      raise UserError(f'{self.num_factors} factors of factor_dim={self.factor_dim} do not '
                      f'fit in h of dim {self.dim}: lower inn.factor_dim or use fewer '
                      f'inn.attributes')

  @property
  def residual_dim(self) -> int:
    return self.dim - self.num_factors * self.factor_dim

  def block(self, f: int) -> slice:
    """Columns of block f; f = num_factors is the residual."""
    start = f * self.factor_dim
    return slice(start, self.dim if f == self.num_factors else start + self.factor_dim)

  def block_ids(self) -> np.ndarray:
    """int [dim]: the block of each feature (num_factors for the residual)."""
    return np.minimum(np.arange(self.dim) // self.factor_dim, self.num_factors)


@dataclasses.dataclass(frozen=True)
class FactorINN:
  """The flow, its layout and the fixed pair correlation σ.

  flow_dim: the flow acts on the first flow_dim features (the factor blocks and the start
  of the residual); the rest of the residual passes through unchanged (None: all of them).
  """
  flow: blocks.Flow
  layout: FactorLayout
  sigma: float = 0.9
  noise_std: float = 0.0   # training only: h + N(0, noise_std²) per example (see make_step)
  flow_dim: int | None = None

  @property
  def k(self) -> int:
    return self.layout.dim if self.flow_dim is None else self.flow_dim

  @property
  def flow_layout(self) -> FactorLayout:
    """The layout of the flow's own features: the same blocks, a shorter residual."""
    return FactorLayout(self.k, self.layout.num_factors, self.layout.factor_dim)


def build(cfg, dim: int, num_factors: int) -> FactorINN:
  """From a config section (`config.inn`): factor_dim, flow_dim (0: all of dim), num_steps,
  hidden, clamp, linear, sigma, noise_std, seed, unpermute (default True: the flow starts
  as the identity, for inputs already in the attribute basis)."""
  sigma = float(cfg.get('sigma', 0.9))
  if not 0.0 < sigma < 1.0:
    raise UserError(f'inn.sigma={sigma} must be in (0, 1): the correlation of a shared factor')
  noise_std = float(cfg.get('noise_std', 0.0))
  if noise_std < 0:
    raise UserError(f'inn.noise_std={noise_std} must be ≥ 0')
  flow = blocks.Flow(num_steps=int(cfg.get('num_steps', 8)),
                     hidden=tuple(cfg.get('hidden', (128, 128))),
                     clamp=float(cfg.get('clamp', 2.0)), linear=cfg.get('linear', 'lu'),
                     seed=int(cfg.get('seed', 0)),
                     unpermute=bool(cfg.get('unpermute', True)))
  layout = FactorLayout(dim, num_factors, int(cfg.get('factor_dim', 1)))
  flow_dim = int(cfg.get('flow_dim', 0)) or dim
  if not num_factors * layout.factor_dim < flow_dim <= dim:
    raise UserError(f'inn.flow_dim={flow_dim} must exceed the {num_factors * layout.factor_dim}'
                    f' factor features and be at most dim={dim} (0: all of h)')
  return FactorINN(flow, layout, sigma, noise_std, flow_dim)


def create_state(model: FactorINN, rng: Array, example_h: Array, tx) -> train_state.TrainState:
  """Train state; ActNorm starts from example_h [n ≥ 2, d] (use a few hundred rows)."""
  return train_state.create_train_state(model.flow, rng, example_h[:, :model.k], tx)


# ----------------------------------------------------------------------------- objective
def block_mask(layout: FactorLayout, factor: Array) -> Array:
  """float [B, d]: 1 on the features of block factor[b] (all 0 where factor[b] = −1)."""
  ids = jnp.asarray(layout.block_ids())
  return (ids[None, :] == jnp.asarray(factor)[:, None]).astype(jnp.float32)


def pair_nll(z_a: Array, z_b: Array, factor: Array, layout: FactorLayout, sigma: float
             ) -> Array:
  """−log p(z_a, z_b | f) [B] of the module docstring. z_a, z_b [B, d]; factor int [B]."""
  shared = block_mask(layout, factor).astype(z_a.dtype)
  indep = 0.5 * (z_a ** 2 + z_b ** 2)
  one_m = 1.0 - sigma ** 2
  joint = (z_a ** 2 - 2 * sigma * z_a * z_b + z_b ** 2) / (2 * one_m) + 0.5 * np.log(one_m)
  return jnp.sum(jnp.where(shared > 0, joint, indep), -1) + layout.dim * LOG_2PI


def factor_loss(model: FactorINN, params, h_a: Array, h_b: Array, factor: Array
                ) -> tuple[Array, dict]:
  """L of the module docstring (nats / dim) for pairs h_a, h_b [B, d] sharing factor [B],
  over the flow's first model.k features (the rest pass through: a constant term).

  → (loss, {'nll', 'logdet', 'shared_corr'}): the prior term and the mean logdet per
  image, both per dimension, and the mean z_a·z_b over shared features (→ σ when fitted).
  """
  b = h_a.shape[0]
  k = model.k
  z, logdet = model.flow.apply({'params': params},
                               jnp.concatenate([h_a[:, :k], h_b[:, :k]], 0))
  z_a, z_b = z[:b], z[b:]
  nll = pair_nll(z_a, z_b, factor, model.flow_layout, model.sigma)
  d = k
  loss = jnp.mean(nll - logdet[:b] - logdet[b:]) / (2 * d)
  shared = block_mask(model.flow_layout, factor)
  corr = jnp.sum(shared * z_a * z_b) / jnp.maximum(jnp.sum(shared), 1.0)
  return loss, {'nll': jnp.mean(nll) / (2 * d), 'logdet': jnp.mean(logdet) / d,
                'shared_corr': corr}


def make_step(model: FactorINN) -> Callable:
  """Data-parallel train step (state, batch, rng) -> (state, metrics); run it through
  `parallel.data_parallel_step`. batch: h_a [b, d], h_b [b, d], factor int32 [b].

  With model.noise_std > 0, each h gets N(0, noise_std²) noise drawn from (rng, global
  example index), the same on any number of devices: a density on h is unbounded where a
  feature is constant (a dead ReLU unit), and the noise bounds it. Without, rng is unused.
  """
  def step(state: train_state.TrainState, batch: dict, rng: Array) -> tuple[train_state.TrainState, dict]:
    h_a, h_b = batch['h_a'], batch['h_b']
    if model.noise_std > 0:
      keys = train_state.example_keys(rng, h_a.shape[0])
      eps = jax.vmap(lambda k: jax.random.normal(k, (2,) + h_a.shape[1:], h_a.dtype))(keys)
      h_a, h_b = h_a + model.noise_std * eps[:, 0], h_b + model.noise_std * eps[:, 1]

    def loss_fn(params):
      return factor_loss(model, params, h_a, h_b, batch['factor'])
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return train_state.apply_gradients(state, grads, dict(parts, loss=loss))
  return step


# ----------------------------------------------------------------------------- pairs
def sample_pairs(attributes: np.ndarray, rng: np.random.Generator,
                 factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One pair per example: (a = arange(N), b [N], factor [N]) with attributes[b, f] ==
  attributes[a, f] and b ≠ a.

  attributes [N, F] (bool or int values); factor f of row i is drawn uniformly among the
  factors (default all F) whose value at row i has another example; −1 where none has.
  Deterministic given rng's state.
  """
  attrs = np.asarray(attributes)
  n, num = attrs.shape
  factors = np.arange(num) if factors is None else np.asarray(factors)
  # Group sizes: how many rows share row i's value of each factor.
  ok = np.zeros((n, len(factors)), bool)
  for j, f in enumerate(factors):
    _, inv, counts = np.unique(attrs[:, f], return_inverse=True, return_counts=True)
    ok[:, j] = counts[inv] >= 2
  u = rng.random((n, len(factors)))
  choice = np.argmax(np.where(ok, u, -1.0), 1)          # uniform among allowed factors
  factor = np.where(ok.any(1), factors[choice], -1).astype(np.int32)
  partner = np.arange(n)
  r = rng.random(n)
  for f in factors:
    for value in np.unique(attrs[:, f]):
      members = np.flatnonzero(attrs[:, f] == value)
      rows = members[factor[members] == f]
      if len(rows) == 0:
        continue
      pos = np.searchsorted(members, rows)               # each row's place in its group
      k = np.minimum((r[rows] * (len(members) - 1)).astype(np.int64), len(members) - 2)
      partner[rows] = members[k + (k >= pos)]            # skip the row itself
  return np.arange(n), partner, factor


def sample_pair_table(attributes: np.ndarray, rng: np.random.Generator,
                      pairs_per_example: int, factors: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """pairs_per_example rounds of `sample_pairs` (one rng, in order), concatenated:
  (a, b, factor) each [N · pairs_per_example]. A stage can draw its batches of pair
  indices from this table like any other array (`pair_batch` turns them into h's)."""
  if pairs_per_example < 1:
    raise UserError(f'inn.pairs_per_example={pairs_per_example} must be ≥ 1')
  rounds = [sample_pairs(attributes, rng, factors) for _ in range(pairs_per_example)]
  return tuple(np.concatenate(parts) for parts in zip(*rounds))


def pair_batch(h: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
               rows: np.ndarray) -> dict:
  """The step's batch for pair indices rows [b]: {'h_a', 'h_b' [b, d], 'factor' [b]}."""
  a, b, f = pairs
  return {'h_a': h[a[rows]], 'h_b': h[b[rows]], 'factor': f[rows]}


# ----------------------------------------------------------------------------- use
def encode(model: FactorINN, params, h: Array) -> Array:
  """z = T(h) [B, d] (the features past model.k pass through)."""
  k = model.k
  return jnp.concatenate([model.flow.apply({'params': params}, h[:, :k])[0], h[:, k:]], -1)


def decode(model: FactorINN, params, z: Array) -> Array:
  """h = T⁻¹(z) [B, d]."""
  k = model.k
  return jnp.concatenate([model.flow.apply({'params': params}, z[:, :k], method='inverse'),
                          z[:, k:]], -1)


def swap_factor(z: Array, z_other: Array, f: int, layout: FactorLayout) -> Array:
  """z [B, d] with block f taken from z_other [B, d] (e.g. images of the other value)."""
  cols = layout.block(f)
  return jnp.asarray(z).at[:, cols].set(jnp.asarray(z_other)[:, cols])


def class_means(z: np.ndarray, labels: np.ndarray, layout: FactorLayout) -> np.ndarray:
  """float [F, 2, d_f]: mean of block f over the rows with attribute f = 0 and = 1."""
  z, labels = np.asarray(z, np.float64), np.asarray(labels).astype(bool)
  out = np.zeros((layout.num_factors, 2, layout.factor_dim))
  for f in range(layout.num_factors):
    for v in (0, 1):
      sel = labels[:, f] == v
      if not sel.any():
        raise UserError(f'attribute {f} has no example with value {v}: its block has no '
                        f'class mean to flip to')
      out[f, v] = z[sel][:, layout.block(f)].mean(0)
  return out


def flip_factor(z: Array, f: int, layout: FactorLayout, labels: np.ndarray | None = None,
                means: np.ndarray | None = None) -> Array:
  """Moves block f of z [B, d] to the other value of attribute f.

  With means ([F, 2, d_f], `class_means`) and labels ([B, F] in {0, 1}): translates block f
  from its class mean to the other class's, keeping each row's offset. Without: negates
  block f (the mirror image under the symmetric prior).
  """
  z = jnp.asarray(z)
  cols = layout.block(f)
  if means is not None and labels is None:
    raise ValueError('flip_factor: class means need the rows\' labels [B, F] to know which '
                     'mean each row leaves')
  if means is None:
    return z.at[:, cols].multiply(-1.0)
  y = np.asarray(labels)[:, f].astype(np.int64)
  shift = means[f, 1 - y] - means[f, y]                  # [B, d_f]
  return z.at[:, cols].add(jnp.asarray(shift, z.dtype))


# ----------------------------------------------------------------------------- probes
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 30
                 ) -> tuple[np.ndarray, float]:
  """L2-regularised logistic regression by Newton's method (IRLS) in float64.
  x [N, k], y [N] in {0, 1} → (w [k], b); on standardised x, then mapped back."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu, sd = x.mean(0), x.std(0) + 1e-12
  xs = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
  w = np.zeros(xs.shape[1])
  reg = l2 * len(x) * np.r_[np.ones(x.shape[1]), 0.0]   # the bias is not shrunk
  for _ in range(iters):
    p = 1 / (1 + np.exp(-np.clip(xs @ w, -30, 30)))
    grad = xs.T @ (p - y) + reg * w
    hess = (xs * (p * (1 - p))[:, None]).T @ xs + np.diag(reg) + 1e-9 * np.eye(len(w))
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.max(np.abs(step)) < 1e-10:
      break
  coef = w[:-1] / sd
  return coef, float(w[-1] - mu @ coef)


def probe_predict(probe: tuple[np.ndarray, float], x: np.ndarray) -> np.ndarray:
  """bool [N]: the probe's decision on x [N, k]."""
  w, b = probe
  return np.asarray(x, np.float64) @ w + b > 0


def block_probe_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray,
                         y_test: np.ndarray, layout: FactorLayout) -> np.ndarray:
  """float [A, F + 1]: test accuracy of a logistic probe for attribute a (y [N, A] in {0, 1})
  trained on block k of z (k = F: the residual) of the train rows."""
  y_train, y_test = np.asarray(y_train).astype(bool), np.asarray(y_test).astype(bool)
  out = np.zeros((y_train.shape[1], layout.num_factors + 1))
  for k in range(layout.num_factors + 1):
    cols = layout.block(k)
    if cols.stop <= cols.start:                   # an empty residual reads nothing
      out[:, k] = chance_accuracy(y_test)
      continue
    for a in range(y_train.shape[1]):
      probe = fit_logistic(np.asarray(z_train)[:, cols], y_train[:, a])
      out[a, k] = np.mean(probe_predict(probe, np.asarray(z_test)[:, cols]) == y_test[:, a])
  return out


def chance_accuracy(y: np.ndarray) -> np.ndarray:
  """float [A]: the majority-class rate of each attribute (what a probe reads from nothing)."""
  p = np.asarray(y).astype(bool).mean(0)
  return np.maximum(p, 1 - p)


def evaluate(model: FactorINN, params, h_train: np.ndarray, y_train: np.ndarray,
             h_test: np.ndarray, y_test: np.ndarray,
             encode_fn: Callable[[Array], Array] | None = None,
             h_probe: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
  """The factor INN's own metrics (attribute a ↔ block a; y [N, F] in {0, 1}):

  block_accuracy [F, F + 1] (`block_probe_accuracy`, test split), own_block [F] (its
  diagonal), other_max [F] (the best other block, residual included), h_accuracy [F]
  (the probe on h itself), chance [F], round_trip_max_abs (max |T⁻¹(T(h)) − h| on test).
  encode_fn: a jitted h → z (default: `encode` un-jitted). h_probe: (train, test) inputs of
  the probe on h itself when the flow reads a transform of h (default: h_train, h_test).
  """
  enc = encode_fn or (lambda h: encode(model, params, h))
  z_train, z_test = np.asarray(enc(jnp.asarray(h_train))), np.asarray(enc(jnp.asarray(h_test)))
  acc = block_probe_accuracy(z_train, y_train, z_test, y_test, model.layout)
  num = model.layout.num_factors
  if acc.shape[0] != num:
    raise ValueError(f'{acc.shape[0]} attributes for {num} factor blocks: pass the '
                     f'attributes the blocks were trained for, in order')
  p_train, p_test = h_probe or (h_train, h_test)
  h_acc = np.array([np.mean(probe_predict(fit_logistic(p_train, y_train[:, a]), p_test)
                            == np.asarray(y_test)[:, a].astype(bool)) for a in range(num)])
  others = np.where(np.eye(num, num + 1, dtype=bool), -np.inf, acc)
  back = decode(model, params, jnp.asarray(z_test))
  return {'block_accuracy': acc, 'own_block': np.diag(acc).copy(),
          'other_max': others.max(1), 'h_accuracy': h_acc,
          'chance': chance_accuracy(y_test),
          'round_trip_max_abs': float(jnp.max(jnp.abs(back - jnp.asarray(h_test))))}
