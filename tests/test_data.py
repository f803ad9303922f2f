import numpy as np
import pytest

from configs import tiny
from lsei_jax import data as data_lib
from lsei_jax.data import shapes


def test_rho_is_honoured_and_other_attributes_are_independent():
  n = 20_000
  train = shapes.sample_attributes(np.random.default_rng(0), n, 'shape', 'color', 0.9)
  t, s = shapes.ATTRIBUTES.index('shape'), shapes.ATTRIBUTES.index('color')
  assert abs(np.mean(train[:, t] == train[:, s]) - 0.9) < 0.01
  assert abs(train[:, t].mean() - 0.5) < 0.015
  others = [i for i in range(len(shapes.ATTRIBUTES)) if i not in (t, s)]
  for i in others:
    assert abs(train[:, i].mean() - 0.5) < 0.015
    assert abs(np.corrcoef(train[:, i], train[:, t])[0, 1]) < 0.03


def test_splits_unbiased_and_biased():
  cfg = tiny.get_config().data
  cfg.unlock()
  cfg.num_train, cfg.num_test = 4000, 4000
  agree = lambda ds: np.mean(ds.attributes[:, 0] == ds.attributes[:, 1])
  assert abs(agree(data_lib.load(cfg, 'train')) - 0.9) < 0.02
  assert abs(agree(data_lib.load(cfg, 'test')) - 0.5) < 0.03
  assert abs(agree(data_lib.load(cfg, 'test_biased')) - 0.9) < 0.02
  # Held-out images of the training distribution (the verdict's fallback, heldout.py).
  assert abs(agree(data_lib.load(cfg, 'validation')) - 0.9) < 0.02
  with pytest.raises(ValueError, match='unknown split'):
    data_lib.load(cfg, 'valid')


def test_test_rho_correlates_the_test_split_only_and_test_unbiased_is_its_counterfactual():
  cfg = tiny.get_config().data
  cfg.unlock()
  cfg.num_train, cfg.num_test, cfg.test_rho = 4000, 4000, 0.8
  agree = lambda ds: np.mean(ds.attributes[:, 0] == ds.attributes[:, 1])
  test, unbiased = data_lib.load(cfg, 'test'), data_lib.load(cfg, 'test_unbiased')
  assert abs(agree(test) - 0.8) < 0.02    # binomial sd at N = 4,000: 0.006
  assert abs(agree(unbiased) - 0.5) < 0.03
  assert abs(agree(data_lib.load(cfg, 'train')) - 0.9) < 0.02
  assert abs(agree(data_lib.load(cfg, 'test_biased')) - 0.9) < 0.02
  # The same draws: only the spurious column (colour) differs, and the images differ
  # exactly where it does (the nuisance is drawn after the attributes, whatever rho is).
  differs = test.attributes != unbiased.attributes
  assert not differs[:, [0, 2, 3, 4, 5]].any() and 0.2 < differs[:, 1].mean() < 0.4
  np.testing.assert_array_equal(test.labels, unbiased.labels)
  changed = (np.asarray(test.images) != np.asarray(unbiased.images)).any((1, 2, 3))
  np.testing.assert_array_equal(changed, differs[:, 1])
  # Annotations without rendering and the counterfactual renderer follow the same split.
  labels, attrs = data_lib.load_annotations(cfg, 'test')
  np.testing.assert_array_equal(attrs, test.attributes)
  flipped = data_lib.counterfactual_renderer(cfg, 'test')('color')
  assert (np.asarray(flipped) != np.asarray(test.images)).any((1, 2, 3)).all()
  np.testing.assert_array_equal(flipped[differs[:, 1]], unbiased.images[differs[:, 1]])
  # test_rho = 0.5 (the default): 'test' is 'test_unbiased'.
  cfg.test_rho = 0.5
  np.testing.assert_array_equal(data_lib.load(cfg, 'test').images, unbiased.images)


def test_test_rho_out_of_range_is_a_clear_error():
  cfg = tiny.get_config().data
  cfg.unlock()
  cfg.test_rho = 1.2
  with pytest.raises(ValueError, match=r'config.data.test_rho=1.2 must be in \[0, 1\]'):
    data_lib.load(cfg, 'test')


