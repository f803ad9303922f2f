import numpy as np
import pytest

from lsei_jax.reporting import bias


def test_per_bit_summary_hand_values():
  decisive = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 1]], bool)
  pred = np.array([0, 0, 1, 1])
  s = bias.per_bit_summary(decisive, pred, 2)
  np.testing.assert_allclose(s['per_bit_change'], [0.5, 0.25, 0.25])
  assert s['single_bit_change'] == 0.75
  np.testing.assert_allclose(s['per_class'][0], [0.5, 0, 0])
  np.testing.assert_allclose(s['per_class'][1], [0.5, 0.5, 0.5])


def test_bootstrap_interval_covers_mean_and_shrinks_with_n():
  rng = np.random.default_rng(0)
  small = rng.normal(1.0, 1.0, 50)
  big = rng.normal(1.0, 1.0, 5000)
  m, lo, hi = bias.bootstrap_mean_ci(small)
  assert lo < m < hi and lo < 1.0 < hi
  _, lo2, hi2 = bias.bootstrap_mean_ci(big)
  assert (hi2 - lo2) < (hi - lo) / 5
  # 95% interval of a mean ≈ ±1.96 σ/√n
  assert (hi2 - lo2) == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.15)


def test_bias_report_signs_and_ranking():
  n = 400
  rng = np.random.default_rng(1)
  pred = np.repeat([0, 1], n // 2)
  before = rng.uniform(0.2, 0.8, (n, 3))
  after = before.copy()
  # attribute 0 (the task) moves with the class direction, strongly;
  # attribute 1 moves with it weakly; attribute 2 moves against it; attribute 3 absent.
  step = np.where(pred == 0, 1.0, -1.0)
  after[:, 0] += 0.5 * step
  after[:, 1] += 0.2 * step
  after[:, 2] -= 0.1 * step
  report = bias.bias_report(before, after, pred, ['task', 'spur', 'anti'], 'task')
  assert [r['attribute'] for r in report] == ['task', 'spur', 'anti']
  by = {r['attribute']: r for r in report}
  assert by['task']['is_task'] and not by['spur']['is_task']
  assert by['spur']['shift'] == pytest.approx(0.2) and by['anti']['shift'] == pytest.approx(-0.1)
  assert by['spur']['ci_low'] > 0 and by['anti']['ci_high'] < 0
  assert by['spur']['shift_from_class'] == {'0': pytest.approx(0.2), '1': pytest.approx(-0.2)}
  assert bias.top_candidate(report)['attribute'] == 'spur'


def test_spearman_known_values():
  assert bias.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert bias.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert bias.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
  assert bias.spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties


def _rows(pairs, half_width=0.02):
  return [{'attribute': a, 'shift': s, 'is_task': a == 't', 'ci_low': s - half_width,
           'ci_high': s + half_width} for a, s in pairs]


def test_sanity_summary_flags_identical_rankings():
  rep = _rows([('t', 0.5), ('x', 0.3), ('y', 0.1), ('z', 0.05)])
  same = bias.sanity_summary(rep, rep)
  assert same['rank_correlation'] == pytest.approx(1.0) and same['warning']
  # A random classifier that no flip moves: shifts ≈ 0 in the same order by float noise.
  noise = _rows([('t', 5e-5), ('x', 3e-5), ('y', 1e-5), ('z', 5e-6)], half_width=1e-6)
  flat = bias.sanity_summary(rep, noise)
  assert flat['rank_correlation'] == pytest.approx(1.0)
  assert flat['top_randomized'] is None and flat['warning'] is None
  other = _rows([('z', 0.4), ('y', 0.3), ('x', 0.01), ('t', 0.0)])
  diff = bias.sanity_summary(rep, other)
  assert diff['rank_correlation'] < 0 and diff['warning'] is None
  assert diff['top_trained'] == 'x' and diff['top_randomized'] == 'z'


def test_aggregate_seeds():
  agg = bias.aggregate_seeds([{'a': 0.8, 'b': None}, {'a': 0.9}, {'a': 1.0}], ['a', 'b'])
  assert agg['a']['mean'] == pytest.approx(0.9) and agg['a']['std'] == pytest.approx(0.1)
  assert agg['a']['n'] == 3 and 'b' not in agg


def test_compound_task_marks_each_of_its_attributes_as_task():
  rng = np.random.default_rng(0)
  attrs = rng.random((4000, 3)) < 0.5                      # shape, color, size
  pred = attrs[:, 0].astype(int) + attrs[:, 1].astype(int)  # 3 classes: shape + color
  rows = bias.prediction_association(pred, attrs, ['shape', 'color', 'size'], 'shape+color', 3)
  task = {r['attribute']: r['is_task'] for r in rows}
  assert task == {'shape': True, 'color': True, 'size': False}
  assert {r['attribute'] for r in rows if r['flagged']} == {'shape', 'color'}
  assert not bias.is_task_attribute('shape', 'shapes') and bias.is_task_attribute('x', 'x')


def test_tables_report_the_unbiased_accuracy_of_a_correlated_test_split():
  from lsei_jax.reporting import report  # pylint: disable=g-import-not-at-top
  m = {'split': 'test (color agrees with shape in 80%: r = +0.60)', 'num_examples': 2048,
       'accuracy': 0.96142578125, 'recon_accuracy': 0.9, 'agreement': 0.9,
       'flip_all_change': 1.0, 'info_cosine': 0.99, 'info_cosine_noreg': 0.18}
  text = report.format_tables(m)
  assert 'test (color agrees with shape in 80%: r = +0.60), 2048 images' in text
  assert 'spurious attribute independent' not in text      # absent where not measured
  text = report.format_tables(dict(m, accuracy_unbiased=0.9033203125))
  assert 'spurious attribute independent: 90.33' in text and '96.14' in text
