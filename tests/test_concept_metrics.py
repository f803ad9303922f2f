"""Concept-learner metrics on hand-made arrays with known answers."""
import itertools

import numpy as np
import pytest

from lsei_jax import concept_metrics as cm
from lsei_jax.reporting import report


def _brute_force(cost):
  n, m = cost.shape
  if n <= m:
    return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
  return _brute_force(cost.T)


def test_variance_explained_perfect_and_mean():
  h = np.random.default_rng(0).normal(size=(50, 7))
  assert cm.variance_explained(h, h) == pytest.approx(1.0, abs=1e-12)
  assert cm.variance_explained(h, np.broadcast_to(h.mean(0), h.shape)) == pytest.approx(0.0, abs=1e-12)
  # Half the centred signal: Var(h − ĥ) = ¼ Var(h).
  hhat = h.mean(0) + 0.5 * (h - h.mean(0))
  assert cm.variance_explained(h, hhat) == pytest.approx(0.75, abs=1e-12)


def test_normalized_mse_known_value():
  h = np.array([[1.0, 1.0], [2.0, 0.0]])
  hhat = np.array([[1.0, 0.0], [0.0, 0.0]])
  # row 0: mean((0,1)²)=0.5 / mean(1,1)=1 → 0.5; row 1: mean(4,0)=2 / mean(4,0)=2 → 1.
  assert cm.normalized_mse(h, hhat) == pytest.approx(0.75)
  assert cm.normalized_mse(h, h) == 0.0


def test_sparsity_dead_always_on_and_histogram():
  codes = np.array([[0, 1, 0.3, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 5, 0.1, 0]])
  assert cm.l0(codes) == pytest.approx((2 + 1 + 1 + 2) / 4)
  np.testing.assert_allclose(cm.activation_frequency(codes), [0, 1, 0.5, 0])
  assert cm.dead_and_always_on(codes) == (0.5, 0.25)
  hist = cm.frequency_histogram(cm.activation_frequency(codes), num_bins=4)
  assert hist['never'] == 2 and sum(hist['counts']) == 2
  assert len(hist['log10_edges']) == 5 and hist['log10_edges'][-1] == 0.0


def test_accuracy_recovered_and_decisive_units():
  assert cm.accuracy_recovered(0.9, 0.9, 0.5) == pytest.approx(1.0)
  assert cm.accuracy_recovered(0.9, 0.5, 0.5) == pytest.approx(0.0)
  assert cm.accuracy_recovered(0.9, 0.7, 0.5) == pytest.approx(0.5)
  assert np.isnan(cm.accuracy_recovered(0.5, 0.7, 0.5))
  decisive = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
  assert cm.num_decisive_units(decisive) == 2


@pytest.mark.parametrize('shape', [(1, 1), (3, 3), (4, 4), (2, 5), (5, 2), (4, 6)])
def test_hungarian_matches_brute_force(shape):
  rng = np.random.default_rng(sum(shape))
  for trial in range(20):
    cost = rng.normal(size=shape)
    if trial % 2:
      cost = np.round(cost)  # ties
    rows, cols = cm.hungarian(cost)
    assert len(rows) == min(shape) and len(set(rows)) == len(set(cols)) == min(shape)
    assert np.all(np.diff(rows) > 0)
    assert cost[rows, cols].sum() == pytest.approx(_brute_force(cost), abs=1e-9)


def test_hungarian_bad_input():
  with pytest.raises(ValueError, match='non-finite'):
    cm.hungarian(np.array([[np.nan, 1.0]]))


def test_mcc_is_one_for_a_permutation_of_the_attributes():
  rng = np.random.default_rng(0)
  attrs = (rng.random((200, 4)) > 0.5).astype(float)
  perm = [2, 0, 3, 1]
  codes = np.concatenate([attrs[:, perm] * [1.0, 3.0, 0.5, 2.0], rng.random((200, 2))], 1)
  rec = cm.factor_recovery(codes, attrs, ['a', 'b', 'c', 'd'])
  assert rec['mcc'] == pytest.approx(1.0, abs=1e-12)
  for j, name in enumerate('abcd'):
    assert rec['matched'][name]['unit'] == perm.index(j)
    assert rec['best_unit_auc'][name] == {'unit': perm.index(j), 'auc': 1.0, 'sign': 1}
  # A unit that is on exactly when the attribute is absent: AUC 1 with sign −1.
  flipped = cm.best_unit_auc(1 - attrs[:, :1], attrs[:, :1], ['a'])
  assert flipped['a'] == {'unit': 0, 'auc': 1.0, 'sign': -1}


def test_auc_against_pair_counting():
  rng = np.random.default_rng(3)
  scores = np.round(rng.normal(size=40), 1)  # ties
  labels = rng.random(40) > 0.4
  pos, neg = scores[labels], scores[~labels]
  pairs = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  assert cm.auc(scores, labels) == pytest.approx(pairs, abs=1e-12)
  assert np.isnan(cm.auc(scores, np.ones(40)))


def test_correlation_constant_column_and_stability():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(100, 3))
  c = cm.correlation(np.concatenate([a, np.ones((100, 1))], 1), a)
  np.testing.assert_allclose(np.diag(c[:3]), 1.0, atol=1e-12)
  np.testing.assert_array_equal(c[3], 0.0)
  assert cm.stability(a, -2.0 * a[:, [1, 2, 0]]) == pytest.approx(1.0, abs=1e-12)
  assert cm.stability(a, rng.normal(size=(100, 3))) < 0.5


def test_summary_keys():
  h = np.random.default_rng(0).random((10, 4))
  codes = (h > 0.5).astype(float)
  s = cm.summary(h, h, codes, acc_h=0.9, acc_hhat=0.9, acc_mean=0.5,
                 decisive=np.zeros((10, 4), bool))
  assert s['variance_explained'] == pytest.approx(1.0)
  assert s['accuracy_recovered'] == pytest.approx(1.0)
  assert s['num_decisive_units'] == 0 and s['num_units'] == 4


def test_format_concepts():
  rng = np.random.default_rng(0)
  h, attrs = rng.random((30, 4)), (rng.random((30, 2)) > 0.5).astype(float)
  c = dict(cm.summary(h, h, h, acc_h=0.9, acc_hhat=0.9, acc_mean=0.5,
                      decisive=np.zeros((30, 4), bool)), kind='nmf',
           factor_recovery=cm.factor_recovery(h, attrs, ['a', 'b']))
  text = report.format_concepts({'concepts': c})
  assert 'Concept learner nmf: variance explained 1.000' in text and 'L0 4.00 of 4' in text
  assert 'accuracy recovered 1.000' in text and 'best unit AUC a ' in text
  assert report.format_concepts({}) == ''
