"""Datasets behind one interface: batches of
{'image': float32 [B,H,W,3] in [0,1], 'label': int32 [B], 'attributes': bool [B,A]}
plus the attribute names. Batch order is a pure function of (seed, step), so a resumed
run reads exactly the batches an uninterrupted one would have.

Sources (config.data.name): 'shapes' (embedded synthetic data), 'celeba' (TFDS celeb_a),
'numpy' (an .npz or arrays registered in Python), 'folder' (images + attribute CSV).
Every source keeps a split's images on disk (data.rows.Rows), read per batch, so a
process's memory does not grow with the data: an image folder's decoded into a temporary
file, a directory of .npy files and an uncompressed .npz's in place, a compressed .npz's
inflated into a temporary file, CelebA's decoded into its cache, the embedded shapes
written to a temporary file as they render (a piece of a 4,096-image render at a time;
the bytes the in-memory renderer, shapes.generate, gives). Temporary files are unlinked at
once and live under config.data.cache_dir (default: the system's temp dir). `batch_indices`
gives each process (jax.process_index() of jax.process_count()) a disjoint slice of each
global batch, so hosts never read the same example in one step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from lsei_jax.data import bias_splits, byo, rows, shapes
from lsei_jax.errors import as_user_errors

SPLITS = {'shapes': ('train', 'validation', 'test', 'test_unbiased', 'test_biased'),
          'celeba': ('train', 'validation', 'test'),
          'numpy': byo.SPLITS, 'folder': byo.SPLITS}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A split. images uint8 [N,H,W,3] (an ndarray, or rows.Rows on disk: index it with rows
  or slices, np.asarray(images) reads it whole); labels int32 [N]; attributes bool [N,A]."""
  images: np.ndarray
  labels: np.ndarray
  attributes: np.ndarray
  attribute_names: tuple[str, ...]
  task: str
  info: dict = dataclasses.field(default_factory=dict, compare=False)  # e.g. bias-split stats

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {'image': self.images[idx].astype(np.float32) / 255.0,
            'label': self.labels[idx],
            'attributes': self.attributes[idx]}


def load(data_config: Any, split: str) -> Dataset:
  """Loads `split` of the configured data (see _load); bad data is a UserError."""
  with as_user_errors():
    return _load(data_config, split)


