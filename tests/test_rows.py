"""Splits on disk read by rows (lsei_jax.data.rows) and the sources that use them."""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lsei_jax.data import byo, rows


@pytest.fixture
def array():
  return np.random.default_rng(0).integers(0, 256, (37, 5, 4, 3), dtype=np.uint8)


def test_rows_index_like_numpy(tmp_path, array):
  path = str(tmp_path / 'a.npy')
  np.save(path, array)
  r = rows.Rows.open(path)
  assert r.shape == array.shape and len(r) == 37 and r.dtype == np.uint8 and r.ndim == 4
  idx = np.array([[3, 36], [0, 3]])
  mask = np.arange(37) % 5 == 1
  for key in (0, -1, 36, slice(None), slice(2, 30, 7), slice(None, None, -3), idx, mask,
              [4, 4, 1], (slice(1, 4), 2), np.array([], np.int64)):
    np.testing.assert_array_equal(r[key], array[key])
  np.testing.assert_array_equal(np.asarray(r), array)
  sub = r.subset(np.array([30, 2, 7, 2]))
  np.testing.assert_array_equal(np.asarray(sub), array[[30, 2, 7, 2]])
  np.testing.assert_array_equal(sub.subset([3, 0])[:], array[[2, 30]])
  np.testing.assert_array_equal(np.asarray(sub, np.float32),
                                array[[30, 2, 7, 2]].astype(np.float32))
  with pytest.raises(IndexError):
    r[np.array([37])]
  with pytest.raises(IndexError):
    sub[4]


def test_rows_refuse_fortran_order(tmp_path, array):
  path = str(tmp_path / 'f.npy')
  np.save(path, np.asfortranarray(array))
  with pytest.raises(ValueError, match='C-ordered'):
    rows.Rows.open(path)


def test_spill_round_trips_and_leaves_no_file(tmp_path, array):
  chunks = [array[:10], array[10:11], array[11:]]
  r = rows.spill(iter(chunks), array.shape, np.uint8, str(tmp_path))
  assert os.listdir(tmp_path) == []   # unlinked: nothing left behind, even on a crash
  np.testing.assert_array_equal(r[:], array)
  np.testing.assert_array_equal(r.subset(np.arange(36, -1, -1))[:5], array[::-1][:5])
  with pytest.raises(ValueError, match='9 rows written, 37 announced'):
    rows.spill(iter([array[:9]]), array.shape, np.uint8, str(tmp_path))
  assert os.listdir(tmp_path) == []


def _config(**kw):
  c = ml_collections.ConfigDict(dict(image_size=8, task='a', seed=0, test_fraction=0.25))
  c.update(kw)
  return c


def test_a_directory_of_npy_files_equals_the_npz(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  attrs = rng.integers(0, 2, (40, 2)).astype(bool)
  byo.save_npz(str(tmp_path / 'd.npz'), images, attrs, ['a', 'b'])
  byo.save_npy_dir(str(tmp_path / 'd'), images, attrs, ['a', 'b'])
  for split in ('train', 'test'):
    want = byo.load_arrays(_config(path=str(tmp_path / 'd.npz')), split)
    got = byo.load_arrays(_config(path=str(tmp_path / 'd')), split)
    assert isinstance(got[0], rows.Rows) and not isinstance(want[0], rows.Rows)
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    for g, w in zip(got[1:], want[1:]):
      np.testing.assert_array_equal(g, w)


def test_an_image_folder_is_decoded_to_disk_in_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(byo, 'DECODE_CHUNK', 3)   # several chunks, the last one short
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  lines = ['filename,a']
  for i, im in enumerate(images):
    Image.fromarray(im).save(tmp_path / f'{i}.png')
    lines.append(f'{i}.png,{i % 2}')
  (tmp_path / 'attributes.csv').write_text('\n'.join(lines) + '\n')
  cache = tmp_path / 'cache'
  cache.mkdir()
  got, labels, _, _ = byo.load_folder(_config(path=str(tmp_path), test_fraction=0.0,
                                              cache_dir=str(cache)), 'train')
  assert isinstance(got, rows.Rows) and os.listdir(cache) == []
  np.testing.assert_array_equal(got[:], images)   # PNG is lossless
  np.testing.assert_array_equal(labels, np.arange(10) % 2)


@pytest.mark.slow
def test_a_run_on_an_image_folder_equals_the_run_in_memory(trained_workdir, tiny_config,
                                                           tmp_path):
  # The tiny config's shapes splits as PNG files (lossless) in the same order: every stage
  # reads its batches from the on-disk split (and the probe from its spilled inputs), so
  # training and evaluation give the in-memory run's numbers bit for bit.
  from lsei_jax import data as data_lib, pipeline  # pylint: disable=g-import-not-at-top
  train, test = (data_lib.load(tiny_config.data, s) for s in ('train', 'test'))
  folder = tmp_path / 'folder'
  folder.mkdir()
  lines = ['filename,' + ','.join(train.attribute_names) + ',split']
  for split, ds in (('train', train), ('test', test)):
    for i, (im, attrs) in enumerate(zip(ds.images, ds.attributes)):
      Image.fromarray(im).save(folder / f'{split}{i}.png')
      lines.append(f'{split}{i}.png,' + ','.join(str(int(a)) for a in attrs) + f',{split}')
  (folder / 'attributes.csv').write_text('\n'.join(lines) + '\n')
  config = tiny_config.copy_and_resolve_references()
  config.data = ml_collections.ConfigDict(dict(name='folder', path=str(folder), csv='',
                                               image_size=16, task=tiny_config.data.task,
                                               resize=False, seed=0, workers=1))
  workdir = str(tmp_path / 'wd')
  pipeline.train(config, workdir)
  got = pipeline.evaluate(config, workdir)
  want = pipeline.evaluate(tiny_config, trained_workdir[0])
  for key in ('accuracy', 'recon_accuracy', 'agreement', 'flip_all_change', 'info_cosine',
              'info_cosine_noreg', 'probe_accuracy', 'bias_report'):
    assert got[key] == want[key], key
