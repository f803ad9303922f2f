"""Issue 28, "no silent wrong answers, round three": the data's content in every stage's
signature, a given classifier checked before it is trusted, user errors before training,
complete validation of `explain`'s arrays, fingerprints that travel between devices."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsei_jax
from lsei_jax import data as data_lib
from lsei_jax import errors
from lsei_jax.data import byo, fingerprint
from lsei_jax import pipeline
from lsei_jax.pipeline import identity
from lsei_jax.training import checkpoints

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)


# ------------------------------------------------------------ 1. the data's fingerprint
def _arrays(config):
  """The tiny shapes data as explain's arrays: train then test, with a split column."""
  tr, te = data_lib.load(config.data, 'train'), data_lib.load(config.data, 'test')
  return {'images': np.concatenate([tr.images, te.images]),
          'attributes': np.concatenate([tr.attributes, te.attributes]),
          'attribute_names': list(tr.attribute_names),
          'labels': np.concatenate([tr.labels, te.labels]),
          'split': np.array(['train'] * len(tr) + ['test'] * len(te))}


def _changed(arrays):
  """The issue's B: inverted images and negated attributes, the same labels and split."""
  return dict(arrays, images=255 - arrays['images'], attributes=~arrays['attributes'])


def test_fingerprint_names_the_part_that_changed(tiny_config):
  ds = data_lib.load(tiny_config.data, 'train')
  base = fingerprint.fingerprint(ds)
  assert base['size'] == str(len(ds)) and fingerprint.fingerprint(ds) == base
  variants = {
      'images': data_lib.Dataset(255 - np.asarray(ds.images), ds.labels, ds.attributes,
                                 ds.attribute_names, ds.task),
      'attributes': data_lib.Dataset(ds.images, ds.labels, ~ds.attributes,
                                     ds.attribute_names, ds.task),
      'labels': data_lib.Dataset(ds.images, 1 - ds.labels, ds.attributes,
                                 ds.attribute_names, ds.task)}
  for part, other in variants.items():
    fp = fingerprint.fingerprint(other)
    assert [k for k in fingerprint.PARTS if fp[k] != base[k]] == [part], part
  # One pixel of a sampled image, and one grid pixel of any image, are seen.
  for i, (y, x) in ((0, (3, 5)), (1, (0, 7))):
    im = np.array(ds.images)   # on disk (rows.Rows): a copy in memory
    im[i, y, x, 0] ^= 1
    fp = fingerprint.fingerprint(data_lib.Dataset(im, ds.labels, ds.attributes,
                                                  ds.attribute_names, ds.task))
    assert fp['images'] != base['images'] and fp['labels'] == base['labels']
  fewer = fingerprint.fingerprint(data_lib.Dataset(ds.images[1:], ds.labels[1:],
                                                   ds.attributes[1:], ds.attribute_names,
                                                   ds.task))
  assert fewer['size'] != base['size']


def test_fingerprint_is_content_not_path(tmp_path, tiny_config):
  arrays = _arrays(tiny_config)
  cfg = tiny_config.data.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.update(name='numpy', arrays='', task='label', test_fraction=0.2)
  fps = []
  for name in ('a.npz', 'b.npz'):
    byo.save_npz(str(tmp_path / name), **arrays)
    with cfg.unlocked():
      cfg.path = str(tmp_path / name)
    fps.append(fingerprint.of_config(cfg))
  assert fps[0] == fps[1]
  byo.save_npz(str(tmp_path / 'b.npz'), **_changed(arrays))  # the same path, new content
  now = fingerprint.of_config(cfg)
  assert now['images'] != fps[0]['images'] and now['attributes'] != fps[0]['attributes']
  assert now['labels'] == fps[0]['labels'] and now['size'] == fps[0]['size']


def test_changed_data_message_names_the_data():
  sig = {'_signature': 3, 'seed': 0, 'data.content.images': 'a', 'data.content.labels': 'b'}
  now = dict(sig, **{'data.content.images': 'c'})
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'^the training data changed since stage concepts in d was trained: '
                           r'its images differ') as e:
    checkpoints.check_config('concepts', 'd', sig, now)
  assert '\n' not in str(e.value)
  # A changed data field changes the content too: the field is what the message names.
  with pytest.raises(checkpoints.CheckpointError, match=r"config changed .*\(data.rho: 0.9 → "
                                                        r"0.5\); use the original"):
    checkpoints.check_config('concepts', 'd', dict(sig, **{'data.rho': 0.9}),
                             dict(now, **{'data.rho': 0.5}))
  # A checkpoint written before data fingerprints existed: the legacy message.
  with pytest.raises(checkpoints.CheckpointError, match='signature version 2'):
    checkpoints.check_config('concepts', 'd', dict(sig, _signature=2), now)


