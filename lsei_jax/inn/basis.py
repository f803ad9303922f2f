"""The factor INN's linear start (docs/method.md § "The INN (issue 26)", *attribute basis*):
a fixed invertible affine map h ↦ x = (h − μ) P that whitens h and rotates it so that
column f estimates attribute f (for every f) and the residual columns carry no attribute's
mean. The flow T of `factor` then starts from x, not from h.

Why: the factor objective (`factor` module) ties a block to its attribute only in
distribution, through a likelihood whose signal per pair is at most a few nats spread over
2d dimensions, and h of a classifier is dominated by one attribute (the demo's colour): a
flow trained from the raw (or standardised) h left colour readable from every block. The
map below puts each attribute where the objective wants it before training starts:

  1. whiten: Σ = Cov(h_s) = V Λ Vᵀ over the units that vary (h_s the standardised h); live
     directions λ_j > rtol·λ_max give u = h_s V_live Λ_live^{-1/2} [N, r]; the others
     (near-null directions, then the constant units, e.g. dead ReLUs, as they are) go last,
     outside the flow.
  2. attribute effects by weighted least squares: u = μ_u + (a − μ_a) B + e, B [F, r], with
     weights w_i = Π_f p(a_if) / p(a_i) (p over the train split's attribute cells) that make
     the attributes independent, as on an unbiased test split;
  3. GLS estimates â = (B Σ_e⁻¹ Bᵀ)⁻¹ B Σ_e⁻¹ u (Σ_e the weighted Cov(e)): â_f reads
     attribute f with unit gain and gain 0 on every other attribute (W Bᵀ = I), with the
     least noise of such linear read-outs; its noise is uncorrelated with any
     direction R ⊥ B (R Σ_e Wᵀ ∝ R Bᵀ = 0), so the residual u Rᵀ neither reads an attribute
     by its mean nor helps a probe read one beside â;
  4. x = [â standardised | u Rᵀ | h_s V_dead], block f's first column the estimate â_f, its
     other factor_dim − 1 columns and the residual from the orthonormal complement R: the
     first of them the direction of m_f = mean(u Rᵀ | a_f) − mean(u Rᵀ | ¬a_f), unweighted,
     within what earlier blocks left of R, so the residual's class means agree for every
     attribute on the train split as it is as well as under the weights. Why: an
     attribute's effect on h may depend on the others (the demo's position flips with
     whether shape and colour agree), so under the weights the residual's mean does not
     move with it but within the train split's majority cells it does, and a probe fit
     there read position from the residual of the unbiased test split (0.59, the limit
     0.55; docs/method.md).

All in float64 on the host; the map is a pure function of the train split's h and
attributes, so an evaluation recomputes it rather than storing it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lsei_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Basis:
  """x = (h − mean) @ matrix [d, d]; h = x @ inverse + mean. live: whitened columns (the
  rest are dead directions of h, last)."""
  mean: np.ndarray
  matrix: np.ndarray
  inverse: np.ndarray
  live: int

  def forward(self, h: np.ndarray) -> np.ndarray:
    """x [N, d] (float32) of h [N, d]."""
    return ((np.asarray(h, np.float64) - self.mean) @ self.matrix).astype(np.float32)

  def backward(self, x: np.ndarray) -> np.ndarray:
    """h [N, d] (float32) of x [N, d]."""
    return (np.asarray(x, np.float64) @ self.inverse + self.mean).astype(np.float32)


def independence_weights(attributes: np.ndarray) -> np.ndarray:
  """float [N], mean 1: w_i = Π_f p(a_if) / p(a_i), p the empirical marginals and joint
  cells of attributes [N, F] (bool); weighted, the attributes are mutually independent."""
  a = np.asarray(attributes).astype(bool)
  cells = a.astype(np.int64) @ (1 << np.arange(a.shape[1], dtype=np.int64))
  _, inv, counts = np.unique(cells, return_inverse=True, return_counts=True)
  p = a.mean(0)
  w = np.prod(np.where(a, p, 1 - p), 1) / (counts[inv] / len(a))
  return w / w.mean()


def mean_effect(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """[k]: mean(x | y) − mean(x | ¬y) of x [N, k] and y [N] (bool), unweighted; 0 where y is
  constant."""
  y = np.asarray(y).astype(bool)
  if y.all() or not y.any():
    return np.zeros(x.shape[1])
  return x[y].mean(0) - x[~y].mean(0)


def fit(h: np.ndarray, attributes: np.ndarray, factor_dim: int = 1, rtol: float = 1e-7,
        shrink: float = 1e-3, ridge: float = 1e-6) -> Basis:
  """The attribute basis (module docstring) of train embeddings h [N, d] and their
  attributes [N, F] (bool): block f = columns [f·factor_dim, (f+1)·factor_dim) (factor_dim
  ≥ 2 for the residual to read no attribute by its unweighted mean, step 4)."""
  h = np.asarray(h, np.float64)
  a = np.asarray(attributes).astype(bool)
  n, d = h.shape
  num = a.shape[1]
  mean, sd = h.mean(0), h.std(0)
  scale = np.where(sd > 1e-6, sd, 1.0)
  hs = (h - mean) / scale
  # Constant units (ReLUs that never fire) are kept out of the eigenproblem and pass as
  # their own columns, last: an eigenvector of the whole covariance would mix them with
  # live units at rounding level (~1e-16), and a probe that standardises its inputs
  # (factor.fit_logistic) then reads h through columns that are 0 to 1e-13.
  varies = sd > 1e-6
  dv = int(varies.sum())
  lam, vec_v = np.linalg.eigh(np.cov(hs[:, varies].T).reshape(dv, dv))
  lam, vec_v = lam[::-1], vec_v[:, ::-1]
  vec = np.zeros((d, d))
  vec[np.flatnonzero(varies), :dv] = vec_v
  vec[np.flatnonzero(~varies), np.arange(dv, d)] = 1.0
  lam = np.concatenate([lam, np.zeros(d - dv)])
  live = int(np.sum(lam > rtol * max(lam[0], 1e-30)))
  if live < num * factor_dim + 1:
    raise UserError(f'h has {live} directions that vary over the train split, fewer than '
                    f'the {num * factor_dim} factor columns plus a residual: lower '
                    f'inn.factor_dim or use a classifier with a wider embedding')
  whiten = vec[:, :live] / np.sqrt(lam[:live] + shrink * lam[0])     # [d, r]
  u = hs @ whiten
  w = independence_weights(a)
  sw = np.sqrt(w)[:, None]
  ac = a - (w[:, None] * a).sum(0) / n
  uc = u - (w[:, None] * u).sum(0) / n
  effects = np.linalg.lstsq(sw * ac, sw * uc, rcond=None)[0]        # B [F, r]
  e = uc - ac @ effects
  cov_e = (w[:, None] * e).T @ e / n + ridge * np.eye(live)
  b_si = np.linalg.solve(cov_e, effects.T).T                         # B Σ_e⁻¹
  gls = np.linalg.solve(b_si @ effects.T, b_si)                      # W [F, r]
  est = u @ gls.T
  gls = gls / est.std(0)[:, None]                                    # unit variance
  q, _ = np.linalg.qr(effects.T, mode='complete')
  comp = q[:, num:].T                                                # R [r − F, r]
  # Column order: block f = [â_f, its mean-effect direction, factor_dim − 2 complement
  # columns], then the residual (orthonormal rows of R, so the map stays invertible).
  rows = []
  for f in range(num):
    rows.append(gls[f:f + 1])
    take = factor_dim - 1
    if take:
      # The residual's mean effect of a_f on the train split as it is (unweighted), in
      # coordinates of the rows of comp; it goes into block f and comp keeps the rest.
      m = mean_effect(u @ comp.T, a[:, f])
      if np.linalg.norm(m) > 0:
        q_m, _ = np.linalg.qr((m / np.linalg.norm(m))[:, None], mode='complete')
        comp = q_m.T @ comp                      # row 0: the direction m, then ⊥ m
    rows.append(comp[:take])
    comp = comp[take:]
  rows.append(comp)
  live_map = np.concatenate(rows)                                    # [r, r]
  live_map = live_map / (u @ live_map.T).std(0)[:, None]             # unit-variance columns
  matrix = np.concatenate([whiten @ live_map.T, vec[:, live:]], 1) / scale[:, None]
  return Basis(mean, matrix, np.linalg.inv(matrix), live)
