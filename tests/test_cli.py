"""train.py / eval.py as a user runs them."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def test_train_then_eval_end_to_end(tmp_path):
  wd = str(tmp_path / 'run')
  r = _run('train.py', '--config=configs/tiny.py', f'--workdir={wd}',
           '--config.classifier.steps=8', '--config.explainer.train_noreg=False')
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run('eval.py', '--config=configs/tiny.py', f'--workdir={wd}',
           '--config.classifier.steps=8', '--config.explainer.train_noreg=False')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Table 1' in r.stdout and 'Table 2' in r.stdout
  assert 'Concept learner dvae: variance explained' in r.stdout
  m = json.load(open(os.path.join(wd, 'eval', 'metrics.json')))
  assert {'accuracy', 'recon_accuracy', 'agreement', 'flip_all_change', 'info_cosine'} <= set(m)
  assert 'info_cosine_noreg' not in m
  assert os.path.exists(os.path.join(wd, 'eval', 'fig3_grid.png'))


def test_eval_without_training_is_a_one_line_error(tmp_path):
  r = _run('eval.py', '--config=configs/tiny.py', f'--workdir={tmp_path}')
  assert r.returncode == 1
  assert "error: stage 'classifier' has no checkpoint" in r.stderr
  assert 'Traceback' not in r.stderr


@pytest.mark.parametrize('override, message', [
    ('--config.concepts.learning_rate=-1', 'config.concepts.learning_rate must be positive'),
    ('--config.model.concepts.kind=pca',
     "error: unknown concept learner config.model.concepts.kind='pca'"),
])
def test_bad_config_value_is_a_one_line_error(tmp_path, override, message):
  r = _run('train.py', '--config=configs/tiny.py', f'--workdir={tmp_path}', override)
  assert r.returncode == 1
  assert message in r.stderr
  assert 'Traceback' not in r.stderr
  assert not os.listdir(tmp_path)  # nothing written
