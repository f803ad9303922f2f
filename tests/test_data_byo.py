"""Bring-your-own data: NumPy arrays and image folder + CSV, round trips and clear errors."""
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lsei_jax import data as data_lib
from lsei_jax.data import byo

NAMES = ('smile', 'glasses', 'hat')


def _cfg(**kw):
  base = dict(name='numpy', path='', arrays='', task='smile', image_size=8, resize=False,
              test_fraction=0.25, validation_fraction=0.0, seed=0, csv='', workers=2)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _arrays(n=20, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          rng.random((n, len(NAMES))) < 0.5)


def test_npz_round_trip_and_deterministic_holdout(tmp_path):
  images, attrs = _arrays()
  path = str(tmp_path / 'd.npz')
  byo.save_npz(path, images, attrs.astype(np.int8) * 2 - 1, NAMES)  # ±1 values
  cfg = _cfg(path=path)
  train, test = data_lib.load(cfg, 'train'), data_lib.load(cfg, 'test')
  assert (len(train), len(test)) == (15, 5)
  assert train.attribute_names == NAMES and train.attributes.dtype == bool
  both = np.concatenate([train.images, test.images])
  assert sorted(map(bytes, both)) == sorted(map(bytes, images))  # a partition
  i = [bytes(x) for x in images].index(bytes(test.images[0]))
  np.testing.assert_array_equal(test.attributes[0], attrs[i])
  assert test.labels[0] == attrs[i, 0] and test.labels.dtype == np.int32
  np.testing.assert_array_equal(data_lib.load(cfg, 'test').images, test.images)
  with pytest.raises(ValueError, match="split 'validation' is empty"):
    data_lib.load(cfg, 'validation')


def test_registered_arrays_with_split_and_labels():
  images, attrs = _arrays(12)
  split = np.array(['train'] * 8 + ['validation'] * 2 + ['test'] * 2)
  labels = np.arange(12) % 3
  byo.register_arrays('t1', images, attrs, NAMES, labels=labels, split=split)
  ds = data_lib.load(_cfg(arrays='t1', task='label'), 'validation')
  np.testing.assert_array_equal(ds.images, images[8:10])
  np.testing.assert_array_equal(ds.labels, labels[8:10])
  with pytest.raises(ValueError, match="no arrays registered as 'nope'"):
    data_lib.load(_cfg(arrays='nope'), 'train')


@pytest.mark.parametrize('images, match', [
    (np.zeros((4, 8, 8), np.uint8), r'\[N, H, W, 3\] RGB, got shape \(4, 8, 8\)'),
    (np.zeros((4, 8, 8, 4), np.uint8), r'got shape \(4, 8, 8, 4\)'),
    (np.full((4, 8, 8, 3), 2.0), r'float images must lie in \[0, 1\]'),
])
def test_bad_image_arrays(images, match):
  byo.register_arrays('bad', images, np.zeros((4, 3), bool), NAMES)
  with pytest.raises(ValueError, match=match):
    data_lib.load(_cfg(arrays='bad'), 'train')


def test_array_errors_attributes_task_and_sizes(tmp_path):
  images, attrs = _arrays(8)
  byo.register_arrays('nb', images, np.where(attrs, 2, 0), NAMES)
  with pytest.raises(ValueError, match="attribute 'smile' is not binary"):
    data_lib.load(_cfg(arrays='nb'), 'train')
  byo.register_arrays('ok', images, attrs, NAMES)
  with pytest.raises(ValueError, match="unknown task attribute 'smiling'; known: smile, glas"):
    data_lib.load(_cfg(arrays='ok', task='smiling'), 'train')
  with pytest.raises(ValueError, match=r'are not 16×16.*config.data.resize=True'):
    data_lib.load(_cfg(arrays='ok', image_size=16), 'train')
  ds = data_lib.load(_cfg(arrays='ok', image_size=16, resize=True), 'train')
  assert ds.images.shape[1:] == (16, 16, 3)
  with pytest.raises(FileNotFoundError, match='no .npz file'):
    data_lib.load(_cfg(path=str(tmp_path / 'missing.npz')), 'train')


def _folder(root, rows, sizes=None, header='filename,smile,glasses,hat'):
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, (name, *_) in enumerate(rows):
    size = sizes[i] if sizes else (8, 8)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        os.path.join(root, name))
  with open(os.path.join(root, 'attributes.csv'), 'w') as f:
    f.write(header + '\n' + ''.join(','.join(map(str, r)) + '\n' for r in rows))


def test_folder_round_trip(tmp_path):
  rows = [(f'im{i}.png', i % 2, (i // 2) % 2, 0, 'test' if i < 2 else 'train')
          for i in range(6)]
  root = str(tmp_path / 'f')
  _folder(root, rows, header='filename,smile,glasses,hat,split')
  cfg = _cfg(name='folder', path=root)
  test = data_lib.load(cfg, 'test')
  np.testing.assert_array_equal(test.attributes, [[False, False, False], [True, False, False]])
  np.testing.assert_array_equal(test.images[1], np.asarray(Image.open(f'{root}/im1.png')))
  assert len(data_lib.load(cfg, 'train')) == 4 and test.attribute_names == NAMES


def test_folder_errors(tmp_path):
  root = str(tmp_path / 'f')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    data_lib.load(_cfg(name='folder', path=root), 'train')
  os.makedirs(root)
  with pytest.raises(FileNotFoundError, match='is empty'):
    data_lib.load(_cfg(name='folder', path=root), 'train')
  _folder(root, [('a.png', 1, -1, 1), ('b.png', -1, 1, 1)])
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f'{root}/c.png')
  with open(f'{root}/attributes.csv', 'a') as f:
    f.write('gone.png,1,1,1\n')
  with pytest.raises(FileNotFoundError, match=r'1 image\(s\) listed .* gone.png'):
    data_lib.load(_cfg(name='folder', path=root), 'train')
  _folder(root, [('a.png', 1, 0, 1), ('b.png', 0, 3, 1)])
  with pytest.raises(ValueError, match="'glasses' of b.png is 3, not binary"):
    data_lib.load(_cfg(name='folder', path=root), 'train')
  _folder(root, [('a.png', 1, 0, 1), ('b.png', 0, -1, 1)])  # 0 and -1 in one column
  with pytest.raises(ValueError, match="'glasses' is not binary"):
    data_lib.load(_cfg(name='folder', path=root), 'train')
  _folder(root, [('a.png', 1, 0, 1), ('b.png', 0, 1, 1), ('c.png', 0, 1, 0)],
          sizes=[(8, 8), (12, 10), (8, 8)])
  with pytest.raises(ValueError, match=r'b.png 12×10'):
    data_lib.load(_cfg(name='folder', path=root, test_fraction=0.0), 'train')
  ds = data_lib.load(_cfg(name='folder', path=root, test_fraction=0.0, resize=True), 'train')
  assert ds.images.shape == (3, 8, 8, 3)
  with pytest.raises(ValueError, match="unknown task attribute 'Smiling'; known: smile"):
    data_lib.load(_cfg(name='folder', path=root, task='Smiling'), 'train')
  with pytest.raises(FileNotFoundError, match='no attribute CSV'):
    data_lib.load(_cfg(name='folder', path=root, csv=f'{root}/x.csv'), 'train')


def test_process_batch_and_unknown_source():
  data_lib.check_process_batch(64, process_count=4)
  with pytest.raises(ValueError, match='must divide by the 3 processes'):
    data_lib.check_process_batch(64, 'config.classifier.batch_size', process_count=3)
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: shapes, celeba"):
    data_lib.load(_cfg(name='imagenet'), 'train')
