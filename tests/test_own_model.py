"""Explaining a classifier the library did not define: from Python (the README's example)
and from the command line (configs/own_model.py + examples/resnet.py)."""
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsei_jax
from lsei_jax.training import checkpoints
from lsei_jax.pipeline import identity
from lsei_jax import data as data_lib
from lsei_jax import errors

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

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
  x = np.asarray(test.images, np.float32) / 255.0
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
  # The sanity stage ran over a random head on the given embedding.
  assert run.metrics['sanity']['randomized'] == 'head'
  assert run.metrics['attribution_sanity']['gradient']['layers'] == ['head']
  assert os.path.exists(os.path.join(workdir, 'eval', 'report.html'))


def test_other_weights_are_refused(readme_run):
  workdir, scope = readme_run
  run, split = scope['run'], scope['split']
  other = dataclasses.replace(split, params=jax.tree.map(lambda a: a * 1.5, split.params))
  with pytest.raises(checkpoints.CheckpointError, match='classifier given now .* is not the one'):
    lsei_jax.train(run.config, workdir, classifier=other)
  with pytest.raises(checkpoints.CheckpointError, match='is not the one'):
    lsei_jax.evaluate(run.config, workdir, classifier=other)
  with pytest.raises(checkpoints.CheckpointError, match='explains a given classifier'):
    lsei_jax.load_run(run.config, workdir)
  # The same weights again: everything is complete, nothing retrains.
  metas = lsei_jax.train(run.config, workdir, ['concepts'], classifier=split)
  assert metas['concepts']['upstream'] == {'classifier': metas['classifier']}


