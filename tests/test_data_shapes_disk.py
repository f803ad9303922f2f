"""The embedded shapes rendered chunk by chunk onto disk (issue 27): the same bytes as the
in-memory renderer of before, and a loading process's memory holds a chunk, not the split."""
import os
import tracemalloc
import zlib

import numpy as np
import pytest

from configs import tiny
from lsei_jax import data as data_lib
from lsei_jax.data import rows, shapes


def _old_render(rng, attrs, image_size, noise=0.04, object_scale=1.0):
  """shapes.render as it was at 0077df0 (the whole chunk in float64 at once), verbatim: the
  oracle of the bytes every stored figure and the demo's metrics depend on."""
  n, S = attrs.shape[0], image_size
  a = {name: attrs[:, i] for i, name in enumerate(shapes.ATTRIBUTES)}
  u = lambda lo, hi: rng.uniform(lo, hi, n)[:, None, None]
  yy, xx = np.meshgrid((np.arange(S) + 0.5) / S, (np.arange(S) + 0.5) / S, indexing='ij')
  radius = np.where(a['size'], 0.21, 0.13)[:, None, None] * u(0.9, 1.1) * object_scale
  cx = np.where(a['position'], 0.70, 0.30)[:, None, None] + u(-0.06, 0.06)
  cy = 0.5 + u(-0.15, 0.15)
  dx, dy = xx - cx, yy - cy
  circle = dx**2 + dy**2 <= radius**2
  half = radius * 0.886
  square = np.maximum(np.abs(dx), np.abs(dy)) <= half
  inside = np.where(a['shape'][:, None, None], circle, square)
  red = np.array([0.85, 0.15, 0.12])
  blue = np.array([0.15, 0.30, 0.88])
  color = np.where(a['color'][:, None], blue, red) + rng.uniform(-0.08, 0.08, (n, 3))
  stripes = (np.sin(2 * np.pi * (xx + yy) * 4.0 / (radius * 8) + u(0, 2 * np.pi)) > 0)
  shade = np.where(a['texture'][:, None, None] & stripes, 0.45, 1.0)
  bg_level = np.where(a['background'], 0.78, 0.18)[:, None] + rng.uniform(-0.06, 0.06, (n, 1))
  bg = bg_level + rng.uniform(-0.03, 0.03, (n, 3))
  img = np.where(inside[..., None], color[:, None, None, :] * shade[..., None],
                 bg[:, None, None, :])
  img = img + rng.normal(0, noise, img.shape)
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _old_generate(num, *, image_size, task, spurious, rho, seed, split, noise, object_scale,
                  flip=None, chunk=4096):
  """shapes.generate's images as they were at 0077df0: np.concatenate of 4,096-image renders."""
  rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
  attrs = shapes.sample_attributes(rng, num, task, spurious, rho)
  if flip is not None:
    attrs[:, shapes.ATTRIBUTES.index(flip)] ^= True
  return np.concatenate([_old_render(rng, attrs[i:i + chunk], image_size, noise, object_scale)
                         for i in range(0, num, chunk)])


@pytest.mark.parametrize('size', [5, 8])   # odd: no row of pixels fills a SIMD register
def test_render_in_pieces_is_the_whole_chunk_render_and_leaves_the_generator_alike(size):
  attrs = np.random.default_rng(0).random((23, len(shapes.ATTRIBUTES))) < 0.5
  want_rng = np.random.default_rng(7)
  want = _old_render(want_rng, attrs, size, 0.06, 0.85)
  for piece in (1, 4, 7, 23, 100, None):
    rng = np.random.default_rng(7)
    got = shapes.render(rng, attrs, size, 0.06, 0.85, piece=piece)
    assert got.dtype == np.uint8 and np.array_equal(got, want), piece
    # The next chunk's draws start where the whole render's did.
    assert rng.bit_generator.state == want_rng.bit_generator.state, piece
  with pytest.raises(ValueError, match='piece=0 must be a positive'):
    shapes.render(np.random.default_rng(7), attrs, size, piece=0)


def test_loaded_split_and_counterfactuals_are_the_old_renders_byte_for_byte(tmp_path,
                                                                           monkeypatch):
  # Three render chunks (4,096 + 4,096 + 5) of 8×8 images, each rendered 10 images a
  # piece: the split on disk under cache_dir equals the in-memory generator's of before.
  monkeypatch.setattr(shapes, 'PIECE_VALUES', 10 * 8 * 8 * 3)
  cache = tmp_path / 'cache'
  cache.mkdir()
  c = tiny.get_config().data
  c.update(image_size=8, num_train=2 * 4096 + 5, seed=11, noise=0.06, object_scale=0.85,
           cache_dir=str(cache))
  kw = dict(image_size=8, task=c.task, spurious=c.spurious, rho=c.rho, seed=11, split='train',
            noise=0.06, object_scale=0.85)
  ds = data_lib.load(c, 'train')
  assert isinstance(ds.images, rows.Rows) and ds.images.shape == (c.num_train, 8, 8, 3)
  got = np.asarray(ds.images)
  assert got.dtype == np.uint8 and got.tobytes() == _old_generate(c.num_train, **kw).tobytes()
  assert got.tobytes() == shapes.generate(c.num_train, **kw)['image'].tobytes()
  assert np.array_equal(ds.images[[4097, 3, 8196]], got[[4097, 3, 8196]])
  # The file lives (unlinked) in cache_dir: nothing is left there.
  assert os.listdir(cache) == []
  if os.path.isdir('/proc/self/fd'):
    assert os.readlink(f'/proc/self/fd/{ds.images._fd}').startswith(str(cache))
  render = data_lib.counterfactual_renderer(c, 'train')
  for name in shapes.ATTRIBUTES:
    flipped = render(name)
    assert isinstance(flipped, rows.Rows), name
    assert np.asarray(flipped).tobytes() == _old_generate(c.num_train, flip=name, **kw).tobytes()
  data_lib._shapes.cache_clear()   # pylint: disable=protected-access  (cache_dir goes away)


def test_empty_split_loads_as_no_rows():
  c = tiny.get_config().data
  c.num_test = 0
  ds = data_lib.load(c, 'test')
  assert ds.images.shape == (0, 16, 16, 3) and np.asarray(ds.images).shape == (0, 16, 16, 3)


def test_loading_holds_a_render_piece_not_the_split_nor_a_chunk(monkeypatch):
  # 4 chunks of 2,048 16×16 images (6.3 MB as uint8, 1.6 MB a chunk), rendered 5 images a
  # piece (4,096 float64 values, 32 KB an array): the peak of NumPy's allocations while
  # loading is a piece's intermediates and the chunk's per-image draws (0.44 MB measured),
  # under half a chunk; the in-memory renderer's is more than the split.
  monkeypatch.setattr(shapes, 'CHUNK', 2048)
  monkeypatch.setattr(shapes, 'PIECE_VALUES', 1 << 12)
  c = tiny.get_config().data
  c.update(num_train=4 * 2048, seed=12)
  split_bytes = c.num_train * 16 * 16 * 3
  tracemalloc.start()
  try:
    ds = data_lib.load(c, 'train')
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    whole = shapes.generate(c.num_train, image_size=16, chunk=2048)['image']
    _, peak_whole = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
    data_lib._shapes.cache_clear()   # pylint: disable=protected-access  (another CHUNK)
  assert len(ds) == c.num_train and whole.nbytes == split_bytes
  assert peak_whole > split_bytes   # the check can see a split held whole
  assert peak < 2048 * 16 * 16 * 3 / 2, (peak, split_bytes)
