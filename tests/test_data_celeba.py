"""CelebA: mock-data shapes, end-to-end preparation of a fake set, bias splits, configs."""
import importlib
import os

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')
pytest.importorskip('grain')

from lsei_jax import data as data_lib  # noqa: E402
from lsei_jax.data import bias_splits, celeba, celeba_fake, prepare_celeba, rows as rows_lib  # noqa: E402,E501

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

NUM = 400  # fake images: 280 train, 60 validation, 60 test


def _cfg(data_dir, **kw):
  from configs import celeba_smiling  # pylint: disable=g-import-not-at-top
  c = celeba_smiling.get_config().data
  c.update(dict(data_dir=data_dir, image_size=16, workers=0), **kw)
  return c


def test_mock_data_shapes_and_dtypes(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    ds = data_lib.load(_cfg(str(tmp_path), cache=False), 'test')
  assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 16, 16, 3)
  assert ds.attributes.dtype == bool and ds.attributes.shape == (6, 40)
  assert ds.attribute_names == celeba.ATTRIBUTES and ds.task == 'Smiling'
  np.testing.assert_array_equal(ds.labels, ds.attributes[:, celeba.ATTRIBUTES.index('Smiling')])
  assert ds.labels.dtype == np.int32


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A fake CelebA prepared by the real command path: (data_dir, truth from the raw files)."""
  pytest.importorskip('tensorflow')
  root = tmp_path_factory.mktemp('celeba')
  raw, data_dir = str(root / 'raw'), str(root / 'tfds')
  truth = celeba_fake.write_raw_files(raw, NUM, seed=1)
  # The fake files cannot match the real checksums: TFDS takes them as a cached download.
  celeba_fake.install_as_cached_download(data_dir, raw)
  counts = prepare_celeba.prepare(data_dir, manual_dir=str(root / 'manual'))
  return data_dir, truth, counts


def _raw_rows(data_dir, split):
  """Row of the raw files behind each prepared record (identity i+1 ↔ file i)."""
  src = celeba.open_source(data_dir, split)
  return np.array([src[i]['identity']['Identity_No'] - 1 for i in range(len(src))])


def test_prepared_splits_attributes_and_images(prepared):
  data_dir, truth, counts = prepared
  assert counts == {'train': 280, 'validation': 60, 'test': 60}
  for split, pid in (('train', 0), ('validation', 1), ('test', 2)):
    ds = data_lib.load(_cfg(data_dir), split)
    rows = _raw_rows(data_dir, split)
    assert sorted(rows) == list(np.flatnonzero(truth['partition'] == pid))
    np.testing.assert_array_equal(ds.attributes, truth['attributes'][rows])
    # The centre crop removes the bands (128 levels away): no output row is one of them,
    # only the edge rows blend a little (JPEG ringing at the band, filter support).
    err = np.abs(np.asarray(ds.images, float) - truth['colours'][rows][:, None, None])
    per_row = err.mean((0, 2, 3))
    assert per_row.max() < 32 and per_row[1:-1].max() < 2
    assert ds.images.shape == (len(rows), 16, 16, 3)


def test_decode_cache_and_workers(prepared):
  data_dir = prepared[0]
  cached = celeba.cache_dir(data_dir, 'validation', 16, 0, True, 60)
  assert os.path.exists(os.path.join(cached, 'images.npy'))  # written by the test above
  first = celeba.read(data_dir, 'validation', 16, workers=0)
  src = celeba.open_source(data_dir, 'validation')
  parallel = celeba.decode_split(src, 60, 16, workers=2, batch=16)
  np.testing.assert_array_equal(first[0], parallel[0])
  np.testing.assert_array_equal(first[1], parallel[1])
  few = data_lib.load(_cfg(data_dir, max_examples=10), 'validation')
  np.testing.assert_array_equal(few.images, first[0][:10])


def test_celeba_is_read_by_rows_and_batches_like_the_decoded_arrays(prepared, tmp_path):
  # The split decoded in memory (as every run did before) against the streamed one, from
  # the cache and from an unlinked temporary file (cache=False): the same bits in every
  # batch the training loop draws, and a bias split still on disk.
  data_dir = prepared[0]
  src = celeba.open_source(data_dir, 'train')
  images, attributes = celeba.decode_split(src, len(src), 16)
  want = data_lib.Dataset(images, attributes[:, celeba.ATTRIBUTES.index('Smiling')].astype(
      np.int32), attributes, celeba.ATTRIBUTES, 'Smiling')
  spill = tmp_path / 'spill'
  spill.mkdir()
  for kw in ({}, {'cache': False, 'cache_dir': str(spill)}):
    got = data_lib.load(_cfg(data_dir, **kw), 'train')
    assert isinstance(got.images, rows_lib.Rows), kw
    np.testing.assert_array_equal(got.attributes, want.attributes)
    np.testing.assert_array_equal(got.labels, want.labels)
    for step in range(6):
      idx = data_lib.batch_indices(len(want), 32, step, seed=3)
      g, w = got.batch(idx), want.batch(idx)
      for k in w:
        assert g[k].dtype == w[k].dtype and np.array_equal(g[k], w[k]), (kw, k)
  assert os.listdir(spill) == []
  biased = data_lib.load(_cfg(data_dir, bias_split='female_majority'), 'train')
  assert isinstance(biased.images, rows_lib.Rows)


def test_bias_splits_from_prepared_train(prepared):
  data_dir, truth, _ = prepared
  train_rows = _raw_rows(data_dir, 'train')
  smiling, male = (celeba.ATTRIBUTES.index(a) for a in ('Smiling', 'Male'))
  for name, major_male in (('female_majority', False), ('male_majority', True)):
    ds = data_lib.load(_cfg(data_dir, bias_split=name), 'train')
    stats = ds.info['bias_split']
    n = len(ds)
    major = ds.labels.astype(bool) & (ds.attributes[:, male] == major_male)
    minor = ~ds.labels.astype(bool) & (ds.attributes[:, male] != major_male)
    assert (major | minor).all() and major.sum() == round(0.7 * n)
    assert stats['size'] == n and stats['source_examples'] == 280
    # Drawn from train: every example is a train row with its raw attributes.
    full = data_lib.load(_cfg(data_dir), 'train')
    full_images = np.asarray(full.images)
    pos = [np.flatnonzero((full_images == im).all((1, 2, 3)))[0] for im in np.asarray(ds.images)]
    np.testing.assert_array_equal(ds.attributes, truth['attributes'][train_rows[pos]])
    again = data_lib.load(_cfg(data_dir), name)
    np.testing.assert_array_equal(again.images[:], ds.images[:])  # deterministic
    print(name, stats['groups'])


def test_bias_split_sampling():
  rng = np.random.default_rng(0)
  names = ('Smiling', 'Male')
  attrs = rng.random((1000, 2)) < 0.5
  idx, stats = bias_splits.sample(attrs, names, 'Smiling', 'female_majority', size=200)
  assert stats['groups'] == {'Smiling=1,Male=1': 0, 'Smiling=1,Male=0': 140,
                             'Smiling=0,Male=1': 60, 'Smiling=0,Male=0': 0}
  np.testing.assert_array_equal(
      idx, bias_splits.sample(attrs, names, 'Smiling', 'female_majority', size=200)[0])
  with pytest.raises(ValueError, match='largest possible size'):
    bias_splits.sample(attrs, names, 'Smiling', 'male_majority', size=900)
  with pytest.raises(ValueError, match="unknown bias split 'old'"):
    bias_splits.sample(attrs, names, 'Smiling', 'old')


def test_unprepared_and_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare_celeba --data_dir='):
    data_lib.load(_cfg(str(tmp_path)), 'train')
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'list_attr_celeba.txt').write_text('2\nSmiling\n')
  problems = prepare_celeba.check_files(str(tmp_path), str(manual))
  assert 'img_align_celeba.zip: missing' in problems and len(problems) == 5
  assert any(p.startswith('list_attr_celeba.txt: 10 bytes, expected') for p in problems)


@pytest.mark.parametrize('module', ['celeba_smiling', 'celeba_attractive', 'celeba_big_lips',
                                    'celeba_smiling_female_majority',
                                    'celeba_smiling_male_majority'])
def test_configs_validate(module):
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import parallel  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{module}').get_config()
  pipeline.validate_config(c, parallel.make_mesh())
  assert c.data.image_size == 64 and c.data.task in celeba.ATTRIBUTES
  assert c.model.explainer.channels == (256, 128, 64, 32) and c.model.dvae.latent_dim == 32


def test_pipeline_trains_on_a_celeba_bias_split(prepared, tmp_path):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.data = _cfg(prepared[0], bias_split='female_majority')
  metas = pipeline.train(c, str(tmp_path), ('classifier',))
  assert metas['classifier']['step'] == c.classifier.steps
