"""The truthfulness benchmark's CI cell: one tiny cell end to end, resumable, scored."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import truthfulness  # noqa: E402  pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


def test_ci_cell_writes_one_scored_line_and_resumes(tmp_path, capsys):
  out = str(tmp_path / 'bench')
  truthfulness.main(['--ci', '--base', 'tiny', '--out', out])
  lines = truthfulness.read_lines(out)
  assert len(lines) == 1
  line = lines[0]
  assert line['cell'] == truthfulness.cell_key(truthfulness.grid(ci=True)[0])
  assert set(line['reliance']) == set(line['names'])
  for v in line['reliance'].values():
    assert 0.0 <= v['flip_rate'] <= 1.0 and v['num_examples'] == 64
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert set(summary) == set(truthfulness.METHODS) | {'closed_loop'}
  assert set(summary['closed_loop']) == set(truthfulness.LOOP_METHODS) | {
      'prediction_association'}
  for m in truthfulness.METHODS + truthfulness.LOOP_METHODS:
    score, flag = truthfulness.method_scores(line, m)
    assert set(score) == set(flag) == set(line['names'])
  # Resumable: a finished cell is not run again.
  truthfulness.main(['--ci', '--base', 'tiny', '--out', out])
  assert len(truthfulness.read_lines(out)) == 1
  assert '| prediction_association |' in capsys.readouterr().out


def test_scoring_against_a_known_truth():
  names = ['shape', 'color', 'size', 'position', 'background', 'texture']
  rel = dict(zip(names, [0.9, 0.6, 0.05, 0.04, 0.06, 0.03]))
  line = {'names': names, 'task': 'shape', 'spurious': 'color',
          'reliance': {n: {'flip_rate': v, 'num_examples': 1024} for n, v in rel.items()},
          'association_rows': [{'attribute': n, 'shift': v, 'flagged': v > 0.5}
                               for n, v in rel.items()]}
  _, relied, unused = truthfulness.truth(line)
  assert relied == {'shape': True, 'color': True, 'size': False, 'position': False,
                    'background': False, 'texture': False}
  assert unused['texture'] and not unused['color']
  s = truthfulness.summarize([line], ['prediction_association'])['prediction_association']
  assert s['median_spearman'] == pytest.approx(1.0)
  assert s['precision'] == s['recall'] == s['recall_strong'] == 1.0 and s['fpr_unused'] == 0.0


def test_learner_dimension_keys_groups_and_resume():
  cells = truthfulness.grid(learners=('dvae', 'nmf'), spurious=('color',), rhos=(0.9, 1.0),
                            difficulty=('hard',), seeds=(0,))
  assert [truthfulness.cell_key(c) for c in cells] == [
      'color-rho0.9-hard-s0-dvae', 'color-rho0.9-hard-s0-nmf',
      'color-rho1.0-hard-s0-dvae', 'color-rho1.0-hard-s0-nmf']
  # A line written before the learner dimension (no 'learner') is the DVAE's.
  old = dict(spurious='color', rho=0.9, difficulty='hard', seed=0, cell='color-rho0.9-hard-s0')
  assert truthfulness.cell_key(old) == 'color-rho0.9-hard-s0-dvae'
  groups = truthfulness.todo_cells(cells, [old])
  assert [[truthfulness.cell_key(c) for c in g] for g in groups] == [
      ['color-rho0.9-hard-s0-nmf'], ['color-rho1.0-hard-s0-dvae', 'color-rho1.0-hard-s0-nmf']]
  # Shards split (data, seed) groups, never the learners of one classifier.
  assert [[c['learner'] for c in g] for g in truthfulness.todo_cells(cells, [], (1, 2))] == [
      ['dvae', 'nmf']]
  assert truthfulness.todo_cells(cells, [dict(c) for c in cells]) == []


def test_learner_table_compares_learners_on_common_cells():
  lines = [dict(spurious='color', rho=r, difficulty='hard', seed=0, learner=l)
           for r, l in [(0.9, 'nmf'), (0.9, 'dvae'), (1.0, 'dvae'), (0.9, 'topk_sae')]]
  groups = truthfulness.by_learner(lines)
  assert list(groups) == ['dvae', 'topk_sae', 'nmf']       # LEARNERS order
  assert all([l['rho'] for l in g] == [0.9] for g in groups.values())  # ρ 1.0: DVAE only
  row = lambda v: {'median_spearman': v, 'median_spearman_raw': v, 'precision': v,
                   'recall': None, 'recall_strong': v, 'fpr_unused': v}
  summaries = {k: {m: row(i / 10) for m in truthfulness.METHODS}
               for i, k in enumerate(['dvae', 'nmf'])}
  table = truthfulness.format_learner_table(summaries).splitlines()
  assert len(table) == 2 + 2 * len(truthfulness.LEARNER_METHODS) + 2
  assert '| flip_all | dvae | 0.00 | 0.00 | 0.00 | — | 0.00 | 0.00 |' in table
  assert '| flip_all | nmf | 0.10 | 0.10 | 0.10 | — | 0.10 | 0.10 |' in table
  assert [r for r in table if r.startswith('| tcav |')] == [
      '| tcav | any (classifier only) | 0.00 | 0.00 | 0.00 | — | 0.00 | 0.00 |']


def test_classifier_only_cell_scores_the_verdict_on_stored_predictions(tmp_path, capsys):
  out = str(tmp_path / 'verdict')
  truthfulness.main(['--ci', '--base', 'tiny', '--out', out, '--classifier_only'])
  lines = truthfulness.read_lines(out)
  assert len(lines) == 1
  line = lines[0]
  assert line['cell'].endswith('-classifier') and len(line['pred']) == 64
  # The stored predictions are the classifier's: the verdict computed again from them is
  # the line's own, exactly, and so is the accuracy.
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.reporting import bias  # pylint: disable=g-import-not-at-top
  config = truthfulness.cell_config(truthfulness.grid(ci=True)[0], 'tiny')
  test = data_lib.load(config.data, 'test')
  pred = np.asarray(line['pred'])
  assert line['accuracy'] == pytest.approx(np.mean(pred == test.labels), abs=0)
  again = bias.prediction_association(pred, test.attributes, line['names'], line['task'], 2)
  assert again == line['association_rows']
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert set(summary) == {'prediction_association'}
  assert '1 cells (classifier only)' in capsys.readouterr().out
  # Resumable, and a folder of classifier-only lines is scored as such without the flag.
  truthfulness.main(['--ci', '--base', 'tiny', '--out', out, '--classifier_only'])
  assert len(truthfulness.read_lines(out)) == 1
  truthfulness.main(['--out', out, '--table'])
  assert '| prediction_association |' in capsys.readouterr().out