def test_resume_on_changed_npz_is_refused(tmp_path, tiny_config):
  """The issue's repro: a classifier checkpoint on cur.npz, cur.npz replaced, rerun."""
  arrays = _arrays(tiny_config)
  path = str(tmp_path / 'cur.npz')
  byo.save_npz(path, **arrays)
  config = tiny_config.copy_and_resolve_references()
  with config.unlocked():
    config.data = dict(name='numpy', path=path, arrays='', image_size=16, task='label',
                       test_fraction=0.2, validation_fraction=0.0, seed=0)
    config.classifier.steps = 4
  workdir = str(tmp_path / 'wd')
  pipeline.train(config, workdir, ['classifier'])
  byo.save_npz(path, **_changed(arrays))
  with pytest.raises(errors.UserError, match=r'training data changed .* attributes, images '
                                             r'differ'):
    pipeline.train(config, workdir, ['classifier'])
  byo.save_npz(path, **arrays)   # the original data back: accepted again
  pipeline.train(config, workdir, ['classifier'])


def _plain_embed(p, x):
  """Linear features of the pixels, ReLU: h [B, 16] (rows independent)."""
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ p['w'])


def _plain_head(p, h):
  return h @ p['v']


def _plain_split(images, labels, d=16):
  """A given classifier of plain functions, its head fitted by least squares."""
  x = np.asarray(images).astype(np.float32).reshape(len(images), -1) / 255.0   # Rows or array
  w = np.random.default_rng(0).normal(size=(x.shape[1], d)).astype(np.float32) / 30.0
  h = np.maximum(x @ w, 0)
  v = np.linalg.lstsq(h, 4 * np.eye(2, dtype=np.float32)[labels] - 2, rcond=None)[0]
  return lsei_jax.ClassifierSplit(embed=_plain_embed, head=_plain_head,
                                  params={'w': jnp.asarray(w), 'v': jnp.asarray(v, jnp.float32)},
                                  name='a plain function pair')


@pytest.mark.slow
def test_explain_on_changed_arrays_is_refused_naming_the_data(tmp_path, tiny_config):
  """explain(split, A) then explain(split, B) in one workdir: B is refused, with the
  sanity check off and on, and the message says the data changed, not the classifier."""
  a = _arrays(tiny_config)
  split = _plain_split(a['images'][a['split'] == 'train'], a['labels'][a['split'] == 'train'])
  config = tiny_config.copy_and_resolve_references()
  config.sanity.enabled = True
  workdir = str(tmp_path / 'wd')
  run = lsei_jax.explain(split, a, config=config, workdir=workdir)
  assert run.metrics['num_examples'] == int((a['split'] == 'test').sum())
  for sanity in (False, True):
    config.sanity.enabled = sanity
    with pytest.raises(errors.UserError, match=r'^the training data changed since stage concepts '
                                               r'.*: its attributes, images differ') as e:
      lsei_jax.explain(split, _changed(a), config=config, workdir=workdir)
    assert 'classifier' not in str(e.value)
  # A still explains (nothing was lost), and is reused, not retrained: the same test
  # split through the same computation gives bitwise the same accuracy.
  again = lsei_jax.explain(split, a, config=config, workdir=workdir)
  assert again.metrics['accuracy'] == run.metrics['accuracy']
  # The test split alone changed (the train split, hence every signature, is the same): an
  # attribute constant there, another with one positive. Evaluation skips them in TCAV
  # with a note instead of ending in a traceback after all training (issue 28, item 3).
  test = a['split'] == 'test'
  attrs = a['attributes'].copy()
  attrs[test, 1] = False
  attrs[test, 4] = False
  attrs[np.flatnonzero(test)[0], 4] = True
  names = a['attribute_names']
  run = lsei_jax.explain(split, dict(a, attributes=attrs), config=config, workdir=workdir)
  assert sorted(run.metrics['tcav_skipped']) == sorted([names[1], names[4]])
  assert {t['concept'] for t in run.metrics['tcav']} == set(names) - {names[1], names[4]}
  assert 'not scored by TCAV' in open(os.path.join(workdir, 'eval', 'report.html')).read()


