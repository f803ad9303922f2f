"""The conditional affine base τ₀(v | h) = L⁻¹(v − m(h)) of the invariance INN
(lsei_jax.inn.conditional_base), against float64 NumPy and jax.jacfwd oracles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax.inn import conditional_base as cb


def _data(n=400, d=5, m=7, seed=0):
  """v = [h, 1] C + r with r correlated Gaussian noise: a known linear conditional."""
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(n, d))
  coef = rng.normal(size=(d + 1, m))
  mix = rng.normal(size=(m, m)) * 0.3
  v = np.concatenate([h, np.ones((n, 1))], 1) @ coef + rng.normal(size=(n, m)) @ mix
  return h, v, coef


def test_linear_fit_is_the_least_squares_solution():
  h, v, coef = _data()
  c = cb.fit_linear(h, v)
  x = np.concatenate([h, np.ones((len(h), 1))], 1)
  # Normal equations: the residual is orthogonal to every column of the design (float64
  # rounding of sums of 400 O(1) products).
  np.testing.assert_allclose(x.T @ (v - x @ c), 0, atol=1e-10)
  # Without noise the fit recovers the coefficients exactly (to float64 rounding).
  np.testing.assert_allclose(cb.fit_linear(h, x @ coef), coef, atol=1e-12)
  base, train_mean = cb.fit('linear', h, v)
  np.testing.assert_allclose(train_mean, x @ c, atol=1e-12)
  np.testing.assert_allclose(base.mean(h[:3]), x[:3] @ c, atol=1e-12)
  r = v - x @ c
  # L Lᵀ is the residual covariance (the jitter is 1e-9 of the mean variance).
  np.testing.assert_allclose(base.chol @ base.chol.T, r.T @ r / len(r),
                             atol=1e-8 * np.mean(np.diag(r.T @ r / len(r))))
  assert np.allclose(base.chol, np.tril(base.chol)) and np.all(np.diag(base.chol) > 0)


def test_nearest_rows_against_a_brute_force_oracle():
  rng = np.random.default_rng(1)
  ref, query = rng.normal(size=(300, 4)), rng.normal(size=(50, 4))
  dist = ((query[:, None] - ref[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(cb.nearest_rows(query, ref, chunk=7), np.argmin(dist, 1))
  np.testing.assert_array_equal(cb.nearest_rows(query, ref, chunk=1), np.argmin(dist, 1))
  self_dist = ((ref[:, None] - ref[None]) ** 2).sum(-1)
  np.fill_diagonal(self_dist, np.inf)
  loo = cb.nearest_rows(ref, ref, exclude_self=True, chunk=64)
  np.testing.assert_array_equal(loo, np.argmin(self_dist, 1))
  assert np.all(loo != np.arange(300))
  np.testing.assert_array_equal(cb.nearest_rows(ref, ref), np.arange(300))
  with pytest.raises(ValueError, match='exclude_self'):
    cb.nearest_rows(query, ref, exclude_self=True)


def test_nearest_rows_resolves_what_float32_cannot():
  # 40 rows at distance ~|c| = 8 from the queries (near 0) whose squared distances differ by ~1e-5,
  # under float32's resolution of |r|² − 2 q·r (~64 · 6e-8 per rounding, summed over 16
  # coordinates): a float32 argmin alone picks wrongly; the rows whose float32 nearest is
  # not clear of the others by the error bound, computed again in float64, give the
  # float64 brute force's answer.
  rng = np.random.default_rng(0)
  c = np.full(16, 2.0)
  ref = c + 1e-6 * rng.normal(size=(40, 16))
  ref = np.concatenate([ref, -2 * c + rng.normal(size=(200, 16))], 0)   # far rows
  query = 0.3 * rng.normal(size=(30, 16))
  dist = ((query[:, None] - ref[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(cb.nearest_rows(query, ref, chunk=7), np.argmin(dist, 1))
  naive = np.argmin(np.sum(ref.astype(np.float32) ** 2, 1)[None]
                    - 2 * query.astype(np.float32) @ ref.astype(np.float32).T, 1)
  assert np.any(naive != np.argmin(dist, 1))      # the float32 argmin alone is wrong here
  # Leave-one-out among the near-tied rows themselves.
  self_dist = ((ref[:, None] - ref[None]) ** 2).sum(-1)
  np.fill_diagonal(self_dist, np.inf)
  np.testing.assert_array_equal(cb.nearest_rows(ref, ref, exclude_self=True, chunk=16),
                                np.argmin(self_dist, 1))


def test_nearest_base_is_leave_one_out_on_the_train_rows():
  h, v, _ = _data(n=120)
  base, train_mean = cb.fit('nearest', h, v)
  self_dist = ((h[:, None] - h[None]) ** 2).sum(-1)
  np.fill_diagonal(self_dist, np.inf)
  np.testing.assert_array_equal(train_mean, v[np.argmin(self_dist, 1)])
  # A query at a train row's h gets that row's v (distance 0), exactly.
  np.testing.assert_array_equal(base.mean(h[[4, 9]]), v[[4, 9]])
  np.testing.assert_array_equal(base.neighbours(h[[4, 9]]), [4, 9])
  r = v - train_mean
  np.testing.assert_allclose(base.chol @ base.chol.T, r.T @ r / len(r),
                             atol=1e-8 * np.mean(np.diag(r.T @ r / len(r))))
  none, zero = cb.fit('none', h, v)
  np.testing.assert_array_equal(none.chol, np.eye(v.shape[1]))
  assert not zero.any() and not none.mean(h).any()
  with pytest.raises(ValueError, match='not one of'):
    cb.fit('quadratic', h, v)
  with pytest.raises(ValueError, match="not 'nearest'"):
    none.neighbours(h)


def test_whitening_gives_identity_covariance():
  rng = np.random.default_rng(3)
  h = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4)) + 5.0
  mean, w = cb.whitening(h)
  u = (h - mean) @ w
  # float64 eigendecomposition of a well-conditioned 4×4 covariance: rounding ~1e-13.
  np.testing.assert_allclose(u.T @ u / len(u), np.eye(4), atol=1e-10)
  np.testing.assert_allclose(mean, h.mean(0), rtol=0, atol=1e-12)


def test_nearest_white_is_the_mahalanobis_nearest():
  """Against a brute-force Mahalanobis distance with the inverse covariance (float64), on
  features of very unequal scales, where it and the Euclidean nearest differ."""
  rng = np.random.default_rng(4)
  n, d = 150, 3
  h = rng.normal(size=(n, d)) @ np.array([[30.0, 0, 0], [29.0, 1.0, 0], [0, 0, 0.2]])
  v = rng.normal(size=(n, 2))
  cov = np.cov(h.T, bias=True)
  prec = np.linalg.inv(cov)
  diff = h[:, None] - h[None]
  maha = np.einsum('ijd,de,ije->ij', diff, prec, diff)
  np.fill_diagonal(maha, np.inf)
  base, train_mean = cb.fit('nearest_white', h, v)
  np.testing.assert_array_equal(train_mean, v[np.argmin(maha, 1)])
  query = rng.normal(size=(20, d)) @ np.array([[30.0, 0, 0], [29.0, 1.0, 0], [0, 0, 0.2]])
  qd = query[:, None] - h[None]
  want = np.argmin(np.einsum('ijd,de,ije->ij', qd, prec, qd), 1)
  np.testing.assert_array_equal(base.neighbours(query), want)
  np.testing.assert_array_equal(base.mean(query), v[want])
  eucl = np.argmin(((query[:, None] - h[None]) ** 2).sum(-1), 1)
  assert np.any(eucl != want)       # the metric matters on these data


def test_affine_layer_inverse_and_logdet_against_jacfwd():
  h, v, _ = _data(n=200)
  base, _ = cb.fit('linear', h, v)
  with jax.enable_x64(True):
    mean, chol, x = (jnp.asarray(a, jnp.float64) for a in (base.mean(h[:6]), base.chol, v[:6]))
    eps, logdet = cb.affine_forward(mean, chol, x)
    # ε = L⁻¹(v − m): against NumPy's general solve, float64.
    np.testing.assert_allclose(np.asarray(eps), np.linalg.solve(base.chol, (v[:6] - base.mean(h[:6])).T).T,
                               atol=1e-10)
    np.testing.assert_allclose(np.asarray(cb.affine_inverse(mean, chol, eps)), v[:6], atol=1e-10)
    jac = jax.vmap(jax.jacfwd(lambda vi, mi: cb.affine_forward(mi[None], chol, vi[None])[0][0]))(
        x, mean)
    _, oracle = np.linalg.slogdet(np.asarray(jac))
    np.testing.assert_allclose(np.asarray(logdet), oracle, atol=1e-10)
    # Samples [n, B, m] broadcast over the leading axis.
    z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, v.shape[1])))
    np.testing.assert_allclose(np.asarray(cb.affine_inverse(mean, chol, z))[1],
                               np.asarray(cb.affine_inverse(mean, chol, z[1])), atol=1e-12)
  # N(0, I) through τ₀⁻¹ has covariance L Lᵀ: the residual covariance (sampling error of
  # 20000 draws, ~3/√20000 of the scale).
  z = np.random.default_rng(4).normal(size=(20000, v.shape[1]))
  draws = np.asarray(cb.affine_inverse(np.zeros((1, v.shape[1])), base.chol, z))
  cov = base.chol @ base.chol.T
  np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.03 * np.max(np.diag(cov)))
