"""What a dataset holds, as a few short hashes: its content, never where it lives.

Every stage's signature carries the fingerprint of the train split it is trained on
(pipeline.signature), so a checkpoint is refused on resume or load once the data under the
same config changed, with a message naming what changed: its size, labels, attributes or
images. Moving or renaming the data changes nothing.

Cheap on large data: labels and attributes are hashed whole (a few bytes per example); the
images through a fixed sample, every pixel of SAMPLE_EXAMPLES evenly spaced images plus a
strided grid (every PIXEL_STRIDE-th row and column) of every image, ≈ 1/50 of the bytes of
64×64 images. A change confined to pixels off that grid in images off that sample is not
seen. Every host computes the same fingerprint from the whole split: a split on disk
(data/rows.py) is read for it in chunks of 1,024 images, so memory stays flat, but every
image's bytes are read once per process (a sample of fewer images would change every stored
signature).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from lsei_jax import data as data_lib
from lsei_jax.data import byo, shapes

SAMPLE_EXAMPLES = 64
PIXEL_STRIDE = 7
PREFIX = 'data.content.'   # the signature's keys: data.content.{size,labels,attributes,images}
PARTS = ('size', 'labels', 'attributes', 'images')
# The embedded shapes images are a pure function of config fields every signature already
# holds (data.seed, image_size, noise, …): not rendered just to be hashed.
GENERATED = 'generated from the config'
_CACHE: dict[tuple, dict[str, str]] = {}
_CACHE_SIZE = 8


def _hash(*arrays: np.ndarray) -> str:
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(f'{a.dtype.str}{a.shape}'.encode())
    digest.update(a.tobytes())
  return digest.hexdigest()[:16]


def image_sample(images: np.ndarray) -> np.ndarray:
  """The pixels of images [N, H, W, C] that the fingerprint reads: a strided grid of every
  image, then every pixel of SAMPLE_EXAMPLES evenly spaced ones (flat uint8)."""
  n = len(images)
  rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_EXAMPLES)).round().astype(np.int64))
  # In chunks: an on-disk split (data/rows.py) is read a chunk at a time, never whole.
  grid = [np.asarray(images[s:s + 1024])[:, ::PIXEL_STRIDE, ::PIXEL_STRIDE].reshape(-1)
          for s in range(0, n, 1024)]
  return np.concatenate(grid + [np.asarray(images[rows]).reshape(-1)])


def fingerprint(ds: Any, images: bool = True) -> dict[str, str]:
  """{'size', 'labels', 'attributes', 'images'} of a Dataset (data.Dataset): the example
  count and a 16-hex-digit hash of each (attribute names included); images=False (or
  ds.images None) records them as GENERATED."""
  return {'size': str(len(ds.labels)),
          'labels': _hash(np.asarray(ds.labels, np.int64)),
          'attributes': _hash(np.asarray(ds.attributes, bool),
                              np.asarray(list(ds.attribute_names), str)),
          'images': (_hash(np.asarray(ds.images.shape), image_sample(ds.images))
                     if images and ds.images is not None else GENERATED)}


def _source_stamp(data_config) -> tuple:
  """What says the data behind an unchanged config is the same within this process: the
  registered arrays' version, or the files' (mtime, size, inode)."""
  name = data_config.name
  if name == 'numpy' and data_config.get('arrays', ''):
    return ('arrays', byo.registered_version(data_config.arrays))
  paths = []
  if name in ('numpy', 'folder'):
    root = data_config.get('path', '')
    paths = [root]
    if os.path.isdir(root):   # a directory of .npy files: its arrays can be rewritten in place
      paths += sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith('.npy'))
    if name == 'folder':
      paths.append(data_config.get('csv', '') or os.path.join(root, byo.CSV_NAME))
  stamp = []
  for p in paths:
    try:
      st = os.stat(p)
      stamp.append((p, st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError:
      stamp.append((p, None))
  return tuple(stamp)


def of_config(data_config) -> dict[str, str]:
  """`fingerprint` of the train split that `data_config` loads (what every stage trains
  on), computed once per (config, source stamp) in a process."""
  cfg = data_config.to_dict() if hasattr(data_config, 'to_dict') else dict(data_config)
  key = (json.dumps(cfg, sort_keys=True, default=str), _source_stamp(data_config))
  if key not in _CACHE:
    if data_config.name == 'shapes' and not data_config.get('bias_split', ''):
      labels, attributes = data_lib.load_annotations(data_config, 'train')
      ds = _Annotations(labels, attributes, tuple(shapes.ATTRIBUTES), None)
    else:
      ds = data_lib.load(data_config, 'train')
    if len(_CACHE) >= _CACHE_SIZE:
      _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = fingerprint(ds)
  return dict(_CACHE[key])


class _Annotations:
  """A split's annotations without its images (what `fingerprint` reads)."""

  def __init__(self, labels, attributes, attribute_names, images):
    self.labels, self.attributes = labels, attributes
    self.attribute_names, self.images = attribute_names, images


def signature_fields(data_config) -> dict[str, str]:
  """{'data.content.<part>': value} for a stage signature."""
  return {PREFIX + k: v for k, v in of_config(data_config).items()}


def changed_parts(changed_keys) -> list[str]:
  """The data parts among a signature's changed keys, e.g. ['attributes', 'images']."""
  return [k[len(PREFIX):] for k in sorted(changed_keys) if k.startswith(PREFIX)]
