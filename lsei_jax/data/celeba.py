"""CelebA from TFDS `celeb_a` (prepared as array_record) read without TensorFlow.

`tfds.data_source` gives random access to the records; `grain` decodes them in worker
processes. Each aligned 218×178 face is centre-cropped to a square (`crop_size`, default
the full width 178) and resized to `image_size`. The decoded uint8 arrays are cached as
.npy files under the data dir (keyed by version, split, size, crop, count), so only the
first run pays for decoding ~200k JPEGs.

The decoded images stay on disk (rows.Rows: 162,770 × 64×64×3 uint8 ≈ 2 GB for train), and
each host reads only the rows of its slice of every batch (`batch_indices`). Not decoded per
batch from the array_record records: a JPEG decode costs more than a training step's share
of an image (bench_input.py: ≈ 1,200 images/s per core), so it is paid once.
"""
from __future__ import annotations

import functools
import io
import json
import os
import time
import uuid

import grain
import numpy as np
from absl import logging
from PIL import Image

from lsei_jax.data import rows
from lsei_jax.data.celeba_attrs import ATTRIBUTES, SPLITS, TFDS_NAME, TFDS_VERSION

PREPARE_HINT = 'python -m lsei_jax.data.prepare_celeba --data_dir={}'


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def crop_resize(image: bytes | np.ndarray, image_size: int, crop_size: int = 0,
                draft: bool = True) -> np.ndarray:
  """JPEG bytes or uint8 [H,W,3] → centre square of side crop_size (0 = min(H, W)),
  resized (antialiased bilinear) to uint8 [image_size, image_size, 3]."""
  if isinstance(image, (bytes, np.bytes_)):
    img = Image.open(io.BytesIO(image))
    full_w, full_h = img.size
    side = crop_size or min(full_w, full_h)
    if draft:
      # libjpeg decodes at 1/2, 1/4, 1/8 scale directly (DCT scaling): far cheaper than
      # decoding 218×178 and then shrinking, and still ≥ image_size over the crop.
      need = int(np.ceil(image_size * max(full_w, full_h) / side))
      img.draft('RGB', (need, need))
  else:
    img = Image.fromarray(np.asarray(image, np.uint8))
    full_w, full_h = img.size
    side = crop_size or min(full_w, full_h)
  img = img.convert('RGB')
  w, h = img.size
  # A JPEG draft scales by exactly 1/2^k but rounds the pixel counts up: take the scale
  # from the ratio, not from w / full_w (which would shift the crop by the padding).
  scale = 1.0 / round(full_w / w)
  s = min(side * scale, w, h)
  cx, cy = full_w * scale / 2, full_h * scale / 2
  box = (max(cx - s / 2, 0), max(cy - s / 2, 0), min(cx + s / 2, w), min(cy + s / 2, h))
  return np.asarray(img.resize((image_size, image_size), Image.BILINEAR, box=box))


class _Indexed:
  """A data source whose records carry their own index (grain workers reorder batches)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    return {'index': int(i), **self.source[int(i)]}


class DecodeCrop(grain.transforms.Map):
  """Record → {'index', 'image' uint8 [S,S,3], 'attributes' bool [40]}."""

  def __init__(self, image_size: int, crop_size: int = 0, draft: bool = True):
    self.image_size, self.crop_size, self.draft = image_size, crop_size, draft

  def map(self, element):
    attrs = element['attributes']
    return {'index': np.int64(element['index']),
            'image': crop_resize(element['image'], self.image_size, self.crop_size,
                                 self.draft),
            'attributes': np.array([bool(attrs[a]) for a in ATTRIBUTES])}


def open_source(data_dir: str, split: str):
  """The array_record data source of one split, images left as JPEG bytes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if split not in SPLITS:
    raise ValueError(f'unknown CelebA split {split!r}; known: {", ".join(SPLITS)}')
  try:
    return tfds.data_source(
        TFDS_NAME, split=split, data_dir=data_dir, download=False,
        builder_kwargs=dict(file_format='array_record'),
        decoders={'image': tfds.decode.SkipDecoding()})
  except Exception as e:  # TFDS raises AssertionError / DatasetNotFoundError / ValueError
    raise FileNotFoundError(
        f'CelebA ({TFDS_NAME} {TFDS_VERSION}, array_record) is not prepared in {data_dir} '
        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); prepare it '
        f'with: {PREPARE_HINT.format(data_dir)}') from e


