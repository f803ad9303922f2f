"""Balancing weights decorrelate label and attributes; the reliance report's arithmetic and
gates against float64 oracles written out by hand."""
import numpy as np
import pytest

from lsei_jax.training import balance
from lsei_jax.reporting import bias
from lsei_jax.data import shapes


def test_weights_make_the_label_independent_of_the_planted_attribute():
  attrs = shapes.sample_attributes(np.random.default_rng(0), 20_000, 'shape', 'color', 0.9)
  labels = attrs[:, 0].astype(int)
  w = balance.balancing_weights(labels, attrs, 0)
  assert w.mean() == pytest.approx(1.0) and (w > 0).all()
  # Weighted joint of (label, attribute) is the product of the unweighted marginals, for
  # the planted attribute and every other one.
  for j in range(1, attrs.shape[1]):
    for y in (0, 1):
      for a in (False, True):
        cell = (labels == y) & (attrs[:, j] == a)
        want = np.mean(labels == y) * np.mean(attrs[:, j] == a)
        assert w[cell].sum() / w.sum() == pytest.approx(want, abs=1e-6), (j, y, a)
  # Drawn batches follow the weights, and are a pure function of (seed, step).
  idx = balance.weighted_batch_indices(w, 4096, step=3, seed=1)
  np.testing.assert_array_equal(idx, balance.weighted_batch_indices(w, 4096, step=3, seed=1))
  assert abs(np.mean(labels[idx] == attrs[idx, 1]) - 0.5) < 0.03
  shard = balance.weighted_batch_indices(w, 4096, step=3, seed=1, process_index=1,
                                         process_count=2)
  np.testing.assert_array_equal(shard, idx[2048:])


def test_perfect_confounding_cannot_be_balanced_and_is_left_alone():
  attrs = shapes.sample_attributes(np.random.default_rng(1), 1000, 'shape', 'color', 1.0)
  w = balance.balancing_weights(attrs[:, 0].astype(int), attrs, 0)
  # color's factor is 1 (empty groups); the independent attributes' factors are near 1.
  assert np.all(np.abs(w - 1) < 0.3)


def test_directed_shifts_match_a_hand_computation():
  rng = np.random.default_rng(2)
  n, a, c = 60, 3, 3
  before, after = rng.random((n, a)), rng.random((n, a))
  pb, pa = rng.integers(0, c, n), rng.integers(0, c, n)
  s = bias.directed_shifts(before, after, pb, pa, c)
  changed = pb != pa
  delta = after - before
  for k in range(c):
    to, away = delta[changed & (pa == k)], delta[changed & (pb == k)]
    np.testing.assert_allclose(s['mean'][k], 0.5 * (to.mean(0) - away.mean(0)), atol=1e-12)
    se = 0.5 * np.sqrt(to.var(0, ddof=1) / len(to) + away.var(0, ddof=1) / len(away))
    np.testing.assert_allclose(s['se'][k], se, atol=1e-12)
    assert s['num_to'][k] == len(to) and s['num_from'][k] == len(away)
  assert s['num_changed'] == changed.sum()


def test_a_uniform_change_cancels_whatever_the_mix_of_directions():
  # 90 decisions move 0→1, 10 move 1→0; every g(ĥ') gets +0.3 on attribute 0 regardless.
  pb = np.r_[np.zeros(90, int), np.ones(10, int)]
  before = np.random.default_rng(5).random((100, 1))
  s = bias.directed_shifts(before, before + 0.3, pb, 1 - pb, 2)
  assert abs(s['mean'][1, 0]) < 1e-12
  one_way = bias.directed_shifts(before, before + 0.3, np.zeros(100, int), np.ones(100, int), 2)
  assert np.isinf(one_way['se'][1, 0])


def test_two_class_sign_and_gates():
  # 200 samples, all flipping 0→1 or 1→0; attribute 0 rises towards class 1 by 0.4;
  # attribute 1 moves by noise only; attribute 2 moves like 0 but its probe is unreadable.
  rng = np.random.default_rng(3)
  pb = np.repeat([0, 1], 100)
  pa = 1 - pb
  sign = np.where(pb == 0, 1.0, -1.0)
  before = np.full((200, 3), 0.5)
  after = before + np.stack([0.4 * sign, rng.normal(0, 0.01, 200), 0.4 * sign], 1)
  rows = bias.reliance_report(before, after, pb, pa, ['a', 'b', 'c'], 'a', 2,
                              [0.95, 0.95, 0.55])
  by = {r['attribute']: r for r in rows}
  assert by['a']['shift'] == pytest.approx(0.4) and by['a']['flagged'] and by['a']['is_task']
  assert by['a']['toward_class'] == 1
  assert not by['b']['flagged'] and by['b']['readable']
  assert not by['c']['readable'] and not by['c']['flagged']
  assert [r['attribute'] for r in rows][-1] == 'c'          # unreadable ones last
  # Below min_shift: an interval excluding 0 is not enough.
  small = before + np.stack([0.02 * sign] * 3, 1)
  rows = bias.reliance_report(before, small, pb, pa, ['a', 'b', 'c'], 'a', 2, [1, 1, 1])
  assert not any(r['flagged'] for r in rows)
  # Samples whose prediction did not change contribute nothing.
  rows = bias.reliance_report(before, after, pb, pb, ['a', 'b', 'c'], 'a', 2, [1, 1, 1])
  assert all(r['num_changed'] == 0 and not r['flagged'] for r in rows)


def test_bonferroni_interval_widens_with_the_number_of_tests():
  z1 = bias._normal_quantile(0.975)                      # pylint: disable=protected-access
  assert z1 == pytest.approx(1.959964, abs=1e-5)
  pb = np.repeat([0, 1], 50)
  before = np.zeros((100, 1))
  after = np.random.default_rng(4).normal(0.1, 0.3, (100, 1))
  one = bias.reliance_report(before, after, pb, 1 - pb, ['a'], 'a', 2, [1.0])[0]
  six = bias.reliance_report(np.zeros((100, 6)), np.repeat(after, 6, 1), pb, 1 - pb,
                             list('abcdef'), 'a', 2, [1.0] * 6)[0]
  assert (six['ci_high'] - six['ci_low']) > (one['ci_high'] - one['ci_low'])
  z6 = bias._normal_quantile(1 - 0.05 / 12)              # pylint: disable=protected-access
  assert six['ci_high'] - six['shift'] == pytest.approx(z6 * six['se'])


def test_three_classes_pick_the_class_the_attribute_moves_with():
  # Attribute rises by 0.3 whenever the decision moves to class 2, else no change.
  pb = np.array([0, 1, 0, 1, 2, 2] * 20)
  pa = np.array([2, 2, 1, 0, 0, 1] * 20)
  d = np.where(pa == 2, 0.3, np.where(pb == 2, -0.3, 0.0))
  before = np.full((120, 1), 0.5)
  rows = bias.reliance_report(before, before + d[:, None], pb, pa, ['x'], 'y', 3, [1.0])
  assert rows[0]['toward_class'] == 2 and rows[0]['shift'] == pytest.approx(0.3)