def _run(args, env=None, **kw):
  env = env or dict(os.environ, PYTHONPATH=str(ROOT))
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
  _moves_to_other_rounding(args + [workdir], tmp_path, metrics)
  # A missing saved model is a one-line error naming the fix.
  proc = subprocess.run([sys.executable, 'train.py', *flags[:1],
                         f'--config.classifier.path={tmp_path}/none', f'--workdir={tmp_path}/x'],
                        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'no saved model at config.classifier.path' in proc.stderr


# The same workdir evaluated where floats round otherwise: the stand-in, on a CPU, for another
# device (issue 28: a run trained on the CPU evaluates on a GPU and back, where TF32 and other
# kernels change logits in their last bits). One device instead of 4, and XLA:CPU's
# convolutions through Eigen instead of YNNPACK: the given classifier's embedding differs by
# ~2e-7 (checked below), so a fingerprint of rounded floats could be refused here.
OTHER_ROUNDING = '--xla_force_host_platform_device_count=1 --xla_cpu_experimental_ynn_fusion_type='


def _moves_to_other_rounding(eval_args, tmp_path, metrics):
  record = json.load(open(tmp_path / 'wd' / 'classifier.json'))
  script = ('import json, sys, numpy as np; from lsei_jax.configs import own_model; '
            'from lsei_jax.training import given; import importlib; '
            f'c = own_model.get_config("tiny"); c.classifier.path = {str(tmp_path / "model")!r}; '
            'm, f = c.classifier.source.split(":"); '
            's = getattr(importlib.import_module(m), f)(c); '
            'x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype(np.float32); '
            'print(json.dumps(np.asarray(s.embed(s.params, x)).tolist()))')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  here, there = (np.array(json.loads(subprocess.run(
      [sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, check=True,
      env=dict(env, XLA_FLAGS=flags)).stdout)) for flags in (os.environ['XLA_FLAGS'],
                                                              OTHER_ROUNDING))
  assert not np.array_equal(here, there), 'the stand-in changes no float: it proves nothing'
  out = _run(eval_args, env=dict(env, XLA_FLAGS=OTHER_ROUNDING))
  assert 'Table 1' in out and 'probe_logits' in record
  moved = json.load(open(tmp_path / 'wd' / 'eval' / 'metrics.json'))
  assert moved.keys() == metrics.keys()
  # Predictions may flip only where a logit margin is within rounding: at most 2 of the test
  # images (accuracy is a share of them), and every verdict the same.
  assert abs(moved['accuracy'] - metrics['accuracy']) <= 2 / metrics['num_examples'] + 1e-9
  verdicts = lambda m: [(r['attribute'], r.get('verdict'), r['flagged'])
                        for r in m['bias_report']]
  assert verdicts(moved) == verdicts(metrics)


# ------------------------------------------- the sanity check for a classifier of plain functions
def _plain_embed(p, x):
  """Linear features, reordered by an integer index, normalised by BatchNorm-style running
  statistics, ReLU: h [B, 16]."""
  w, order, stats, _ = p
  z = (x.reshape(x.shape[0], -1) @ w)[:, order]
  return jax.nn.relu((z - stats['mean']) / jnp.sqrt(stats['var'] + 1e-5))


def _plain_head(p, h):
  return h @ p[3]


def _plain_classifier(ds, d=16):
  """A classifier that is not Flax: params a tuple with an int32 leaf and running stats;
  the head fitted by least squares on the training images' features."""
  x = np.asarray(ds.images, np.float32).reshape(len(ds), -1) / 255.0
  w = np.random.default_rng(0).normal(size=(x.shape[1], d)).astype(np.float32) / 30.0
  order = np.arange(d, dtype=np.int32)[::-1].copy()
  z = (x @ w)[:, order]
  stats = {'mean': z.mean(0), 'var': z.var(0)}
  h = np.maximum((z - stats['mean']) / np.sqrt(stats['var'] + 1e-5), 0)
  onehot = np.eye(2, dtype=np.float32)[ds.labels]
  v = np.linalg.lstsq(np.c_[h, np.ones(len(h))], 4 * onehot - 2, rcond=None)[0][:-1]
  params = (jnp.asarray(w), jnp.asarray(order), jax.tree.map(jnp.asarray, stats),
            jnp.asarray(v, jnp.float32))
  return lsei_jax.ClassifierSplit(embed=_plain_embed, head=_plain_head, params=params,
                                  name='a plain function pair')


def test_sanity_check_of_a_plain_function_pair(tmp_path, tiny_config):
  config = tiny_config.copy_and_resolve_references()
  ds = data_lib.load(config.data, 'train')
  split = _plain_classifier(ds)
  workdir = str(tmp_path / 'wd')
  metas = lsei_jax.train(config, workdir, classifier=split)
  # The sanity run's classifier is the random head, recorded like any given classifier.
  rand = identity.sanity_classifier(config.seed, split, ds.images)
  record = json.load(open(os.path.join(workdir, 'sanity', 'classifier.json')))
  assert metas['sanity/classifier'] == {'given': record['given']}
  assert identity.given_identity(rand, config.data.image_size) == metas['sanity/classifier']
  assert metas['sanity/classifier'] != metas['classifier']
  assert metas['sanity/explainer']['upstream']['classifier'] == metas['sanity/classifier']
  assert record['embed_dim'] == 16 and record['num_classes'] == 2
  result = lsei_jax.evaluate(config, workdir, classifier=split)
  x = jnp.asarray(data_lib.load(config.data, 'test').images, jnp.float32) / 255.0
  labels = data_lib.load(config.data, 'test').labels
  assert result['accuracy'] == pytest.approx(np.mean(np.argmax(split(x), -1) == labels))
  assert result['sanity']['randomized'] == 'head'
  assert result['sanity']['random_accuracy'] == pytest.approx(
      np.mean(np.argmax(rand(x), -1) == labels))
  assert -1 <= result['sanity']['rank_correlation'] <= 1
  for v in result['attribution_sanity'].values():
    assert v['layers'] == ['head'] and -1 <= v['spearman_abs'][0] < 1
  # 'init' cannot re-initialise a classifier the library did not build.
  config.sanity.randomize = 'init'
  with pytest.raises(errors.UserError, match="randomize='init'"):
    lsei_jax.train(config, workdir, classifier=split)
