"""The linear (PCA) autoencoder of the invariance stages (inn/linear_ae.py): the randomised
subspace iteration against np.linalg.svd in float64, orthonormality, the encode/decode
round trip on the span, the chunked passes, and the 'pca' autoencoder stage."""
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import data as data_lib, pipeline
from lsei_jax.errors import UserError
from lsei_jax.inn import linear_ae
from lsei_jax.pipeline import evaluation
from lsei_jax.pipeline.stages import autoencoder as ae_stage
from lsei_jax.pipeline.stages import invariance as inv_stage
from lsei_jax.training import checkpoints, signature


def _svd_pca(x: np.ndarray, k: int):
  """Oracle: mean, top-k right singular vectors (sign: largest |entry| positive) and
  variances s²/N of the centred rows, by np.linalg.svd in float64."""
  mu = x.mean(0)
  _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
  w = vt[:k].T
  w = w * np.sign(w[np.argmax(np.abs(w), 0), np.arange(k)])
  return mu, w, s[:k] ** 2 / len(x)


def _low_rank_images(n: int, rank: int, size: int, seed: int) -> np.ndarray:
  """float64 images [n, size, size, 3] in [0, 1] whose centred rows have rank `rank`, with
  well-separated variances (so the eigenvectors are unique up to sign)."""
  rng = np.random.default_rng(seed)
  dim = size * size * 3
  basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
  coef = rng.standard_normal((n, rank)) * (0.6 ** np.arange(rank)) * 0.05
  return (0.5 + coef @ basis.T).reshape(n, size, size, 3)


def test_fit_equals_svd_when_the_sketch_spans_the_range():
  # rank 9 ≤ l = 5 + 6: C Q spans C's range, so the Rayleigh–Ritz pairs are exact for any
  # number of further iterations; chunk 7 splits the 40 rows unevenly.
  x = _low_rank_images(40, 9, 4, 0)
  mu_ref, w_ref, var_ref = _svd_pca(x.reshape(40, -1), 5)
  for iterations in (0, 1, 3):
    mu, w, var = linear_ae.fit(x, 5, iterations=iterations, oversample=6, seed=1, chunk=7,
                               dtype=np.float64)
    # float64 products of 40 × 48 values of O(1): rounding ~1e-15, amplified by the
    # eigengaps (ratio 0.36 between variances) to well under 1e-10.
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(var, var_ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(w.T @ w, np.eye(5), rtol=0, atol=1e-13)


def test_fit_converges_to_svd_by_iterating_when_the_sketch_is_smaller():
  # Full-rank data, l = 4 + 2 < rank 48: the top 4 converge at rate (λ_7 / λ_4)^q.
  rng = np.random.default_rng(3)
  scales = np.concatenate([[8.0, 4.0, 2.0, 1.0], np.full(44, 0.05)])
  x = (rng.standard_normal((300, 48)) * scales) @ np.linalg.qr(
      rng.standard_normal((48, 48)))[0]
  x = x.reshape(300, 4, 4, 3)
  mu_ref, w_ref, var_ref = _svd_pca(x.reshape(300, -1), 4)
  mu, w, var = linear_ae.fit(x, 4, iterations=12, oversample=2, seed=0, dtype=np.float64)
  # (0.05 / 1)^26 of the error is left after 13 products on the covariance: the rounding.
  np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-9)
  np.testing.assert_allclose(var, var_ref, rtol=1e-9, atol=0)
  # With one product alone the sketch is worse, measurably (the test can fail).
  _, w0, _ = linear_ae.fit(x, 4, iterations=0, oversample=2, seed=0, dtype=np.float64)
  assert np.max(np.abs(w0 - w_ref)) > 1e-3


def test_float32_passes_agree_with_svd_to_float32_rounding():
  # The default: the products that find the subspace in float32, the Rayleigh–Ritz step in
  # float64. Same data as the float64 test above (rank 9, variance ratio 0.36 between
  # neighbours): float32 rounding (6e-8 relative) of the 48-value products, amplified by
  # λ₁ / gap ≲ 1 / (1 − 0.36) · 0.6⁻⁸ ≈ 100, stays under 1e-5 in W and the variances.
  x = _low_rank_images(40, 9, 4, 0)
  mu_ref, w_ref, var_ref = _svd_pca(x.reshape(40, -1), 5)
  mu, w, var = linear_ae.fit(x, 5, iterations=1, oversample=6, seed=1, chunk=7)
  np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-14)        # the mean stays float64
  np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5)
  np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=0)
  np.testing.assert_allclose(w.T @ w, np.eye(5), rtol=0, atol=1e-13)   # orthonormal in f64
  # …and the float32 passes are really taken: the result differs from float64's.
  _, w64, _ = linear_ae.fit(x, 5, iterations=1, oversample=6, seed=1, chunk=7,
                            dtype=np.float64)
  assert np.max(np.abs(w - w64)) > 1e-9


