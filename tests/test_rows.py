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


def test_spill_at_writes_rows_in_any_order(tmp_path, array):
  order = np.random.default_rng(3).permutation(37)
  pairs = [(order[s:s + 8], array[order[s:s + 8]]) for s in range(0, 37, 8)]
  r = rows.spill_at(iter(pairs), array.shape, np.uint8, str(tmp_path))
  assert os.listdir(tmp_path) == []
  np.testing.assert_array_equal(r[:], array)
  kept = rows.spill_at(iter(pairs[::-1]), array.shape, np.uint8, path=str(tmp_path / 'k.npy'))
  np.testing.assert_array_equal(np.load(tmp_path / 'k.npy'), array)   # a valid .npy
  np.testing.assert_array_equal(kept[[5, 0]], array[[5, 0]])
  with pytest.raises(IndexError, match='row 37'):
    rows.spill_at(iter([(np.array([37]), array[:1])]), array.shape, np.uint8, str(tmp_path))


def test_an_npz_member_is_read_in_place_or_inflated_in_chunks(tmp_path, array, monkeypatch):
  path = str(tmp_path / 'a.npz')
  np.savez(path, first=np.arange(5), images=array)
  offset, stored = rows.npz_member(path, 'images')
  assert stored
  r = rows.Rows.open(path, start=offset)
  assert r.shape == array.shape
  np.testing.assert_array_equal(r[[36, 0, 2]], array[[36, 0, 2]])
  np.savez_compressed(tmp_path / 'c.npz', images=array, floats=array / 255.0)
  assert not rows.npz_member(str(tmp_path / 'c.npz'), 'images')[1]
  monkeypatch.setattr(rows, 'INFLATE_CHUNK', 5)   # several chunks, the last one short
  spill = tmp_path / 'spill'
  spill.mkdir()
  r = rows.npz_rows(str(tmp_path / 'c.npz'), 'images', str(spill))
  assert isinstance(r, rows.Rows) and os.listdir(spill) == []
  np.testing.assert_array_equal(r[:], array)
  assert rows.npz_rows(str(tmp_path / 'c.npz'), 'floats', str(spill)) is None   # read whole
  assert rows.npz_rows(path, 'first') is None   # 1-D int64: not images


def test_every_on_disk_arrays_source_batches_like_the_arrays_in_memory(tmp_path):
  # The same arrays as registered (in memory), a directory of .npy files, an .npz (images
  # read in place) and a compressed .npz (inflated into an unlinked file under cache_dir):
  # every split, and the batches the training loop draws, equal bit for bit.
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  attrs = rng.integers(0, 2, (40, 2)).astype(bool)
  byo.register_arrays('rows-test', images, attrs, ['a', 'b'])
  byo.save_npy_dir(str(tmp_path / 'd'), images, attrs, ['a', 'b'])
  byo.save_npz(str(tmp_path / 'd.npz'), images, attrs, ['a', 'b'])
  np.savez_compressed(tmp_path / 'c.npz', images=images, attributes=attrs,
                      attribute_names=np.array(['a', 'b']))
  cache = tmp_path / 'cache'
  cache.mkdir()
  memory = _config(name='numpy', arrays='rows-test')
  for path in ('d', 'd.npz', 'c.npz'):
    config = _config(name='numpy', path=str(tmp_path / path), cache_dir=str(cache))
    for split in ('train', 'test'):
      want, got = data_lib.load(memory, split), data_lib.load(config, split)
      assert isinstance(got.images, rows.Rows) and not isinstance(want.images, rows.Rows)
      np.testing.assert_array_equal(got.labels, want.labels)
      np.testing.assert_array_equal(got.attributes, want.attributes)
      for step in range(7):
        idx = data_lib.batch_indices(len(want), 8, step, seed=5)
        g, w = got.batch(idx), want.batch(idx)
        for k in w:
          assert g[k].dtype == w[k].dtype and np.array_equal(g[k], w[k]), (path, split, k)
    assert os.listdir(cache) == []   # nothing left behind, nothing next to the data
  assert sorted(os.listdir(tmp_path)) == ['c.npz', 'cache', 'd', 'd.npz']


def test_float_images_in_an_npz_are_still_checked_and_scaled(tmp_path):
  images = np.random.default_rng(4).random((10, 8, 8, 3)).astype(np.float32)
  attrs = np.arange(20).reshape(10, 2) % 2
  byo.save_npz(str(tmp_path / 'f.npz'), images, attrs, ['a', 'b'])
  got = byo.load_arrays(_config(path=str(tmp_path / 'f.npz'), test_fraction=0.0), 'train')[0]
  np.testing.assert_array_equal(got, np.round(images * 255).astype(np.uint8))
  images[0, 0, 0, 0] = 1.5
  byo.save_npz(str(tmp_path / 'f.npz'), images, attrs, ['a', 'b'])
  with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'):
    byo.load_arrays(_config(path=str(tmp_path / 'f.npz'), test_fraction=0.0), 'train')


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
  # The validation split too: the verdict looks at test + validation pooled where the test
  # split alone cannot decide (reporting/heldout.py), so both runs need the same one.
  train, valid, test = (data_lib.load(tiny_config.data, s)
                        for s in ('train', 'validation', 'test'))
  folder = tmp_path / 'folder'
  folder.mkdir()
  lines = ['filename,' + ','.join(train.attribute_names) + ',split']
  for split, ds in (('train', train), ('validation', valid), ('test', test)):
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


@pytest.mark.slow
def test_frozen_inputs_are_written_to_disk_and_read_like_the_arrays(trained_workdir,
                                                                   tiny_config):
  # h = c1(x) and ĥ of the train split go to an unlinked file as they are computed; the
  # rows read back, and the INN's pair batches (through its basis) drawn from them, equal the
  # in-memory computation bit for bit.
  from lsei_jax.inn import factor  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import frozen, graph  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.node import Context  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.spec import resolve  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.stages import concepts, inn  # pylint: disable=g-import-not-at-top
  spec, train = resolve(tiny_config, 'train', check=False)
  ctx = Context(spec, trained_workdir[0], train, split='train')
  graph.load_nodes(ctx, ['classifier', 'concepts'])
  h, hhat = concepts.h_train(ctx), concepts.hhat_train(ctx)
  assert isinstance(h, rows.Rows) and isinstance(hhat, rows.Rows)
  want_h = ctx.map(frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
                   {'image': train.images})
  want_hhat = ctx.map(frozen.reconstruct_fn(ctx.mods.learner, ctx.mesh),
                      ctx.params('concepts'), {'h': want_h})
  assert h.dtype == want_h.dtype == np.float32 and h.shape == want_h.shape
  np.testing.assert_array_equal(h[:], want_h)
  np.testing.assert_array_equal(hhat[:], want_hhat)
  arrays, batch = inn._inputs(ctx)
  bas = inn.fitted_basis(ctx)   # row-wise: the same map of the same rows, from disk or memory
  table = factor.sample_pair_table(
      train.attributes, np.random.default_rng(spec.stream_seed('inn/pairs')),
      int(spec.config.inn.pairs_per_example))
  for step in range(3):
    idx = np.random.default_rng(step).choice(len(arrays['index']), 16)
    got, want = batch({'index': idx}), factor.pair_batch(want_h, table, idx)
    want = {k: bas.forward(v) if k in ('h_a', 'h_b') else v for k, v in want.items()}
    for k in want:
      assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
