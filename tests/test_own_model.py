"""Explaining a classifier the library did not define: from Python (the README's example)
and from the command line (configs/own_model.py + examples/resnet.py)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import lsei_jax
from lsei_jax.training import checkpoints, pipeline
from lsei_jax import data as data_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block(marker):
  match = re.search(rf'<!-- {marker} -->\s*```(?:python)?\n(.*?)```', (ROOT / 'README.md').read_text(),
                    re.S)
  assert match, f'README lost its {marker} block'
  return match.group(1)


@pytest.fixture(scope='module')
def readme_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('own') / 'wd')
  code = _readme_block('own-model-example')
  assert "'runs/own_example'" in code
  scope = {}
  exec(compile(code.replace("'runs/own_example'", repr(workdir)), 'README-own-model', 'exec'),
       scope)
  return workdir, scope


def test_readme_example_explains_the_given_classifier(readme_run):
  workdir, scope = readme_run
  run, split = scope['run'], scope['split']
  test = data_lib.load(run.config.data, 'test')
  x = test.images.astype(np.float32) / 255.0
  logits = np.asarray(split(x))
  # Oracle: the metrics are the given classifier's own (it was not retrained).
  assert run.metrics['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == test.labels))
  np.testing.assert_allclose(run.classify(test.images), logits, rtol=1e-5, atol=1e-5)
  assert run.metrics['embed_dim'] == 16 and run.metrics['num_classes'] == 2
  record = json.load(open(os.path.join(workdir, 'classifier.json')))
  assert run.metrics['classifier'] == {'given': record['given']}
  assert not os.path.exists(os.path.join(workdir, 'classifier'))  # never trained
  out = run.intervene(test.images[:4])
  np.testing.assert_array_equal(out['bits_after'], 1 - out['bits'])
  np.testing.assert_allclose(out['logits_after'], run.head(run.decode(1 - out['bits'])),
                             rtol=1e-6)
  assert run.metrics['sanity'] is not None  # the sanity stage ran over permuted weights
  assert os.path.exists(os.path.join(workdir, 'eval', 'report.html'))


def test_other_weights_are_refused(readme_run):
  workdir, scope = readme_run
  run, split = scope['run'], scope['split']
  other = pipeline.randomized_split(split, jax.random.key(5))
  with pytest.raises(checkpoints.CheckpointError, match='classifier given now .* is not the one'):
    lsei_jax.train(run.config, workdir, classifier=other)
  with pytest.raises(checkpoints.CheckpointError, match='is not the one'):
    lsei_jax.evaluate(run.config, workdir, classifier=other)
  with pytest.raises(checkpoints.CheckpointError, match='explains a given classifier'):
    lsei_jax.load_run(run.config, workdir)
  # The same weights again: everything is complete, nothing retrains.
  metas = lsei_jax.train(run.config, workdir, ['dvae'], classifier=split)
  assert metas['dvae']['upstream'] == {'classifier': metas['classifier']}


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900, **kw)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_command_line_own_model(tmp_path):
  cmds = [line.split() for block in _readme_block('own-model-cli').strip().splitlines()
          for line in block.split(' && ')]
  assert [c[:2] for c in cmds] == [['python', '-m'], ['python', 'train.py'],
                                   ['python', 'eval.py']]
  flags = ['--config=configs/own_model.py:tiny', f'--config.classifier.path={tmp_path}/model',
           '--config.sanity.enabled=False', '--config.explainer.train_noreg=False']
  workdir = f'--workdir={tmp_path}/wd'
  for cmd in cmds:
    args = [a for a in cmd[1:] if not a.startswith(('--config', '--workdir'))] + flags
    out = _run(args + ([workdir] if 'examples.resnet' not in cmd else []))
  assert 'Table 1' in out
  metrics = json.load(open(tmp_path / 'wd' / 'eval' / 'metrics.json'))
  assert metrics['embed_dim'] == 16 and 'given' in metrics['classifier']
  # A missing saved model is a one-line error naming the fix.
  proc = subprocess.run([sys.executable, 'train.py', *flags[:1],
                         f'--config.classifier.path={tmp_path}/none', f'--workdir={tmp_path}/x'],
                        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'no saved model at config.classifier.path' in proc.stderr
