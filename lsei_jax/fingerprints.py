"""Fingerprints: short hashes that identify parameters and classifiers by content, the same in
every process and on every device (no addresses, no float rounding): what checkpoints record
of a stage's params and what a workdir records of a given classifier (training/given.py)."""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

VERSION = 2            # of a given classifier's fingerprint (1: params + rounded logits)
_ADDRESS = re.compile(r' at 0x[0-9a-fA-F]+')


def params(params: Any) -> str:
  """Short sha256 of a pytree's paths, shapes, dtypes and values (identical on all hosts)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in leaves:
    arr = np.asarray(jax.device_get(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f'{arr.dtype}{arr.shape}'.encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
  return digest.hexdigest()[:16]


def describe(value: Any, depth: int = 0) -> str:
  """A description of a function or closure value that is the same in every process:
  qualified names and closure contents, no addresses, no module path ('__main__' when run
  as a script). Arrays a closure holds are weights too: hashed by value."""
  if depth > 4:
    return type(value).__qualname__
  if isinstance(value, functools.partial):
    return (f'partial({describe(value.func, depth + 1)}, '
            f'{",".join(describe(a, depth + 1) for a in value.args)}, '
            f'{describe(value.keywords, depth + 1)})')
  if isinstance(value, nn.Module):
    return _ADDRESS.sub('', repr(value))
  if isinstance(value, (str, int, float, bool, type(None))):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(describe(v, depth + 1) for v in value) + ')'
  if isinstance(value, dict):
    return '{' + ','.join(f'{k!r}:{describe(v, depth + 1)}' for k, v in sorted(
        value.items(), key=lambda kv: repr(kv[0]))) + '}'
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):   # weights a closure holds
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      value = jax.random.key_data(value)
    arr = np.ascontiguousarray(np.asarray(jax.device_get(value)))
    if arr.dtype == object:   # no bytes of their own to hash
      return f'array{arr.shape}object'
    return f'array{arr.shape}{arr.dtype}:{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}'
  if hasattr(value, 'shape') and hasattr(value, 'dtype'):   # jax.ShapeDtypeStruct, …
    return f'shape{tuple(value.shape)}{value.dtype}'
  fn = getattr(value, '__wrapped__', value)   # jax.jit, lru_cache, functools.wraps
  code = getattr(fn, '__code__', None)
  name = getattr(fn, '__qualname__', type(fn).__qualname__)
  if code is None:
    return _ADDRESS.sub('', name)
  cells = [describe(c.cell_contents, depth + 1) for c in (fn.__closure__ or ())
           if _filled(c)]
  return f'{name}({",".join(cells)})'


def _filled(cell) -> bool:
  try:
    cell.cell_contents  # pylint: disable=pointless-statement
    return True
  except ValueError:   # an empty cell (a closure variable not yet assigned)
    return False


def split(split) -> str:
  """16 hex digits: the split's identity when it has one, else its params and functions."""
  digest = hashlib.sha256(f'given/{VERSION}'.encode())
  if split.identity:
    digest.update(f'derived:{split.identity}'.encode())
  else:
    digest.update(params(split.params).encode())
    for fn in (split.embed, split.head):
      digest.update(describe(fn).encode())
  return digest.hexdigest()[:16]
