"""benchmarks/truthfulness_correlated.py: correlated test splits, their ground truth, the
scoring (coverage, wrong answers), and its quick cell end to end."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import truthfulness_correlated as tc  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

NAMES = ['shape', 'color', 'size', 'position', 'background', 'texture']


def test_test_split_correlations_are_the_grid_values():
  # n = 20,000: the correlation's s.e. is ≤ 1/√n = 0.007; 0.03 is over 4 s.e.
  for r in (0.0, 0.3, 0.6, 0.9, 1.0):
    attrs = tc.test_attributes(np.random.default_rng(0), 20_000, 'shape', 'background', r)
    c = np.corrcoef(attrs.T.astype(float))
    assert c[0, 4] == pytest.approx(r, abs=0.03) and c[2, 3] == pytest.approx(r, abs=0.03)
    assert abs(c[0, 1]) < 0.03 and abs(c[0, 5]) < 0.03


def test_counterfactual_renders_differ_in_the_flipped_attribute_only():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  data = tiny.get_config().data
  attrs = tc.test_attributes(np.random.default_rng(1), 16, 'shape', 'color', 0.6)
  base = tc.render(data, attrs, 7)
  assert np.array_equal(base, tc.render(data, attrs, 7))
  flipped = attrs.copy()
  flipped[:, 5] ^= True                       # texture: the object's pixels only
  changed = np.any(base != tc.render(data, flipped, 7), axis=(1, 2, 3))
  assert changed.any()
  bg = attrs.copy()
  bg[:, 4] ^= True                            # background: every image changes
  assert np.all(np.any(base != tc.render(data, bg, 7), axis=(1, 2, 3)))


def _line(rho, tests):
  return {'names': NAMES, 'task': 'shape', 'spurious': 'background', 'rho': rho,
          'tests': tests}


def _test(r, rel, verdicts):
  return {'r_test': r, 'reliance': {n: {'flip_rate': v, 'num_examples': 1024}
                                    for n, v in zip(NAMES, rel)},
          'rows': {m: [{'attribute': n, 'verdict': v, 'shift': x}
                       for n, v, x in zip(NAMES, verdicts, rel)]
                   for m in tc.METHODS}}


def test_scoring_counts_coverage_and_wrong_answers_apart():
  rel = [0.9, 0.02, 0.03, 0.02, 0.6, 0.01]     # shape and background relied on
  ok = ['relied on', 'no evidence', 'no evidence', 'no evidence', 'relied on', 'no evidence']
  bad = ['relied on', 'relied on', 'cannot tell', 'no evidence', 'no evidence', 'cannot tell']
  rows = tc.summarize([_line(0.9, [_test(0.6, rel, ok), _test(1.0, rel, bad)]),
                       _line(1.0, [_test(1.0, rel, bad)])])
  by = {(r['method'], r['r_test'], r['separates']): r for r in rows}
  good = by[('prediction_association', 0.6, 'test')]
  assert good['coverage'] == 1.0 and good['precision'] == good['recall'] == 1.0
  assert good['recall_strong'] == 1.0 and good['fpr_unused'] == 0.0 and good['wrong'] == 0
  assert good['median_spearman'] == pytest.approx(1.0)
  # At r = 1 each attribute is grouped by who separates it: shape / background by training
  # where ρ_train < 1 (else neither), the nuisance pair size / position by training, color
  # and texture by the test split. Unused: reliance ≤ 0.03 (the largest independent one).
  train = by[('prediction_association', 1.0, 'train')]
  # shape right; background 'no evidence' at reliance 0.6 is wrong; size 'cannot tell' is
  # not wrong, only uncovered; position right; the second line's size / position alike.
  assert train['attributes'] == 6 and train['coverage'] == pytest.approx(4 / 6)
  assert train['wrong'] == 1 and train['recall_strong'] == 0.5 and train['fpr_unused'] == 0
  test = by[('prediction_association', 1.0, 'test')]     # color 'relied on' while unused
  assert test['attributes'] == 4 and test['wrong'] == 2 and test['fpr_unused'] == 0.5
  assert test['fpr_zero'] == 0.5          # color's reliance 0.02 < 0.05
  neither = by[('correlation_gate', 1.0, 'neither')]
  assert neither['attributes'] == 2 and neither['wrong'] == 1 and neither['coverage'] == 1.0
  assert [r['method'] for r in rows][:3] == ['prediction_association'] * 3


def test_the_old_gate_refuses_a_correlated_pair_the_new_verdict_answers():
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  attrs = tc.test_attributes(rng, 2048, 'shape', 'background', 0.6)
  pred = attrs[:, 0].astype(int)
  old = {r['attribute']: r['verdict'] for r in tc.gate_rows(pred, attrs, NAMES)}
  new = {r['attribute']: r['verdict'] for r in bias.prediction_association(pred, attrs, NAMES,
                                                                           'shape', 2)}
  assert old['shape'] == old['background'] == old['size'] == 'cannot tell'
  assert new['shape'] == 'relied on' and new['background'] == new['size'] == 'no evidence'


@pytest.mark.slow
def test_quick_cell_end_to_end_and_resumes(tmp_path, capsys):
  out = str(tmp_path / 'c')
  tc.main(['--quick', '--out', out])
  lines = [json.loads(l) for l in open(os.path.join(out, 'cells.jsonl'))]
  assert len(lines) == 1 and [t['r_test'] for t in lines[0]['tests']] == list(tc.R_TEST)
  for t in lines[0]['tests']:
    assert set(t['reliance']) == set(NAMES) and len(t['pred']) == 64
    assert {r['attribute'] for r in t['rows']['prediction_association']} == set(NAMES)
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert {r['method'] for r in summary} == set(tc.METHODS)
  assert '| prediction_association | 1 | neither |' in capsys.readouterr().out
  tc.main(['--quick', '--out', out])
  assert len(open(os.path.join(out, 'cells.jsonl')).readlines()) == 1
  # A subset of the test correlations draws the very same test splits as the full run.
  part = str(tmp_path / 'part')
  tc.main(['--quick', '--out', part, '--r_test', '0.6,1'])
  sub = json.loads(open(os.path.join(part, 'cells.jsonl')).readline())['tests']
  assert [t['r_test'] for t in sub] == [0.6, 1.0]
  for t in sub:
    full = lines[0]['tests'][tc.R_TEST.index(t['r_test'])]
    assert t['pred'] == full['pred'] and t['reliance'] == full['reliance']


@pytest.mark.slow
def test_rescore_reproduces_the_rows_of_a_fresh_run(tmp_path):
  # The attributes drawn again from their seeds are the run's: rows computed again equal
  # the stored ones exactly.
  out = str(tmp_path / 'c')
  tc.main(['--quick', '--out', out])
  line = json.loads(open(os.path.join(out, 'cells.jsonl')).readline())
  again = tc.rescore(line, 'tiny')
  assert json.loads(json.dumps(again)) == line


def test_all_magnitude_errors_are_per_method_and_r_over_answered_attributes():
  rel = [0.5, 0.2, 0.1, 0.0, 0.3, 0.05]
  t0, t1 = _test(0.0, rel, ['relied on'] * 6), _test(1.0, rel, ['no evidence'] * 6)
  # inn_factor at r = 0: negative shifts count by their size; one 'cannot tell' is skipped.
  t0['rows']['inn_factor'] = [{'attribute': n, 'verdict': v, 'shift': x} for n, v, x in zip(
      NAMES, ['relied on', 'no evidence', 'cannot tell', 'no evidence', 'relied on',
              'no evidence'], [-0.4, 0.25, 0.9, 0.0, 0.1, 0.05])]
  err = tc.all_magnitude_errors([_line(0.9, [t0, t1])], methods=('inn_factor',))
  assert sorted(err) == [('inn_factor', 0.0), ('inn_factor', 1.0)]
  # shape, color, position, background, texture (size skipped: cannot tell)
  np.testing.assert_allclose(err[('inn_factor', 0.0)], [0.1, 0.05, 0.0, 0.2, 0.0], atol=1e-12)
  np.testing.assert_allclose(err[('inn_factor', 1.0)], np.zeros(6), atol=1e-12)


def test_swap_partners_have_the_other_value_and_the_same_cell_where_one_exists():
  fit = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1]], bool)
  attrs = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
  for seed in range(5):
    rng = np.random.default_rng(seed)
    p = tc._partners(fit, attrs, 0, True, rng)  # pylint: disable=protected-access
    # rows 0-2 have a fit row that is their cell with attribute 0 flipped; row 3's
    # (1, 0, 1) is absent, so any row with attribute 0 = 1.
    np.testing.assert_array_equal(p[:3], [1, 2, 4])
    assert p[3] in (1, 2, 3)
    q = tc._partners(fit, attrs, 0, False, rng)  # pylint: disable=protected-access
    assert np.all(fit[q, 0] != attrs[:, 0])


def test_cell_means_shift_by_the_flipped_cells_mean_or_fall_back_to_the_global_one():
  fit = np.array([[0, 0]] * 3 + [[1, 0]] * 3 + [[1, 1]] * 2, bool)
  zb = np.arange(16, dtype=float).reshape(8, 2)
  means = np.array([[100.0, 200.0], [110.0, 230.0]])
  attrs = np.array([[0, 0], [1, 0], [0, 1]], bool)
  got = tc._cell_means(zb, fit, attrs, 0, means, min_rows=3)  # pylint: disable=protected-access
  cell00, cell10 = zb[:3].mean(0), zb[3:6].mean(0)
  # (0, 0) → (1, 0) and back: both cells have 3 rows; (0, 1) → (1, 1): 0 and 2 rows, global.
  np.testing.assert_allclose(got, [cell10 - cell00, cell00 - cell10, [10.0, 30.0]], atol=0)
