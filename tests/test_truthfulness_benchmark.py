"""The truthfulness benchmark's CI cell: one tiny cell end to end, resumable, scored."""
import json
import os
import sys

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
  assert set(summary) == set(truthfulness.METHODS)
  for m in truthfulness.METHODS:
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