def test_device_passes_equal_float64_products_whatever_the_chunking():
  # The jitted float32 pass (X_cᵀ(X_c Q) and (X_c Q)ᵀ(X_c Q), uint8 scaled and centred on
  # the device, the last chunk padded and masked) against the same sums in float64 NumPy:
  # 37 uint8 images of 4·4·3 = 48 values, Q [48, 6]. float32 products of 48 terms of O(1)
  # (centred to |x| ≤ 1, |q| ≤ ~3): error ≲ 48 · 6e-8 · 3² per entry, so 1e-5 absolute.
  rng = np.random.default_rng(11)
  u8 = rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8)
  x = u8.reshape(37, -1).astype(np.float64) / 255.0
  mean, q = x.mean(0), rng.standard_normal((48, 6))
  xc = x - mean
  want_cq, want_qcq = xc.T @ (xc @ q) / 37, (xc @ q).T @ (xc @ q) / 37
  for chunk in (5, 37, 64):     # 7 chunks the last of 2 rows padded to 5; one; one > N
    np.testing.assert_allclose(linear_ae._cov_times(u8, mean, q, chunk, np.float32),
                               want_cq, rtol=0, atol=1e-5)
    np.testing.assert_allclose(linear_ae._projected_cov(u8, mean, q, chunk, np.float32),
                               want_qcq, rtol=0, atol=1e-5)
  # …and unmasked padding would show: zero images, centred, are −mean, whose terms
  # (mean · (mean · q), ≈ 0.5 · 0.5 · 3 each) three such rows add are far above 1e-5.
  padded = np.concatenate([u8, np.zeros((3, 4, 4, 3), np.uint8)])
  assert np.max(np.abs(linear_ae._cov_times(padded, mean, q, 40, np.float32) * 40 / 37
                       - want_cq)) > 1e-2


def test_orthonormal_spans_the_columns_and_falls_back_on_rank_deficiency():
  rng = np.random.default_rng(7)
  # Well conditioned (cond 1e3): Cholesky QR twice; orthonormal to float64 rounding and
  # the same span (the projection onto it reproduces y).
  y = rng.standard_normal((200, 12)) * np.logspace(0, -3, 12)
  q = linear_ae._orthonormal(y)
  np.testing.assert_allclose(q.T @ q, np.eye(12), rtol=0, atol=1e-13)
  np.testing.assert_allclose(q @ (q.T @ y), y, rtol=0, atol=1e-12)
  # Rank 5 of 12 columns (as C Q where l > rank C): Cholesky fails or its pivots collapse;
  # Householder QR still returns 12 orthonormal columns whose span holds y.
  y = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 12))
  q = linear_ae._orthonormal(y)
  np.testing.assert_allclose(q.T @ q, np.eye(12), rtol=0, atol=1e-13)
  np.testing.assert_allclose(q @ (q.T @ y), y, rtol=0, atol=1e-12)


def test_uint8_images_are_scaled_to_unit_range():
  rng = np.random.default_rng(5)
  u8 = rng.integers(0, 256, (30, 2, 2, 3), dtype=np.uint8)
  mu, w, var = linear_ae.fit(u8, 3, iterations=2, oversample=9, seed=0,   # l = 12 = D
                             dtype=np.float64)
  mu_ref, w_ref, var_ref = _svd_pca(u8.reshape(30, -1).astype(np.float64) / 255.0, 3)
  np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-14)
  np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10)
  np.testing.assert_allclose(var, var_ref, rtol=1e-10)


def test_bad_latent_dim_is_refused():
  with pytest.raises(ValueError, match='latent_dim=13'):
    linear_ae.fit(np.zeros((30, 2, 2, 3)), 13)