# ------------------------------------------------------------ 2. a given classifier's rows
import flax.linen as nn  # noqa: E402

from lsei_jax import classifier_split  # noqa: E402


class _DropoutNet(nn.Module):
  """conv → pool (Dense) → dropout → Dense: dropout only after the cut."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x)).reshape(x.shape[0], -1)
    h = nn.relu(nn.Dense(8, name='pool')(x))
    return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(h))


def _images(n=8, size=16, seed=0):
  return np.asarray(jax.random.uniform(jax.random.key(seed), (n, size, size, 3)))


def test_independent_rows_accepts_inference_mode_classifiers():
  x = _images()
  model = _DropoutNet()
  v = model.init(jax.random.key(0), x[:1])
  classifier_split.check_independent_rows(
      lsei_jax.split_at(model, v, 'pool', example=x, train=False), x)
  a = _arrays_like(x)
  classifier_split.check_independent_rows(_plain_split(a['images'], a['labels']), x)


def _arrays_like(x):
  return {'images': np.round(x * 255).astype(np.uint8),
          'labels': (x.mean((1, 2, 3)) > np.median(x.mean((1, 2, 3)))).astype(np.int32)}


def test_embedding_that_subtracts_the_batch_mean_is_refused():
  x = _images()
  a = _arrays_like(x)
  base = _plain_split(a['images'], a['labels'])
  centred = lsei_jax.ClassifierSplit(
      embed=lambda p, x: (lambda h: h - h.mean(0))(_plain_embed(p, x)), head=_plain_head,
      params=base.params, name='a centred embedding')
  with pytest.raises(errors.UserError, match=r'^a centred embedding: its embed gives other '
                                             r'rows .* train=False') as e:
    classifier_split.check_independent_rows(centred, x)
  assert '\n' not in str(e.value)


def test_split_at_in_train_mode_with_dropout_is_refused():
  """The issue's `split_at(model, v, 'pool', train=True, rngs={'dropout': key})`."""
  x = _images()
  model = _DropoutNet()
  v = model.init(jax.random.key(0), x[:1])
  split = lsei_jax.split_at(model, v, 'pool', example=x, train=True,
                            rngs={'dropout': jax.random.key(1)})
  with pytest.raises(errors.UserError, match=r"its head gives other rows .* no dropout"):
    classifier_split.check_independent_rows(split, x)


def test_nondeterministic_embedding_is_refused():
  x = _images()
  a = _arrays_like(x)
  base = _plain_split(a['images'], a['labels'])
  rng = np.random.default_rng(0)
  noise = lambda h: jax.pure_callback(
      lambda h: (np.asarray(h) + rng.normal(size=h.shape)).astype(np.float32),
      jax.ShapeDtypeStruct(h.shape, jnp.float32), h)
  noisy = lsei_jax.ClassifierSplit(embed=lambda p, x: noise(_plain_embed(p, x)),
                                   head=_plain_head, params=base.params, name='noisy')
  with pytest.raises(errors.UserError, match='a second call on the same batch'):
    classifier_split.check_independent_rows(noisy, x)


def test_train_refuses_a_batch_dependent_classifier_before_training(tmp_path, tiny_config):
  ds = data_lib.load(tiny_config.data, 'train')
  base = _plain_split(ds.images, ds.labels)
  centred = lsei_jax.ClassifierSplit(
      embed=lambda p, x: (lambda h: h - h.mean(0))(_plain_embed(p, x)), head=_plain_head,
      params=base.params, name='a centred embedding')
  workdir = str(tmp_path / 'wd')
  with pytest.raises(errors.UserError, match='depend on the rest of the batch'):
    lsei_jax.train(tiny_config, workdir, classifier=centred)
  assert not os.path.exists(os.path.join(workdir, 'concepts'))


# ------------------------------------------------------------ 3. user errors, not tracebacks
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

