"""benchmarks/truthfulness_celeba_shaped.py: its training splits, its scoring against the
controls' floor, and its quick cell end to end through data.name='numpy'."""
import json
import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import truthfulness_celeba_shaped as tcs  # noqa: E402  pylint: disable=g-import-not-at-top

from lsei_jax.data import shapes_many  # noqa: E402

NAMES = list(shapes_many.ATTRIBUTES)


def test_lipstick_split_plants_the_shortcut_and_keeps_the_rest():
  n = 40_000
  celeba = tcs.train_attributes(np.random.default_rng(3), n, 'celeba')
  lip = tcs.train_attributes(np.random.default_rng(3), n, 'lipstick')
  male, lipstick = NAMES.index('Male'), NAMES.index('Wearing_Lipstick')
  # s.e. of a share at n = 40,000: ≤ 0.0025; 0.01 is 4 s.e.
  assert np.mean(lip[:, lipstick] != lip[:, male]) == pytest.approx(tcs.RHO_LIPSTICK, abs=0.01)
  assert np.mean(celeba[:, lipstick] != celeba[:, male]) < 0.9
  keep = [a for a in range(len(NAMES)) if a != lipstick]
  assert np.array_equal(celeba[:, keep], lip[:, keep])   # the same draws but for lipstick
  with pytest.raises(ValueError, match='unknown training split'):
    tcs.train_attributes(np.random.default_rng(0), 4, 'smiling')


def _line(train, rel, verdicts):
  rows = [{'attribute': n, 'verdict': v, 'shift': r} for n, v, r in zip(NAMES, verdicts, rel)]
  return {'train': train, 'names': NAMES,
          'reliance': {n: {'flip_rate': r, 'num_examples': 2048} for n, r in zip(NAMES, rel)},
          'rows': {m: rows for m in tcs.METHODS}}


def test_scoring_against_the_controls_floor():
  # Controls (the last two) at 0.02 and 0.04: the floor is 0.04; relied on above 0.09.
  rel = [0.9, 0.01, 0.4, 0.07, 0.3, 0.01, 0.02, 0.0, 0.0, 0.03, 0.01, 0.02, 0.04]
  good = ['relied on', 'no evidence', 'relied on', 'cannot tell', 'relied on'] + \
      ['no evidence'] * 8
  # Misses lipstick (0.4: 'no evidence', wrong), flags Smiling (0.01: unused, wrong),
  # 'cannot tell' on No_Beard (0.3: uncovered, not wrong).
  bad = ['relied on', 'relied on', 'no evidence', 'no evidence', 'cannot tell'] + \
      ['no evidence'] * 8
  rows = tcs.summarize([_line('celeba', rel, good), _line('lipstick', rel, bad)])
  by = {(r['method'], r['train']): r for r in rows}
  g = by[('prediction_association', 'celeba')]
  assert g['classifiers'] == 1 and g['attributes'] == 13
  assert g['coverage'] == pytest.approx(12 / 13)       # Heavy_Makeup 0.07: in between
  assert g['precision'] == g['recall'] == g['recall_strong'] == 1.0 and g['strong'] == 3
  assert g['unused'] == 9 and g['fpr_unused'] == 0 and g['wrong'] == 0
  # Spearman of (flagged shift, else 0) with (reliance, unused set to 0): Heavy_Makeup's 0.07
  # is unflagged, so not 1; scipy's rank correlation (average ranks for ties) is the oracle.
  score = [0.9, 0, 0.4, 0, 0.3] + [0] * 8
  truth = [0.9, 0, 0.4, 0.07, 0.3] + [0] * 8
  assert g['median_spearman'] == pytest.approx(stats.spearmanr(score, truth)[0], abs=1e-12)
  b = by[('prediction_association', 'lipstick')]
  assert b['coverage'] == pytest.approx(12 / 13) and b['wrong'] == 2
  assert b['precision'] == 0.5 and b['recall'] == pytest.approx(1 / 3)
  assert b['fpr_unused'] == pytest.approx(1 / 9) and b['fpr_zero'] == pytest.approx(1 / 9)
  both = by[('prediction_association', 'all')]
  assert both['classifiers'] == 2 and both['attributes'] == 26 and both['wrong'] == 2
  assert [r['train'] for r in rows] == ['celeba', 'lipstick', 'all'] * len(tcs.METHODS)
  assert '| prediction_association | all | 2 | 26 |' in tcs.format_table(rows)


@pytest.mark.slow
def test_quick_cell_end_to_end_resumes_and_rescores(tmp_path, capsys):
  out = str(tmp_path / 'c')
  tcs.main(['--quick', '--out', out])
  lines = [json.loads(l) for l in open(os.path.join(out, 'cells.jsonl'))]
  assert len(lines) == 1
  line = lines[0]
  assert line['names'] == NAMES and len(line['pred']) == 64
  assert set(line['reliance']) == set(NAMES)
  assert all(0 <= v['flip_rate'] <= 1 for v in line['reliance'].values())
  for m in tcs.METHODS:
    assert sorted(r['attribute'] for r in line['rows'][m]) == sorted(NAMES)
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert {r['method'] for r in summary} == set(tcs.METHODS)
  assert '| prediction_association | lipstick | 1 | 13 |' in capsys.readouterr().out
  tcs.main(['--quick', '--out', out])             # finished: skipped
  assert len(open(os.path.join(out, 'cells.jsonl')).readlines()) == 1
  # The test attributes drawn again from their seed are the run's: rows equal exactly.
  assert json.loads(json.dumps(tcs.rescore(line))) == line