def test_module_encodes_and_decodes_the_span_exactly():
  x = _low_rank_images(40, 9, 4, 2)
  mu, w, _ = linear_ae.fit(x, 9, iterations=1, oversample=4, seed=0)
  ae = linear_ae.LinearAutoencoder(image_size=4, latent_dim=9)
  params = linear_ae.params_of(mu, w)
  assert jax.tree.map(jnp.shape, ae.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))['params']) \
      == jax.tree.map(jnp.shape, params)
  v = np.asarray(ae.apply({'params': params}, jnp.asarray(x, jnp.float32), method='encode'))
  v_ref = (x.reshape(40, -1) - mu) @ w            # float64 oracle
  # float32 parameters and images (values ≤ 1): relative rounding ~1e-7 over 48 terms.
  np.testing.assert_allclose(v, v_ref, rtol=0, atol=1e-5)
  # The images lie in μ + span(W) and inside [0, 1]: D(E(x)) = x to float32 rounding.
  back = np.asarray(ae.apply({'params': params}, jnp.asarray(v), method='decode_image'))
  np.testing.assert_allclose(back, x, rtol=0, atol=1e-5)
  # Outside [0, 1] the decoder clips.
  far = np.asarray(ae.apply({'params': params}, jnp.full((1, 9), 100.0), method='decode_image'))
  assert far.min() >= 0.0 and far.max() <= 1.0 and far.shape == (1, 4, 4, 3)


def test_pca_fields_are_pinned_only_for_pca(tiny_config):
  """'conv' checkpoints written before kind / iterations / oversample existed keep loading:
  the fields enter the autoencoder's and the invariance node's signatures only for 'pca'."""
  c = tiny_config.copy_and_resolve_references()
  c.autoencoder.iterations, c.autoencoder.oversample = 3, 16
  fields = {'autoencoder.kind', 'autoencoder.iterations', 'autoencoder.oversample'}
  for kind, pinned in (('conv', set()), ('pca', fields)):
    c.autoencoder.kind = kind
    sig = ae_stage.signature_fix(types.SimpleNamespace(config=c),
                                 signature.stage_signature(c, ('autoencoder', 'invariance')))
    assert fields & set(sig) == pinned and sig['autoencoder.latent_dim'] == 8


@pytest.mark.slow
def test_pca_stage_fits_once_and_feeds_the_invariance_stage(workdir_copy, tiny_config, tmp_path):
  c = tiny_config.copy_and_resolve_references()
  c.invariance.enabled = True
  c.autoencoder.kind = 'pca'
  metas = pipeline.train(c, workdir_copy, ['autoencoder', 'invariance'])
  assert metas['autoencoder']['complete'] and metas['autoencoder']['num_steps'] == 0
  ctx = evaluation.load(c, workdir_copy, ['classifier', 'probe', 'autoencoder', 'invariance'])
  params = jax.device_get(ctx.params('autoencoder'))
  # Oracle: np.linalg.svd of the 256 train images (768 values each), float64. The sketch
  # (l = 8 + 16, 4 products) captures the top-8 variance to well under 1e-3 of it, and
  # W is orthonormal to float32 rounding.
  x = np.asarray(data_lib.load(c.data, 'train').images).reshape(256, -1).astype(np.float64) / 255.0
  mu_ref = x.mean(0)
  s = np.linalg.svd(x - mu_ref, compute_uv=False)
  w = np.asarray(params['components'], np.float64)
  np.testing.assert_allclose(params['mean'], mu_ref, rtol=0, atol=1e-6)
  np.testing.assert_allclose(w.T @ w, np.eye(8), rtol=0, atol=1e-5)
  captured = np.sum(((x - mu_ref) @ w) ** 2) / 256
  assert captured == pytest.approx(np.sum(s[:8] ** 2) / 256, rel=1e-3)
  # Run again: loaded as stored, not refitted.
  again = pipeline.train(c, workdir_copy, ['autoencoder'])
  assert again['autoencoder']['fingerprint'] == metas['autoencoder']['fingerprint']
  res = inv_stage.evaluate_invariance(ctx)['invariance']
  assert 0.0 <= res['label_kept'] <= 1.0 and res['round_trip_max_abs'] < 1e-4
  assert ctx.figures['invariance']['samples'].shape == (2, 4, 16, 16, 3)
  # Another kind on the stored fit is refused by name; a kind that does not exist, up front.
  c.autoencoder.kind = 'conv'
  with pytest.raises(checkpoints.CheckpointError, match='kind'):
    pipeline.train(c, workdir_copy, ['autoencoder'])
  c.autoencoder.kind = 'pca'
  c.autoencoder.latent_dim = 16 * 16 * 3 + 1
  shutil.rmtree(f'{workdir_copy}/autoencoder')
  with pytest.raises(UserError, match='latent_dim=769.*at most 256 components'):
    pipeline.train(c, workdir_copy, ['autoencoder'])
  c.autoencoder.kind = 'svd'
  with pytest.raises(UserError, match="kind='svd'"):
    pipeline.train(c, workdir_copy, ['autoencoder'])