def decode_split(source, num: int, image_size: int, crop_size: int = 0, draft: bool = True,
                 workers: int = 0, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Decodes records [0, num) of source: (images uint8 [num,S,S,3], attributes bool [num,40])
  in memory (read() writes them to disk instead: decode_batches)."""
  images = np.zeros((num, image_size, image_size, 3), np.uint8)
  attributes = np.zeros((num, len(ATTRIBUTES)), bool)
  for index, ims, attrs in decode_batches(source, num, image_size, crop_size, draft, workers,
                                          batch):
    images[index], attributes[index] = ims, attrs
  return images, attributes


def decode_batches(source, num: int, image_size: int, crop_size: int = 0, draft: bool = True,
                   workers: int = 0, batch: int = 256):
  """Yields (indices int64 [b], images uint8 [b,S,S,3], attributes bool [b,40]) covering
  records [0, num) of source once each, in batches of up to `batch`.

  workers > 0 decodes in that many grain worker processes (each batches on its own; the
  records' indices put every image back in its place).
  """
  if num == 0:
    return
  if workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
      flags.FLAGS.mark_as_parsed()
  loader = grain.DataLoader(
      data_source=_Indexed(source, num),
      sampler=grain.samplers.IndexSampler(num_records=num, shuffle=False, num_epochs=1,
                                          shard_options=grain.sharding.NoSharding()),
      operations=[DecodeCrop(image_size, crop_size, draft), grain.transforms.Batch(batch)],
      worker_count=workers)
  for b in loader:
    yield np.asarray(b['index'], np.int64), b['image'], b['attributes']


def worker_count(requested: int) -> int:
  """-1 (auto) → cores - 1 worker processes on machines with more than 2 cores, else 0
  (decode in this process: on 2 shared cores, 2 grain workers decoded 846 img/s against
  1,176 in-process, benchmarks/bench_input.py, 9,800 images)."""
  if requested >= 0:
    return requested
  cores = os.cpu_count() or 1
  return cores - 1 if cores > 2 else 0


def cache_dir(data_dir: str, split: str, image_size: int, crop_size: int, draft: bool,
              num: int) -> str:
  key = f'{split}-{image_size}px-crop{crop_size or "full"}-{"draft" if draft else "exact"}-n{num}'
  return os.path.join(data_dir, 'lsei_jax_cache', TFDS_NAME, TFDS_VERSION, key)


def read(data_dir: str, split: str, image_size: int, crop_size: int = 0,
         max_examples: int = 0, workers: int = -1, draft: bool = True,
         cache: bool = True, spill_dir: str | None = None) -> tuple[rows.Rows, np.ndarray]:
  """(images uint8 [N,S,S,3] on disk as rows.Rows, read per batch; attributes bool [N,40])
  of a CelebA split. Decoded once into the cache (an .npy under the data dir), or, with
  cache=False or a read-only data dir, into an unlinked temporary file under `spill_dir`
  (default: the system's temp dir): the decoded split is never whole in memory.

  max_examples > 0 keeps the first N records (TFDS stores them in hashed, i.e. random,
  order, so this is a random subset).
  """
  data_dir = data_dir or default_data_dir()
  source = open_source(data_dir, split)
  num = len(source) if max_examples <= 0 else min(max_examples, len(source))
  path = cache_dir(data_dir, split, image_size, crop_size, draft, num)
  if cache and os.path.exists(os.path.join(path, 'meta.json')):
    logging.info('CelebA %s: %d decoded images from the cache %s', split, num, path)
    return (rows.Rows.open(os.path.join(path, 'images.npy')),
            np.load(os.path.join(path, 'attributes.npy')))
  start = time.time()
  attributes = np.zeros((num, len(ATTRIBUTES)), bool)

  def batches():
    for index, ims, attrs in decode_batches(source, num, image_size, crop_size, draft,
                                            worker_count(workers)):
      attributes[index] = attrs
      yield index, ims
  shape = (num, image_size, image_size, 3)
  images = _write_cache(path, shape, batches, attributes) if cache else None
  if images is None:
    images = rows.spill_at(batches(), shape, np.uint8, spill_dir)
  logging.info('CelebA %s: decoded %d images in %.1f s', split, num, time.time() - start)
  return images, attributes


def _write_cache(path: str, shape, batches, attributes: np.ndarray) -> rows.Rows | None:
  """Decodes `batches` into the cache at `path` → the cached images, or None when the data
  dir cannot be written (nothing decoded then)."""
  # Written to a private directory and renamed into place, so that hosts sharing the data
  # dir, or an interrupted run, never leave a half-written cache behind.
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  try:
    try:
      os.makedirs(tmp)
    except OSError as e:  # e.g. a read-only data dir: still usable, just not cached
      logging.warning('could not cache decoded CelebA in %s: %s', path, e)
      return None
    try:
      rows.spill_at(batches(), shape, np.uint8, path=os.path.join(tmp, 'images.npy'))
      np.save(os.path.join(tmp, 'attributes.npy'), attributes)
      with open(os.path.join(tmp, 'meta.json'), 'w') as f:
        json.dump({'num': shape[0], 'shape': list(shape[1:]),
                   'attributes': list(ATTRIBUTES)}, f)
    except OSError as e:  # e.g. the disk filled up: decode again into a temporary file
      logging.warning('could not cache decoded CelebA in %s: %s', path, e)
      return None
    try:
      os.replace(tmp, path)
    except OSError:   # another host's identical cache won the race
      if not os.path.exists(os.path.join(path, 'meta.json')):
        raise
    return rows.Rows.open(os.path.join(path, 'images.npy'))
  finally:
    if os.path.isdir(tmp):
      import shutil  # pylint: disable=g-import-not-at-top
      shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=4)
def read_cached(*args) -> tuple[rows.Rows, np.ndarray]:
  """read() memoised in this process (train and eval of one run share the arrays)."""
  return read(*args)