def test_interaction_effects_recover_an_and_of_two_correlated_attributes_exactly():
  # ŷ = 1[a0 and a1]: flipping a0 changes ŷ exactly where a1 = 1, so the split's average
  # effect of a0 is mean(a1); the fit with a0 × others is exact here (to rounding).
  x = tcs.train_attributes(np.random.default_rng(4), 3000, 'celeba')
  pred = (x[:, 0] & x[:, 2]).astype(int)           # Male and Wearing_Lipstick (phi −0.78)
  g = tcs.interaction_effects(pred, x)
  assert g[0] == pytest.approx(x[:, 2].mean(), abs=1e-9)
  assert g[2] == pytest.approx(x[:, 0].mean(), abs=1e-9)
  # (Another attribute's fit lacks the a0 × a1 term, so its estimate is not exactly 0.)


def test_interval_coverage_and_effect_error_columns():
  rel = [0.5] + [0.0] * 12
  line = _line('celeba', rel, ['relied on'] + ['no evidence'] * 12)
  for n in NAMES:
    line['reliance'][n]['effect'] = 0.4 if n == 'Male' else 0.0
  rows = [dict(r, ci_low=r['shift'] - 0.05, ci_high=r['shift'] + 0.05) for r in
          line['rows']['prediction_association']]      # Male: 0.5 ± 0.05 misses 0.4
  line['rows'] = {'prediction_association': rows,
                  'correlation_gate': line['rows']['correlation_gate']}
  by = {(r['method'], r['train']): r for r in tcs.summarize([line])}
  v = by[('prediction_association', 'celeba')]
  assert v['interval_covers_effect'] == pytest.approx(12 / 13)
  assert v['effect_error_max'] == pytest.approx(0.1) and v['effect_error_median'] == 0
  assert by[('correlation_gate', 'celeba')]['interval_covers_effect'] is None


def test_figure_writes_one_row_of_sixteen_images(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'f.png')
  tcs.main(['--figure', path])
  assert Image.open(path).size == (16 * 32 * 4, 32 * 4)


def test_candidates_score_each_interaction_threshold_on_stored_predictions():
  # Predictions equal to Male: its average effect is exactly 1, every other one exactly 0
  # (least squares with Male in the design reproduces ŷ = Male), at any threshold.
  line = {'cell': 'celeba-easy-s0', 'train': 'celeba', 'difficulty': 'easy', 'seed': 0,
          'names': NAMES, 'num_test': 256}
  attrs, _ = tcs.test_split(line, 256)
  line['pred'] = attrs[:, 0].astype(int).tolist()
  line['reliance'] = {n: {'flip_rate': float(n == 'Male'), 'effect': float(n == 'Male'),
                          'num_examples': 256} for n in NAMES}
  out = tcs.candidates([line], (None, 10))
  assert [r['min_cell'] for r in out] == [None, 10]
  for r in out:
    assert r['recall_strong'] == 1.0 and r['fpr_unused'] == 0 and r['wrong'] == 0
    assert r['effect_error_max'] == pytest.approx(0.0, abs=1e-9)   # exact up to rounding


def test_validation_split_is_drawn_like_training_and_packs_losslessly():
  male, lip = NAMES.index('Male'), NAMES.index('Wearing_Lipstick')
  cell = dict(train='lipstick', difficulty='easy', seed=0)
  attrs, seed = tcs.validation_split(cell, 4000)
  # The lipstick training split's rule: Wearing_Lipstick = ¬Male in RHO_LIPSTICK of the
  # images (s.e. of a share at n = 4,000 ≤ 0.008; 0.03 is about 4 s.e.); the test split's
  # CelebA rule is far weaker.
  assert np.mean(attrs[:, lip] != attrs[:, male]) == pytest.approx(tcs.RHO_LIPSTICK, abs=0.03)
  test, _ = tcs.test_split(cell, 4000)
  assert np.mean(test[:, lip] != test[:, male]) < 0.9
  # Its own stream: not the test split's draws, the same on every call.
  again, seed2 = tcs.validation_split(cell, 4000)
  assert np.array_equal(attrs, again) and seed == seed2 and not np.array_equal(attrs, test)
  assert np.array_equal(tcs.unpack(tcs.pack(attrs), len(NAMES)), attrs)


def test_held_out_rows_are_scored_against_the_effect_over_their_images():
  line = _line('celeba', [0.5] + [0.0] * 12, ['relied on'] + ['no evidence'] * 12)
  for n in NAMES:
    line['reliance'][n]['effect'] = 0.2
  line['reliance_validation'] = {n: {'flip_rate': 0.5, 'effect': 0.5, 'num_examples': 1024}
                                 for n in NAMES}
  assert tcs.target_effect(line, 'Male', {}) == 0.2
  assert tcs.target_effect(line, 'Male', {'answered_from': 'validation'}) == 0.5
  # (2048 · 0.2 + 1024 · 0.5) / 3072 = 0.3, up to float rounding (1e-15).
  assert tcs.target_effect(line, 'Male', {'answered_from': 'test+validation'}) == \
      pytest.approx(0.3, abs=1e-15)
  old = {k: v for k, v in line.items() if k != 'reliance_validation'}    # an older line
  assert tcs.target_effect(old, 'Male', {'answered_from': 'test+validation'}) == 0.2
