"""The bad-input catalogue (docs/errors.md): each case exits 1 with a one-line error that names the
problem, prints no traceback, and writes nothing."""
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(script, *args, env=None):
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def _snapshot(path):
  if not os.path.exists(path):
    return None
  return sorted((os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)))
                for r, _, files in os.walk(path) for f in files)


CASES = {
    'unknown config field': (['--config.classifier.stepz=3'], 'stepz'),
    'unknown task attribute': (['--config.data.task=smile'], "unknown shapes attribute 'smile'"),
    'zero batch size': (['--config.concepts.batch_size=0'], 'config.concepts.batch_size must be positive'),
    'negative learning rate': (['--config.classifier.learning_rate=-1e-3'],
                               'config.classifier.learning_rate must be positive'),
    'zero latent size': (['--config.model.dvae.latent_dim=0'],
                         'config.model.dvae.latent_dim must be positive'),
    'batch not divisible by devices': (['--config.classifier.batch_size=30'],
                                       'multiple of the 4 devices'),
    'unknown stage': (['--stages=classifer'], "unknown stage(s) ['classifer']"),
    'warmup as long as the stage': (['--config.classifier.warmup_steps=100000'],
                                    'config.classifier: warmup_steps=100000 must be in [0, '
                                    'steps='),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_train_rejects(case, tmp_path):
  args, message = CASES[case]
  wd = str(tmp_path / 'wd')
  r = _cli('train.py', '--config=configs/tiny.py', f'--workdir={wd}', *args)
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  assert not os.path.exists(wd) or not os.listdir(wd)


def test_missing_and_empty_data_directory(tmp_path):
  missing = tmp_path / 'nope'
  r = _cli('train.py', '--config=configs/own_data.py', f'--workdir={tmp_path / "wd"}',
           f'--config.data.path={missing}', '--config.data.task=x')
  assert r.returncode == 1 and 'does not exist' in r.stderr and 'Traceback' not in r.stderr
  empty = tmp_path / 'empty'
  empty.mkdir()
  r = _cli('train.py', '--config=configs/own_data.py', f'--workdir={tmp_path / "wd"}',
           f'--config.data.path={empty}', '--config.data.task=x')
  assert r.returncode == 1 and 'is empty' in r.stderr and 'Traceback' not in r.stderr


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / 'file'
  f.write_text('keep me')
  r = _cli('train.py', '--config=configs/tiny.py', f'--workdir={f}')
  assert r.returncode == 1 and 'is a file, not a directory' in r.stderr
  assert 'Traceback' not in r.stderr and f.read_text() == 'keep me'


def test_changed_config_on_a_trained_workdir_keeps_everything(workdir_copy):
  before = _snapshot(workdir_copy)
  r = _cli('train.py', '--config=configs/tiny.py', f'--workdir={workdir_copy}',
           '--config.model.dvae.latent_dim=7')
  assert r.returncode == 1
  assert 'model.dvae.latent_dim: 6 → 7' in r.stderr and 'Traceback' not in r.stderr
  assert _snapshot(workdir_copy) == before


def test_verbose_shows_the_traceback(tmp_path):
  r = _cli('eval.py', '--config=configs/tiny.py', f'--workdir={tmp_path}', '--verbose')
  assert r.returncode != 0 and 'Traceback' in r.stderr


def test_unfinished_orbax_save_is_ignored(workdir_copy, tiny_config):
  # Orbax writes a step into a temporary directory and renames it when complete; a run
  # killed during a save leaves only that temporary directory, which must not be read.
  from lsei_jax import pipeline
  from lsei_jax.training import checkpoints
  tmp = os.path.join(workdir_copy, 'classifier', '16.orbax-checkpoint-tmp-1234')
  shutil.copytree(os.path.join(workdir_copy, 'classifier', '12'), tmp)
  ckpt = checkpoints.StageCheckpoints(workdir_copy, 'classifier', read_only=True)
  assert ckpt.latest_step() == 12
  ckpt.close()
  assert pipeline.train(tiny_config, workdir_copy, ['classifier'])['classifier']['step'] == 12