def load_annotations(data_config: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labels int32 [N], attributes bool [N, A]) of `split`, equal to load()'s; the embedded
  shapes are not rendered for it (the 12,288 train images of configs/shapes.py: ≈ 2 s)."""
  if (data_config.name == 'shapes' and split in SPLITS['shapes']
      and not data_config.get('bias_split', '')):
    with as_user_errors():  # not cached: milliseconds, and the cache is for rendered splits
      ds = _shapes.__wrapped__(*_shapes_args(data_config, split), images=False)
  else:
    ds = load(data_config, split)
  return ds.labels, ds.attributes


def _load(data_config: Any, split: str) -> Dataset:
  """Loads `split` of the configured data.

  Splits: 'train', 'test' (what evaluation uses; the official test partition for CelebA),
  'validation' (held-out images of the training distribution: CelebA, BYO; shapes: drawn
  like 'train' under another name, num_test images), and the bias-control splits
  (bias_splits.CELEBA) sampled from train. config.data.bias_split replaces 'train' by one of
  those. Shapes: 'test' has the spurious attribute agree with the task with probability
  data.test_rho (default 0.5: independent; real test sets' attributes correlate),
  'test_unbiased' is the same images with it independent (what the unbiased accuracy is
  measured on), 'test_biased' other images at the training split's rho.
  """
  name = data_config.name
  if name not in SPLITS:
    raise ValueError(f'unknown dataset {name!r}; known: {", ".join(SPLITS)}')
  bias = data_config.get('bias_split', '') or ''
  if split in bias_splits.CELEBA or (split == 'train' and bias):
    return _bias_split(data_config, split if split != 'train' else bias)
  if split not in SPLITS[name]:
    known = SPLITS[name] + tuple(bias_splits.CELEBA)
    raise ValueError(f'unknown split {split!r} for {name!r} data; known: {", ".join(known)}')
  if name == 'shapes':
    return _shapes(*_shapes_args(data_config, split), spill_dir=rows.spill_dir_of(data_config))
  if name == 'celeba':
    return _celeba(data_config, split)
  images, labels, attributes, names = (byo.load_arrays if name == 'numpy'
                                       else byo.load_folder)(data_config, split)
  return Dataset(images, labels, attributes, names, data_config.task)


def _celeba(data_config: Any, split: str) -> Dataset:
  from lsei_jax.data import celeba  # pylint: disable=g-import-not-at-top  (needs tfds, grain)
  images, attributes = celeba.read_cached(
      data_config.get('data_dir', '') or celeba.default_data_dir(), split,
      int(data_config.image_size), int(data_config.get('crop_size', 0)),
      int(data_config.get('max_examples', 0)), int(data_config.get('workers', -1)),
      bool(data_config.get('jpeg_draft', True)), bool(data_config.get('cache', True)),
      rows.spill_dir_of(data_config))
  names = celeba.ATTRIBUTES
  labels = byo.labels_for(data_config.task, names, attributes, None, 'CelebA')
  return Dataset(images, labels, attributes, names, data_config.task)


def _bias_split(data_config: Any, name: str) -> Dataset:
  """The bias-control split `name` drawn from train; its statistics in `info`."""
  train = load(_without_bias(data_config), 'train')
  idx, stats = bias_splits.sample(
      train.attributes, train.attribute_names, data_config.task, name,
      float(data_config.get('bias_fraction', 0.7)), int(data_config.get('bias_size', 0)),
      int(data_config.get('seed', 0)))
  images = (train.images.subset(idx) if isinstance(train.images, rows.Rows)
            else train.images[idx])   # on disk: the chosen rows, still read per batch
  return Dataset(images, train.labels[idx], train.attributes[idx],
                 train.attribute_names, train.task, info={'bias_split': stats})


def _without_bias(data_config: Any) -> Any:
  # A FrozenConfigDict (the run spec's) hands back its source with as_configdict(): copy it.
  source = data_config.as_configdict() if hasattr(data_config, 'as_configdict') else data_config
  c = source.copy_and_resolve_references()
  with c.unlocked():
    c.bias_split = ''
  return c


def _shapes_args(data_config: Any, split: str) -> tuple:
  """_shapes's arguments for `split`: the rho it is drawn at and the split whose generator
  stream it uses ('test_unbiased' is 'test' drawn at rho 0.5: the same images and nuisance,
  the spurious column redrawn from the same uniforms, so only it differs)."""
  test_rho = float(data_config.get('test_rho', 0.5))
  if not 0.0 <= test_rho <= 1.0:
    raise ValueError(f'config.data.test_rho={test_rho} must be in [0, 1] (the probability '
                     'that the test split\'s spurious attribute agrees with the task; 0.5: '
                     'independent)')
  rho = {'test': test_rho, 'test_unbiased': 0.5}.get(split, float(data_config.rho))
  return (int(data_config.image_size), data_config.task, data_config.get('spurious'),
          rho, int(data_config.seed), 'test' if split == 'test_unbiased' else split,
          int(data_config.num_train if split == 'train' else data_config.num_test),
          float(data_config.get('noise', 0.04)), float(data_config.get('object_scale', 1.0)))


@functools.lru_cache(maxsize=8)
def _shapes(image_size, task, spurious, rho, seed, split, num, noise=0.04, object_scale=1.0,
            flip=None, images=True, spill_dir=None) -> Dataset:
  """task: an attribute, or 'a+b+…': the label is how many of them are on (a K+1-class
  task); the spurious attribute is then correlated with the first. images=False: the
  labels and attributes alone (Dataset.images None), nothing rendered; else the images
  on disk (rows.Rows) under spill_dir (None: the system's temp dir)."""
  parts = task.split('+')
  unknown = [p for p in parts if p not in shapes.ATTRIBUTES]
  if unknown:
    raise ValueError(f'unknown shapes attribute {unknown[0]!r} in config.data.task={task!r}; '
                     f'known: {", ".join(shapes.ATTRIBUTES)} (several joined by "+": a '
                     f'task counting how many are on)')
  if len(set(parts)) != len(parts) or spurious in parts[1:]:
    raise ValueError(f'config.data.task={task!r}: the attributes joined by "+" must be '
                     f'distinct and differ from config.data.spurious={spurious!r}')
  rng, attrs = shapes.draw(num, task=parts[0], spurious=spurious,
                           rho=rho,   # the split's own (_shapes_args)
                           seed=seed, split=split, flip=flip)
  # Written to an unlinked file (spill_dir: config.data.cache_dir) a render piece at a
  # time: memory holds neither the split nor a render chunk; the bytes are generate's.
  pixels = (rows.spill(shapes.image_chunks(rng, attrs, image_size, shapes.CHUNK, noise,
                                           object_scale),
                       (num, image_size, image_size, 3), np.uint8, spill_dir)
            if images else None)
  cols = [shapes.ATTRIBUTES.index(p) for p in parts]
  labels = attrs[:, cols].sum(1).astype(np.int32)
  return Dataset(pixels, labels, attrs, shapes.ATTRIBUTES, task)


def counterfactual_renderer(data_config: Any, split: str
                            ) -> Callable[[str], np.ndarray] | None:
  """attribute name → uint8 images [N,H,W,3] of `split` re-rendered with only that attribute
  flipped (same order and nuisance as load(data_config, split).images; on disk, rows.Rows,
  like them); None for data that cannot be re-rendered (only the embedded shapes can)."""
  if data_config.name != 'shapes' or data_config.get('bias_split', ''):
    return None
  args = _shapes_args(data_config, split)
  # Not cached: six flipped copies of a split would crowd the loaded splits out of the cache.
  return lambda name: _shapes.__wrapped__(*args, flip=name,
                                          spill_dir=rows.spill_dir_of(data_config)).images


def batch_indices(num_examples: int, global_batch: int, step: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """Indices of this process's share of global batch `step` (shuffled epochs, no remainder).

  Returns int64 [global_batch // process_count]; a pure function of its arguments.
  """
  if global_batch > num_examples:
    raise ValueError(f'batch size {global_batch} exceeds the {num_examples} examples')
  steps_per_epoch = num_examples // global_batch
  epoch, pos = divmod(step, steps_per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  batch = perm[pos * global_batch:(pos + 1) * global_batch]
  local = global_batch // process_count
  return batch[process_index * local:(process_index + 1) * local]


def check_process_batch(global_batch: int, what: str = 'batch_size',
                        process_count: int | None = None) -> None:
  """Each process reads global_batch / process_count examples per step: it must divide."""
  import jax  # pylint: disable=g-import-not-at-top
  n = jax.process_count() if process_count is None else process_count
  if global_batch % n:
    raise ValueError(f'{what}={global_batch} must divide by the {n} processes (hosts), '
                     f'each of which reads its own share; use e.g. '
                     f'{max(n, global_batch // n * n)}')