from lsei_jax.pipeline import evaluation  # noqa: E402
from lsei_jax.reporting import crosscheck  # noqa: E402
from lsei_jax.training import workdir as workdir_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tcav_skips_a_constant_or_too_rare_attribute_with_a_note():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(40, 6)).astype(np.float32)
  attrs = rng.random((40, 4)) < 0.5
  attrs[:, 1] = False            # constant on this split
  attrs[:, 3] = False
  attrs[7, 3] = True             # one positive
  labels = (h[:, 0] > 0).astype(np.int32)
  w = rng.normal(size=(6, 2)).astype(np.float32)
  cfg = types.SimpleNamespace(num_runs=3, num_per_side=8, output='logit',
                              cav_method='mean_difference', alpha=0.05)
  names = ['a', 'const', 'b', 'rare']
  head = lambda e: e @ w
  entries = crosscheck.tcav_entries(jax.random.key(0), head, h, attrs, labels, names, cfg)
  assert sorted({t['concept'] for t in entries}) == ['a', 'b']
  assert {t['class'] for t in entries} == {0, 1}
  # The scored concepts are those of TCAV run on them alone (same key, same pools).
  alone = crosscheck.tcav_entries(jax.random.key(0), head, h, attrs[:, [0, 2]], labels,
                                  ['a', 'b'], cfg)
  assert entries == alone
  skipped = crosscheck.tcav_skipped(attrs, names)
  assert list(skipped) == ['const', 'rare']
  assert '0 of the 40' in skipped['const'] and '1 of the 40' in skipped['rare']
  assert crosscheck.tcav_entries(jax.random.key(0), head, h, attrs[:, [1]], labels,
                                 ['const'], cfg) == []


def test_eval_on_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'wd'
  path.write_text('not a directory')
  proc = subprocess.run([sys.executable, 'eval.py', '--config=configs/tiny.py',
                         f'--workdir={path}'], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1] == f'error: workdir {path} is a file, not a directory; pass the directory ' \
                      'the run was trained in', proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_eval_on_a_read_only_workdir_is_one_line(tmp_path, monkeypatch, tiny_config):
  """Root ignores permission bits, so a read-only mount is simulated where the lock is made."""
  workdir = tmp_path / 'wd'
  workdir.mkdir()
  real_open = os.open

  def read_only(path, *args, **kw):
    if str(path).startswith(str(workdir)):
      raise OSError(30, 'Read-only file system', str(path))
    return real_open(path, *args, **kw)

  monkeypatch.setattr(workdir_lib.os, 'open', read_only)
  with pytest.raises(errors.UserError, match=r'^workdir .*wd is not writable \(cannot create '
                                             r'its lock .*Read-only file system\)') as e:
    evaluation.evaluate(tiny_config, str(workdir))
  assert '\n' not in str(e.value)


# ------------------------------------------------------------ 4. explain's arrays, checked
def _explain_refuses(tmp_path, config, split, data, pattern):
  workdir = str(tmp_path / 'wd')
  with pytest.raises(errors.UserError, match=pattern) as e:
    lsei_jax.explain(split, data, config=config, workdir=workdir)
  assert '\n' not in str(e.value)
  assert not any(os.path.isdir(os.path.join(workdir, s)) for s in pipeline.STAGES)
  return str(e.value)


@pytest.fixture(scope='module')
def explain_inputs(tiny_config):
  a = _arrays(tiny_config)
  train = a['split'] == 'train'
  return a, _plain_split(a['images'][train], a['labels'][train])


@pytest.mark.parametrize('change, pattern', [
    (lambda a: dict(a, split=a['split'][:-5]),
     r'^explain data: split must be \[N=320\], one per image, got \[315\]'),
    (lambda a: dict(a, split=np.concatenate([a['split'], ['test'] * 3])),
     r'^explain data: split must be \[N=320\], one per image, got \[323\]'),
    (lambda a: dict(a, attribute_names=a['attribute_names'][:2] + a['attribute_names'][:1]
                    + a['attribute_names'][3:]),
     r"^explain data: attribute name 'shape' is given twice \(columns 0 and 2\)"),
    (lambda a: dict(a, images=np.transpose(a['images'], (0, 3, 1, 2))),
     r'^explain data: images must be NHWC \[N, H, W, 3\], got \[N, 3, H, W\] = '
     r'\[320, 3, 16, 16\]: transpose them with np.transpose\(images, \(0, 2, 3, 1\)\)'),
    (lambda a: dict(a, labels=a['labels'][:10]),
     r'^explain data: labels must be \[N=320\]'),
    (lambda a: {k: v for k, v in a.items() if k != 'attributes'},
     r'^explain data: missing attributes'),
], ids=['split_shorter', 'split_longer', 'duplicate_names', 'nchw', 'labels_shorter',
        'missing_key'])
