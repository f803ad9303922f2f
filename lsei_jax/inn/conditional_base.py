"""The conditional affine base of the invariance INN (docs/method.md § "The invariances as
stages"): a closed-form first layer τ₀ under the conditional flow τ₁ of inn.conditional.

  τ₀(v | h) = L⁻¹ (v − m(h)),     log|det ∂τ₀/∂v| = −Σ_i log L_ii,
  ν = τ₁(τ₀(v | h) | h),           v = m(h) + L τ₁⁻¹(ν | h),

on standardised v [B, m] and h [B, d]. For a fixed h, τ₀ is affine in v and invertible
whatever m(h) is (as a coupling's shift may be any function of its condition). The
conditional mean m is fitted on the train split, in float64 on the host:

  'linear':  m(h) = [h, 1] C,  C = argmin Σ_n |v_n − [h_n, 1] C|² (least squares);
  'nearest': m(h) = v_j,  j = argmin_k |h − h_k|² over the train rows (on a train row
             itself, the nearest other row: leave-one-out, so its residual is not 0);
  'nearest_white': the same in whitened h, u = (h − h̄) U Λ^(−1/2) (C = U Λ Uᵀ the train
             rows' covariance): the Mahalanobis distance under h's own covariance, so that
             a few high-variance directions do not outvote the rest;

and L is the Cholesky factor of the train residuals' covariance (1/N) Σ r rᵀ, r = v − m(h).
With τ₁ at the identity, ν ~ N(0, I) makes p(v | h) = N(m(h), L Lᵀ): for 'linear' the
maximum-likelihood conditional Gaussian with an affine mean. 'nearest' draws around a
train image the classifier represents (almost) as it does the original: a sharp image,
where the mean of many (the linear fit's, or the flow's mode) is a blend the classifier
labels otherwise (docs/method.md). 'none': m = 0, L = I (τ₁ alone).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ('none', 'linear', 'nearest', 'nearest_white')
NEAREST = ('nearest', 'nearest_white')


def fit_linear(h: np.ndarray, v: np.ndarray) -> np.ndarray:
  """C [d + 1, m] (last row: the intercept) of the least-squares fit v ≈ [h, 1] C; float64."""
  h, v = np.asarray(h, np.float64), np.asarray(v, np.float64)
  return np.linalg.lstsq(np.concatenate([h, np.ones((len(h), 1))], 1), v, rcond=None)[0]


def nearest_rows(query: np.ndarray, ref: np.ndarray, *, exclude_self: bool = False,
                 chunk: int = 1024) -> np.ndarray:
  """int [Q]: for each row of query [Q, d] the index of the nearest row of ref [N, d]
  (squared Euclidean distance in float64; ties: the lowest index). exclude_self: query is
  ref (Q = N) and row i may not pick itself. Q·N·d multiply-adds (the demo's leave-one-out
  12288² · 128), in float32: a row whose float32 nearest is clear of every other row by
  float32's error bounds has float64's answer; for any other row (near-ties,
  duplicates) the rows within that window are compared again in float64. At most 2²⁴
  distances (64 MB) held at once."""
  query, ref = np.asarray(query, np.float64), np.asarray(ref, np.float64)
  if exclude_self and len(query) != len(ref):
    raise ValueError(f'exclude_self needs query = ref, got {len(query)} and {len(ref)} rows')
  n, d = ref.shape
  chunk = max(1, min(chunk, (1 << 24) // max(n, 1)))
  ref_sq = np.sum(ref ** 2, 1)
  ref32, ref_sq32 = ref.astype(np.float32), ref_sq.astype(np.float32)
  # |fl₃₂(|r|² − 2 q·r) − (|r|² − 2 q·r)| ≤ (d + 2) u (|q| + |r|)², u = 2⁻²⁴ (Higham's
  # inner-product bound, plus the roundings of q, r, |r|² to float32 and of the difference).
  err_scale = (d + 2) * 2.0 ** -24
  ref_norm = np.sqrt(ref_sq)
  max_norm = float(ref_norm.max(initial=0.0))
  out = np.empty(len(query), np.int64)
  buf = np.empty((min(chunk, len(query)), n), np.float32)   # reused: no fresh pages a chunk
  for i in range(0, len(query), chunk):
    q = query[i:i + chunk]
    rows = np.arange(len(q))
    dist = np.matmul(q.astype(np.float32), ref32.T, out=buf[:len(q)])
    dist *= -2
    dist += ref_sq32[None]                                  # |q|² left out: per row
    if exclude_self:
      dist[rows, rows + i] = np.inf
    best = np.argmin(dist, 1)
    first = dist[rows, best].copy()
    q_norm = np.sqrt(np.sum(q ** 2, 1))
    # Row j may be float64's nearest only if its float32 distance less its bound is at most
    # the float32 nearest's plus its bound. Cheap test first: the runner-up less the largest
    # bound of the row (any j's) clears it; only rows it cannot clear pay for every j's.
    window = first + err_scale * (q_norm + ref_norm[best]) ** 2
    dist[rows, best] = np.inf
    second = np.min(dist, 1)
    dist[rows, best] = first
    unclear = second - err_scale * (q_norm + max_norm) ** 2 <= window
    if np.any(unclear):   # float64 distances to the rows within the window only
      bound = err_scale * (q_norm[unclear, None] + ref_norm[None]) ** 2
      inside = dist[unclear] - bound <= window[unclear, None]
      row, col = np.nonzero(inside)
      exact = ref_sq[col] - 2 * np.einsum('pd,pd->p', q[unclear][row], ref[col])
      order = np.lexsort((col, exact, row))               # by row, distance, index
      pick = order[np.r_[True, row[order][1:] != row[order][:-1]]]
      best[unclear] = col[pick]
    out[i:i + chunk] = best
  return out


def whitening(h: np.ndarray, rel_floor: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
  """(h̄ [d], U Λ^(−1/2) [d, d]) of rows h [N, d] (float64): (h − h̄) U Λ^(−1/2) has identity
  covariance (1/N). Eigenvalues below rel_floor · the largest (dead units, exactly
  collinear features) are raised to it, so that the map stays finite."""
  h = np.asarray(h, np.float64)
  mean = h.mean(0)
  lam, u = np.linalg.eigh((h - mean).T @ (h - mean) / len(h))
  lam = np.maximum(lam, rel_floor * max(float(lam[-1]), 1e-300))
  return mean, u / np.sqrt(lam)[None]


def residual_cholesky(r: np.ndarray) -> np.ndarray:
  """L [m, m] lower triangular with L Lᵀ = (1/N) rᵀ r of residuals r [N, m] (float64). A
  jitter of 1e-9 · mean variance on the diagonal keeps it defined where N < m or the
  residuals are rank-deficient."""
  r = np.asarray(r, np.float64)
  cov = r.T @ r / len(r)
  return np.linalg.cholesky(cov + 1e-9 * np.mean(np.diag(cov)) * np.eye(len(cov)))


@dataclasses.dataclass(frozen=True)
class AffineBase:
  """A fitted τ₀: `mean(h)` [B, m] (float64) and the Cholesky factor `chol` [m, m]."""
  kind: str
  chol: np.ndarray
  coef: np.ndarray | None = None      # 'linear': C [d + 1, m]
  h_ref: np.ndarray | None = None     # nearest kinds: the train rows' h [N, d] (whitened
  v_ref: np.ndarray | None = None     # for 'nearest_white') and v [N, m]
  white: tuple | None = None          # 'nearest_white': (h̄ [d], U Λ^(−1/2) [d, d])

  def metric(self, h: np.ndarray) -> np.ndarray:
    """h [B, d] in the coordinates the neighbours are searched in (float64)."""
    h = np.asarray(h, np.float64)
    return h if self.white is None else (h - self.white[0]) @ self.white[1]

  def mean(self, h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    if self.kind == 'linear':
      return h @ self.coef[:-1] + self.coef[-1]
    if self.kind in NEAREST:
      return self.v_ref[self.neighbours(h)]
    return np.zeros((len(h), len(self.chol)))

  def neighbours(self, h: np.ndarray) -> np.ndarray:
    """int [B]: the train row whose v is m(h) (the nearest kinds only)."""
    if self.kind not in NEAREST:
      raise ValueError(f"neighbours: the base is {self.kind!r}, not 'nearest'")
    return nearest_rows(self.metric(h), self.h_ref)


def fit(kind: str, h: np.ndarray, v: np.ndarray) -> tuple[AffineBase, np.ndarray]:
  """(τ₀ fitted on train h [N, d], v [N, m], m(h) of the train rows [N, m] float64: for
  'nearest' leave-one-out, the residuals L is the factor of)."""
  if kind not in KINDS:
    raise ValueError(f'conditional base {kind!r} is not one of {", ".join(KINDS)}')
  h, v = np.asarray(h, np.float64), np.asarray(v, np.float64)
  if kind == 'none':
    return AffineBase(kind, np.eye(v.shape[1])), np.zeros_like(v)
  if kind == 'linear':
    coef = fit_linear(h, v)
    base = AffineBase(kind, np.eye(v.shape[1]), coef=coef)
    train_mean = base.mean(h)
  else:
    white = whitening(h) if kind == 'nearest_white' else None
    base = AffineBase(kind, np.eye(v.shape[1]), v_ref=v, white=white)
    base = dataclasses.replace(base, h_ref=base.metric(h))
    train_mean = v[nearest_rows(base.h_ref, base.h_ref, exclude_self=True)]
  return dataclasses.replace(base, chol=residual_cholesky(v - train_mean)), train_mean


@jax.jit   # one executable, where eager calls compiled one per primitive (6 of them)
def affine_forward(mean: jax.Array, chol: jax.Array, v: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """τ₀: (m(h) [B, m], L [m, m], v [B, m]) → (ε = L⁻¹(v − m(h)) [B, m], logdet [B])."""
  eps = jax.scipy.linalg.solve_triangular(chol, (v - mean).T, lower=True).T
  logdet = -jnp.sum(jnp.log(jnp.diagonal(chol)))
  return eps, jnp.broadcast_to(logdet, v.shape[:1])


@jax.jit
def affine_inverse(mean: jax.Array, chol: jax.Array, eps: jax.Array) -> jax.Array:
  """τ₀⁻¹: v = m(h) + L ε [B, m] (ε [B, m], or [n, B, m] with mean [B, m])."""
  return mean + eps @ chol.T