def test_generation_is_deterministic_and_splits_differ():
  a = shapes.generate(64, image_size=16, seed=3)
  b = shapes.generate(64, image_size=16, seed=3)
  c = shapes.generate(64, image_size=16, seed=3, split='test')
  np.testing.assert_array_equal(a['image'], b['image'])
  assert not np.array_equal(a['image'], c['image'])
  assert a['image'].dtype == np.uint8 and a['image'].shape == (64, 16, 16, 3)


def test_images_show_their_attributes():
  # Colour and background are visible in pixel statistics (no classifier needed).
  d = shapes.generate(400, image_size=32, seed=1, spurious=None)
  img = d['image'].astype(np.float32) / 255
  attrs = dict(zip(shapes.ATTRIBUTES, d['attributes'].T))
  corner = img[:, :3, :3].mean((1, 2, 3))
  assert corner[attrs['background']].min() > corner[~attrs['background']].max()
  blue_minus_red = (img[..., 2] - img[..., 0]).mean((1, 2))
  assert np.mean(blue_minus_red[attrs['color']]) > np.mean(blue_minus_red[~attrs['color']]) + 0.02
  left = img[:, :, :16].std((1, 2, 3)) - img[:, :, 16:].std((1, 2, 3))
  assert np.mean(left[~attrs['position']]) > np.mean(left[attrs['position']])


def test_unknown_attribute_lists_known_ones():
  with pytest.raises(ValueError, match='known: shape, color'):
    shapes.generate(4, task='smile')


def test_batch_interface():
  ds = data_lib.load(tiny.get_config().data, 'train')
  b = ds.batch(np.arange(5))
  assert b['image'].dtype == np.float32 and b['image'].shape == (5, 16, 16, 3)
  assert 0 <= b['image'].min() and b['image'].max() <= 1
  assert b['label'].dtype == np.int32 and b['attributes'].dtype == bool
  assert b['attributes'].shape == (5, len(ds.attribute_names))
  np.testing.assert_array_equal(b['label'], b['attributes'][:, 0])


def test_batch_indices_deterministic_epochs_and_process_shards():
  n, bs = 50, 10
  epoch0 = np.concatenate([data_lib.batch_indices(n, bs, s, seed=1) for s in range(5)])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
  np.testing.assert_array_equal(data_lib.batch_indices(n, bs, 7, 1),
                                data_lib.batch_indices(n, bs, 7, 1))
  assert not np.array_equal(data_lib.batch_indices(n, bs, 0, 1),
                            data_lib.batch_indices(n, bs, 5, 1))  # reshuffled next epoch
  shards = [data_lib.batch_indices(n, bs, 3, 1, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(shards), data_lib.batch_indices(n, bs, 3, 1))


@pytest.mark.parametrize('split, task', [('train', 'shape'), ('test', 'shape'),
                                         ('test_biased', 'shape'), ('train', 'shape+size')])
def test_annotations_equal_the_loaded_split_without_rendering(split, task, monkeypatch):
  c = tiny.get_config().data
  c.task = task
  want = data_lib.load(c, split)
  def no_render(*a, **k):
    raise AssertionError('rendered images for annotations only')
  monkeypatch.setattr(shapes, 'render', no_render)
  labels, attributes = data_lib.load_annotations(c, split)
  np.testing.assert_array_equal(labels, want.labels)
  np.testing.assert_array_equal(attributes, want.attributes)
  assert labels.dtype == want.labels.dtype and attributes.dtype == want.attributes.dtype


def test_annotations_of_other_sources_are_the_loaded_splits():
  import ml_collections
  from lsei_jax.data import byo
  rng = np.random.default_rng(0)
  attrs = rng.random((12, 2)) < 0.5
  byo.register_arrays('annotations', rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
                      attrs, ('a', 'b'), split=np.array(['train'] * 9 + ['test'] * 3))
  c = ml_collections.ConfigDict(dict(name='numpy', path='', arrays='annotations', task='b',
                                     image_size=8, resize=False, seed=0, csv='', workers=2))
  labels, attributes = data_lib.load_annotations(c, 'test')
  np.testing.assert_array_equal(attributes, attrs[9:])
  np.testing.assert_array_equal(labels, attrs[9:, 1])
  with pytest.raises(ValueError, match="unknown split 'nope'"):
    data_lib.load_annotations(tiny.get_config().data, 'nope')