def test_explain_refuses_bad_arrays(tmp_path, tiny_config, explain_inputs, change, pattern):
  a, split = explain_inputs
  _explain_refuses(tmp_path, tiny_config, split, change(a), pattern)


class _AuxNet(nn.Module):
  """A model that returns (logits, aux), as many do."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8, name='pool')(x.reshape(x.shape[0], -1)))
    return nn.Dense(2)(h), h


def test_a_model_returning_logits_and_aux_is_refused_by_name(tmp_path, tiny_config,
                                                             explain_inputs):
  x = _images()
  model = _AuxNet()
  v = model.init(jax.random.key(0), x[:1])
  with pytest.raises(errors.UserError, match=r"^the classifier's model returns a tuple of 2 "
                                             r"outputs, not one array logits \[B, C\]"):
    lsei_jax.split_at(model, v, 'pool', example=x)
  a, base = explain_inputs
  aux_head = lsei_jax.ClassifierSplit(embed=_plain_embed,
                                      head=lambda p, h: (_plain_head(p, h), h),
                                      params=base.params)
  _explain_refuses(tmp_path, tiny_config, aux_head, a,
                   r"^the classifier's head returns a tuple of 2 outputs")


def test_plain_functions_with_a_missing_parameter_are_refused(tmp_path, tiny_config,
                                                              explain_inputs):
  a, base = explain_inputs
  no_params = lsei_jax.ClassifierSplit(
      embed=lambda x: jax.nn.relu(x.reshape(x.shape[0], -1)), head=_plain_head,
      params=base.params)
  _explain_refuses(tmp_path, tiny_config, no_params, a,
                   r"^the classifier's embed must take 2 arguments \(params, images\), but "
                   r"it is <lambda>\(x\)")
  lacking = dataclasses.replace(base, params={'w': base.params['w']})
  _explain_refuses(tmp_path, tiny_config, lacking, a,
                   r"^the classifier's head reads the entry 'v' of its params, which the "
                   r"params given lack")


# ------------------------------------------------------------ 5. fingerprints that travel
from lsei_jax.training import given as given_lib  # noqa: E402


_JITTER = [np.zeros((8, 2), np.float32)]   # read at trace time, not held by a closure


def _jittery_head(p, h):
  """_plain_head plus the current _JITTER: the same weights and function, evaluated with
  another device's rounding."""
  return _plain_head(p, h) + _JITTER[0][:h.shape[0]]


def test_given_fingerprint_ignores_logit_jitter_but_not_other_weights(explain_inputs):
  """The issue: ±1e-5 on the logits changed the old fingerprint in 14 of 20 draws."""
  _, base = explain_inputs
  split = dataclasses.replace(base, head=_jittery_head)
  fps = set()
  for s in range(20):
    _JITTER[0] = np.random.default_rng(s).uniform(-1e-5, 1e-5, (8, 2)).astype(np.float32)
    fps.add(identity.classifier_fingerprint(split, 16))
  _JITTER[0] = np.zeros((8, 2), np.float32)
  assert len(fps) == 1
  assert fps == {identity.classifier_fingerprint(split, 16)}
  other = dataclasses.replace(split, params={'w': split.params['w'],
                                             'v': split.params['v'] * 1.001})
  assert identity.classifier_fingerprint(other, 16) not in fps
  host = dataclasses.replace(split, params=jax.tree.map(np.asarray, split.params))
  assert identity.classifier_fingerprint(host, 16) in fps   # where params live: no matter
  # Weights a closure holds are weights too.
  w2 = np.asarray(split.params['v'])
  closed = lambda w: dataclasses.replace(split, head=lambda p, h: h @ w)
  assert (identity.classifier_fingerprint(closed(w2), 16)
          != identity.classifier_fingerprint(closed(w2 * 1.001), 16))


