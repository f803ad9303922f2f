"""Datasets behind one interface: batches of
{'image': float32 [B,H,W,3] in [0,1], 'label': int32 [B], 'attributes': bool [B,A]}
plus the attribute names. Batch order is a pure function of (seed, step), so a resumed
run reads exactly the batches an uninterrupted one would have."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from lsei_jax.data import shapes

SPLITS = ('train', 'test', 'test_biased')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """In-memory split. images uint8 [N,H,W,3]; labels int32 [N]; attributes bool [N,A]."""
  images: np.ndarray
  labels: np.ndarray
  attributes: np.ndarray
  attribute_names: tuple[str, ...]
  task: str

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {'image': self.images[idx].astype(np.float32) / 255.0,
            'label': self.labels[idx],
            'attributes': self.attributes[idx]}


def load(data_config: Any, split: str) -> Dataset:
  """Loads `split` ∈ {'train', 'test' (unbiased), 'test_biased'} of the configured data."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; known: {", ".join(SPLITS)}')
  name = data_config.name
  if name == 'shapes':
    return _shapes(int(data_config.image_size), data_config.task,
                   data_config.get('spurious'), float(data_config.rho),
                   int(data_config.seed), split,
                   int(data_config.num_train if split == 'train' else data_config.num_test))
  raise ValueError(f"unknown dataset {name!r}; known: 'shapes'")


@functools.lru_cache(maxsize=8)
def _shapes(image_size, task, spurious, rho, seed, split, num) -> Dataset:
  split_rho = 0.5 if split == 'test' else rho
  d = shapes.generate(num, image_size=image_size, task=task, spurious=spurious,
                      rho=split_rho, seed=seed, split=split)
  labels = d['attributes'][:, shapes.ATTRIBUTES.index(task)].astype(np.int32)
  return Dataset(d['image'], labels, d['attributes'], shapes.ATTRIBUTES, task)


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


def eval_chunks(num_examples: int, batch_size: int):
  """Consecutive index ranges covering all examples (the last one may be short)."""
  for start in range(0, num_examples, batch_size):
    yield np.arange(start, min(start + batch_size, num_examples))
