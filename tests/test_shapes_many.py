"""lsei_jax/data/celeba_stats.py and shapes_many.py: the CelebA table, the copula that
samples it, and the renderer whose counterfactuals differ in one attribute only."""
import numpy as np
import pytest
from scipy import stats

from lsei_jax.data import celeba_stats, shapes_many

PHI = np.array(celeba_stats.PHI)
P = np.array(celeba_stats.MARGINALS)


def test_the_table_is_a_correlation_matrix_of_its_names():
  assert PHI.shape == (11, 11) and len(P) == len(celeba_stats.NAMES) == 11
  assert np.array_equal(PHI, PHI.T) and np.all(np.diag(PHI) == 1)
  assert np.all((P > 0) & (P < 1)) and np.all(np.abs(PHI) <= 1)
  # Strong and weak pairs as on CelebA: Male against lipstick, lipstick with makeup.
  i = celeba_stats.NAMES.index
  assert PHI[i('Male'), i('Wearing_Lipstick')] < -0.7 < 0.7 < PHI[i('Wearing_Lipstick'),
                                                                   i('Heavy_Makeup')]


def test_derive_reads_a_list_attr_file_like_numpy(tmp_path):
  rng = np.random.default_rng(0)
  header = ['Bald', 'Male', 'Smiling', 'Young']
  x = rng.random((300, 4)) < [0.1, 0.4, 0.5, 0.8]
  lines = ['300', ' '.join(header) + ' '] + [
      f'{k:06d}.jpg ' + ' '.join(f'{1 if v else -1:2d}' for v in row) for k, row in enumerate(x)]
  path = tmp_path / 'list_attr_celeba.txt'
  path.write_text('\n'.join(lines) + '\n')
  marg, phi, n = celeba_stats.derive(str(path), ['Young', 'Male'])
  ref = x[:, [3, 1]].astype(np.float64)
  assert n == 300
  np.testing.assert_allclose(marg, ref.mean(0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(phi, np.corrcoef(ref.T), rtol=0, atol=1e-12)
  with pytest.raises(ValueError, match='Eyeglasses'):
    celeba_stats.derive(str(path), ['Eyeglasses'])


def test_bivariate_normal_upper_orthant_matches_scipy():
  # scipy's CDF is a numerical integration with abseps 1e-5: compare at 1e-5.
  for ti, tj, r in ((0.2, -1.0, 0.5), (-0.3, 1.5, -0.9), (1.2, 1.2, 0.98), (0.0, 0.0, -0.2)):
    ref = stats.multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([-ti, -tj])
    got = shapes_many._both_above(np.array(ti), np.array(tj), np.array(r))  # pylint: disable=protected-access
    assert got == pytest.approx(ref, abs=1e-5)


def test_latent_correlation_hits_a_feasible_target_exactly():
  p = np.array([0.3, 0.6, 0.1])
  phi = np.array([[1, 0.3, -0.1], [0.3, 1, 0.2], [-0.1, 0.2, 1]])
  latent, t, repaired = shapes_many.latent_correlation(p, phi)
  assert not repaired
  np.testing.assert_allclose(stats.norm.sf(t), p, atol=1e-12)
  # 60 bisection steps leave |Δρ| < 1e-15; the quadrature is good to ~1e-10.
  np.testing.assert_allclose(shapes_many.implied_phi(latent, t), phi, atol=1e-8)


def test_celeba_latent_matrix_is_repaired_close_to_the_table():
  latent, t, repaired = shapes_many.latent_correlation(P, PHI)
  # The pairwise solution is not positive definite (smallest eigenvalue −0.04):
  # the nearest correlation matrix replaces it.
  assert repaired and np.linalg.eigvalsh(latent)[0] > 0
  np.testing.assert_allclose(np.diag(latent), 1, atol=1e-12)
  implied = shapes_many.implied_phi(latent, t)
  # The repair moves phi by at most 0.02 (Male / Wearing_Lipstick / Heavy_Makeup, where
  # CelebA's pairs are at latent |r| ≥ 0.96); the marginals are untouched.
  assert np.abs(implied - PHI).max() < 0.02
  np.testing.assert_allclose(stats.norm.sf(t), P, atol=1e-12)


def test_sampled_attributes_have_the_target_marginals_and_correlations():
  n = 200_000
  x = shapes_many.sample_attributes(np.random.default_rng(1), n)
  assert x.shape == (n, 13) and x.dtype == bool
  latent, t, _ = shapes_many.latent_correlation(P, PHI)
  implied = shapes_many.implied_phi(latent, t)
  # Standard errors at n = 200,000: a marginal ≤ 0.0011, a phi coefficient ≈ 1/√n = 0.0022
  # (less for strong pairs); tolerances 0.006 and 0.012 are over 5 s.e. for each of the 11
  # marginals and 78 pairs, so a correct sampler fails with probability < 1e-5.
  np.testing.assert_allclose(x[:, :11].mean(0), P, atol=0.006)
  np.testing.assert_allclose(x[:, 11:].mean(0), 0.5, atol=0.006)
  c = np.corrcoef(x.T.astype(np.float64))
  np.testing.assert_allclose(c[:11, :11], implied, atol=0.012)
  np.testing.assert_allclose(c[:11, :11], PHI, atol=0.012 + 0.02)   # + the repair's shift
  assert np.abs(c[11:, :11]).max() < 0.012 and abs(c[11, 12]) < 0.012


def test_render_is_deterministic_and_each_flip_changes_its_region_only():
  x = shapes_many.sample_attributes(np.random.default_rng(2), 64)
  render = lambda a: shapes_many.render(np.random.default_rng(5), a, 32, 0.08, 0.7)
  base = render(x)
  assert base.shape == (64, 32, 32, 3) and base.dtype == np.uint8
  assert np.array_equal(base, render(x))
  yy, xx = np.meshgrid((np.arange(32) + 0.5) / 32, (np.arange(32) + 0.5) / 32, indexing='ij')
  edge = np.minimum(np.minimum(xx, yy), np.minimum(1 - xx, 1 - yy))
  region = {'Eyeglasses': edge < 0.071, 'Blond_Hair': yy < 0.12, 'control_notch': yy < 0.12,
            'Young': np.ones_like(yy, bool)}
  for a, name in enumerate(shapes_many.ATTRIBUTES):
    flipped = x.copy()
    flipped[:, a] ^= True
    changed = np.any(render(flipped) != base, axis=-1)           # [N, S, S]
    # Visible: the flip changes (almost) every image (a tiny object may hide one mark).
    assert changed.any((1, 2)).mean() >= 0.98, name
    if name in region:
      assert not changed[:, ~region[name]].any(), name
  others = x.copy()
  others[:, 0] ^= True                  # the object's shape: band and frame stay as they were
  assert np.array_equal(render(others)[:, :3], base[:, :3])


def test_render_rejects_the_wrong_number_of_attributes():
  with pytest.raises(ValueError, match='13'):
    shapes_many.render(np.random.default_rng(0), np.zeros((2, 6), bool), 32)