def test_workdir_refuses_the_same_weights_in_another_function(tmp_path):
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(16 * 16 * 3, 4)), jnp.float32) / 30,
            'v': jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}
  split = lsei_jax.ClassifierSplit(embed=_plain_embed, head=_plain_head, params=params)
  probe = identity.probe_images(16)
  given = {'given': given_lib.identify(split, probe)}
  record = dict(given, **given_lib.record_fields(given))
  given_lib.check_record(workdir, record, given)            # itself: accepted
  # The recorded logits as another device computes them: within the tolerance.
  shaky = dict(record, probe_logits=(np.asarray(record['probe_logits'])
                                     * (1 + 1e-4)).tolist())
  given_lib.check_record(workdir, shaky, given)
  # Another function of the same name and params (edited between runs): its logits differ.
  doubled = dict(record, probe_logits=(2 * np.asarray(record['probe_logits'])).tolist())
  with pytest.raises(checkpoints.CheckpointError, match='logits on the probe batch differ'):
    given_lib.check_record(workdir, doubled, given)
  # A workdir made with the old, rounded fingerprint: a clear message, not 'another classifier'.
  with pytest.raises(checkpoints.CheckpointError, match='written by an older lsei_jax'):
    given_lib.check_record(workdir, {'given': given['given']}, given)


def test_function_description_is_stable_and_addresses_free():
  model = _DropoutNet()
  v = model.init(jax.random.key(0), _images()[:1])
  a = lsei_jax.split_at(model, v, 'pool', example=_images(), train=False)
  b = lsei_jax.split_at(_DropoutNet(), v, 'pool', example=_images(), train=False)
  assert given_lib.describe(a.embed) == given_lib.describe(b.embed)
  assert ' at 0x' not in given_lib.describe(a.embed) + given_lib.describe(a.head)
  c = lsei_jax.split_at(model, v, 'pool', example=_images(), train=True,
                        rngs={'dropout': jax.random.key(1)})
  assert given_lib.describe(a.head) != given_lib.describe(c.head)   # train=True differs


def test_random_head_is_identified_by_its_inputs_not_its_bytes(explain_inputs):
  a, split = explain_inputs
  x = jnp.asarray(a['images'][:16], jnp.float32) / 255.0
  r1 = classifier_split.random_head(split, jax.random.key(3), x)
  # The same head computed on another device: its last bits differ, its identity does not.
  r2 = dataclasses.replace(r1, params=jax.tree.map(lambda p: p * (1 + 1e-7), r1.params))
  assert given_lib.fingerprint(r1) == given_lib.fingerprint(r2)
  r3 = classifier_split.random_head(split, jax.random.key(4), x)
  assert given_lib.fingerprint(r3) != given_lib.fingerprint(r1)


def test_corrupt_compilation_cache_entries_are_replaced(tmp_path):
  cache = tmp_path / 'xla'
  script = ('import jax, jax.numpy as jnp\n'
            'from lsei_jax import compile_cache\n'
            f'compile_cache.enable({str(cache)!r})\n'
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
            'print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))\n')
  env = {k: v for k, v in os.environ.items()
         if k not in ('LSEI_JAX_COMPILATION_CACHE', 'XLA_FLAGS')}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  run = lambda: subprocess.run([sys.executable, '-c', script], env=env, check=True,
                               capture_output=True, text=True, timeout=300)
  first = run().stdout
  entries = [p for p in cache.iterdir() if p.name.endswith('-cache')]
  assert entries
  for p in entries:
    p.write_bytes(b'not an executable')
  runs = [run(), run()]
  assert [r.stdout for r in runs] == [first, first]
  # The second run after the damage reads the replaced entry: nothing to warn about.
  assert 'Error reading persistent compilation cache' not in runs[1].stderr, runs[1].stderr
  assert all(p.read_bytes() != b'not an executable' for p in entries if p.exists())
  assert any(p.exists() for p in entries)


_FINGERPRINT_SCRIPT = '''
import jax, lsei_jax
from examples import resnet
from lsei_jax.training import given
model = resnet.ResNet(widths=(4, 8), num_classes=3)
x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
v = model.init(jax.random.key(0), x[:1])
print(given.fingerprint(lsei_jax.split_at(model, v, 'pool', example=x, train=False)))
'''


def test_given_fingerprint_is_the_same_in_every_process():
  """train.py and eval.py run in two processes: the fingerprint must not hold addresses or
  object ids (a closure's jax.ShapeDtypeStruct once gave an object array's pointers)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  out = [subprocess.run([sys.executable, '-c', _FINGERPRINT_SCRIPT], env=env, cwd=ROOT,
                        check=True, capture_output=True, text=True, timeout=300
                        ).stdout.split()[-1] for _ in range(2)]
  assert out[0] == out[1] and len(out[0]) == 16
