"""Named random streams: a stage's or an evaluation's keys come from fold_in of a stable hash
of its name ('dvae', 'eval/tcav', …) under the run's seed, never from its position or from
seed arithmetic, so adding a stage or a figure changes no other stream."""
from __future__ import annotations

import hashlib
import operator

import jax


def _name_hash(name: str) -> int:
  """A stable 31-bit hash of a stream name (Python's hash() changes between runs)."""
  return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], 'little') & 0x7FFFFFFF


def stream(seed: int, name: str) -> jax.Array:
  """The PRNG key of the random stream `name` under `seed`."""
  seed = operator.index(seed)
  if -2**31 <= seed < 2**31:   # a jitted argument is int32; eagerly, larger seeds work too
    return _seeded_fold_in(seed, _name_hash(name))
  return jax.random.fold_in(jax.random.key(seed), _name_hash(name))


@jax.jit
def _seeded_fold_in(seed: jax.Array, data: jax.Array) -> jax.Array:
  """fold_in(key(seed), data) as one executable instead of four eager ones (seeding, a
  conversion, fold_in's two): bitwise the same integer arithmetic."""
  return jax.random.fold_in(jax.random.key(seed), data)


def stream_seed(seed: int, name: str) -> int:
  """An integer seed for NumPy streams (batch order) named like `stream`."""
  return _name_hash(f'{seed}/{name}')
