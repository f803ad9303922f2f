"""reporting/representation_shift.py: a linear counterfactual shift in h, fitted on the
training split, answers pairs the test split confounds; known answers on synthetic h."""
import numpy as np
import pytest

from lsei_jax.reporting import association, bias, representation_shift as rs


def _h(rng, attrs, d=8, noise=0.05):
  """h = Σ_a a·e_a + noise: attribute a along unit vector e_a (orthogonal directions)."""
  w = np.eye(d)[:attrs.shape[1]]
  return attrs.astype(float) @ w + noise * rng.normal(size=(len(attrs), d))


def _pair(rng, n, rho):
  a = rng.random(n) < 0.5
  b = np.where(rng.random(n) < rho, a, ~a)
  return np.stack([a, b, rng.random(n) < 0.5], 1)


def test_directions_recover_the_encoding_with_correlated_training_attributes():
  rng = np.random.default_rng(0)
  attrs = _pair(rng, 4000, 0.9)
  beta, ident = rs.directions(_h(rng, attrs), attrs)
  # s.e. of a coefficient ≈ 0.05 / √(4000 · 0.25 · 0.19) ≈ 0.004: 0.03 is > 6 s.e.
  assert np.allclose(beta, np.eye(8)[:3], atol=0.03) and ident.all()
  same = attrs.copy()
  same[:, 1] = same[:, 0]
  assert rs.directions(_h(rng, same), same)[1].tolist() == [False, False, True]


def test_a_head_reading_a_flips_on_a_not_on_b_even_where_the_test_split_confounds_them():
  rng = np.random.default_rng(1)
  train = _pair(rng, 4000, 0.9)                    # training separates a and b
  test = _pair(rng, 1000, 1.0)                     # the test split copies a into b
  head = lambda h: np.stack([0.5 - h[:, 0], h[:, 0] - 0.5], -1)   # reads a's direction
  h_test = _h(rng, test)
  pred = np.argmax(head(h_test), -1)
  names = ['a', 'b', 'c']
  rows = bias.prediction_association(pred, test, names, 'a', 2)
  assert {r['attribute']: r['verdict'] for r in rows} == {
      'a': 'cannot tell', 'b': 'cannot tell', 'c': 'no evidence'}
  beta, ident = rs.directions(_h(rng, train), train)
  rates = rs.flip_rates(h_test, test, beta, head)
  assert rates[0] > 0.95 and rates[1] < 0.02 and rates[2] < 0.02
  out = {r['attribute']: r for r in rs.combine(rows, rates, ident, names, 1000, 4000)}
  assert out['a']['verdict'] == 'relied on' and out['a']['estimator'] == rs.ESTIMATOR
  assert out['b']['verdict'] == 'no evidence' and out['b']['estimator'] == rs.ESTIMATOR
  assert out['c']['estimator'] == association.ESTIMATOR   # answered by the split
  assert 'fitted on 4000 training images' in out['a']['evidence']
  # Confounded in training too: the shift cannot separate them, 'cannot tell' stays.
  same = _pair(rng, 4000, 1.0)
  beta2, ident2 = rs.directions(_h(rng, same), same)
  out2 = {r['attribute']: r for r in rs.combine(rows, rs.flip_rates(h_test, test, beta2, head),
                                                ident2, names, 1000, 4000)}
  assert out2['a']['verdict'] == out2['b']['verdict'] == 'cannot tell'
  assert out2['a']['confounded_by'] == ['b']


def test_wilson_interval_is_never_zero_width_and_matches_its_formula():
  lo, hi = rs.wilson(0, 5, 1.96)
  assert lo == 0.0 and hi == pytest.approx(1.96**2 / (5 + 1.96**2), rel=1e-12)
  lo, hi = rs.wilson(30, 100, 1.96)    # textbook value: [0.219, 0.396]
  assert lo == pytest.approx(0.2189, abs=5e-4) and hi == pytest.approx(0.3958, abs=5e-4)


def test_a_shift_that_disagrees_with_the_test_split_is_not_used():
  # The shift flips half the predictions when moved along c, which the test split answers
  # 'no evidence' for: it is not trusted, and the confounded pair stays 'cannot tell'.
  rng = np.random.default_rng(2)
  test = _pair(rng, 1000, 1.0)
  pred = test[:, 0].astype(int)
  names = ['a', 'b', 'c']
  rows = bias.prediction_association(pred, test, names, 'a', 2)
  ident = np.ones(3, bool)
  out = {r['attribute']: r for r in rs.combine(rows, np.array([0.9, 0.0, 0.5]), ident, names,
                                               1000, 4000)}
  assert out['a']['verdict'] == out['b']['verdict'] == 'cannot tell'
  assert out['a']['estimator'] == association.ESTIMATOR
  assert 'disagrees with the test split on c' in out['a']['evidence']
  # Agreeing on c, it answers a and b.
  out = {r['attribute']: r for r in rs.combine(rows, np.array([0.9, 0.0, 0.01]), ident, names,
                                               1000, 4000)}
  assert out['a']['verdict'] == 'relied on' and out['b']['verdict'] == 'no evidence'
  assert 'agrees with the test split on c' in out['a']['evidence']
  # Nothing answered in the test split to check it on: not used.
  both = np.stack([test[:, 0], test[:, 0]], 1)
  rows2 = bias.prediction_association(pred, both, ['a', 'b'], 'a', 2)
  out = rs.combine(rows2, np.array([0.9, 0.0]), np.ones(2, bool), ['a', 'b'], 1000, 4000)
  assert all(r['verdict'] == 'cannot tell' and 'no attribute of the test split' in r['evidence']
             for r in out)
