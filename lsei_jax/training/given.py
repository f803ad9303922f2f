"""Which classifier a workdir explains when it was given (not trained): identified by its
weights, never by float rounding, so a run moves between CPU and GPU.

The fingerprint hashes the params (paths, shapes, dtypes, bytes) and the functions'
identity (qualified names, what their closures hold: Flax modules, method names, apply
arguments), or, for a split whose params are computed (the sanity check's random head),
what they are a pure function of (`ClassifierSplit.identity`). The logits on a fixed probe
batch are recorded beside it (WORKDIR/classifier.json) and compared to a tolerance: the
same weights in another function are refused, last-bit differences between devices are not.
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.training import checkpoints

VERSION = 2            # 1 (no 'version' in the record): params + logits rounded to 4 decimals
# Relative to 1 + max |logit|. The same weights and functions differ by float rounding only:
# a GPU's TF32 convolutions keep 10 mantissa bits (≈ 5e-4 relative per rounding, a few
# layers deep); another function of the same weights differs by O(1).
LOGIT_TOLERANCE = 2e-2
_ADDRESS = re.compile(r' at 0x[0-9a-fA-F]+')
_PROBES: dict[str, np.ndarray] = {}   # fingerprint → its probe logits, for the record


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


def fingerprint(split: ClassifierSplit) -> str:
  """16 hex digits: the split's identity when it has one, else its params and functions."""
  digest = hashlib.sha256(f'given/{VERSION}'.encode())
  if split.identity:
    digest.update(f'derived:{split.identity}'.encode())
  else:
    digest.update(checkpoints.fingerprint(split.params).encode())
    for fn in (split.embed, split.head):
      digest.update(describe(fn).encode())
  return digest.hexdigest()[:16]


def identify(split: ClassifierSplit, probe: np.ndarray) -> str:
  """`fingerprint`, its logits on `probe` [8, H, W, 3] kept for `record_fields`."""
  fp = fingerprint(split)
  _PROBES[fp] = np.asarray(jax.jit(lambda p, x: split.head(p, split.embed(p, x)))(
      split.params, probe), np.float32)
  return fp


def record_fields(given: dict) -> dict:
  """What WORKDIR/classifier.json holds besides the identity: the version and the probe
  logits [8, C] the classifier gave when the workdir was made."""
  logits = _PROBES.get(given['given'])
  return {'version': VERSION,
          **({'probe_logits': logits.tolist()} if logits is not None else {})}


def logit_difference(recorded, now) -> float:
  """max |now − recorded| / (1 + max |recorded|) (inf for other shapes)."""
  a, b = np.asarray(recorded, np.float64), np.asarray(now, np.float64)
  if a.shape != b.shape:
    return float('inf')
  return float(np.max(np.abs(a - b)) / (1.0 + np.max(np.abs(a)))) if a.size else 0.0


def check_record(workdir: str, record: dict, given: dict) -> None:
  """Refuses the classifier `given` now ({'given': fingerprint}) unless it is the one
  `record` (WORKDIR/classifier.json) names: same fingerprint, probe logits within
  LOGIT_TOLERANCE."""
  if record.get('version') != VERSION:
    raise checkpoints.CheckpointError(
        f'{workdir}/classifier.json was written by an older lsei_jax, whose classifier '
        f'fingerprint rounded logits (it changed between devices), so the classifier given '
        f'now cannot be checked against it; explain it in a new workdir')
  if record['given'] != given['given']:
    raise checkpoints.CheckpointError(
        f'the classifier given now (fingerprint {given["given"]}) is not the one {workdir} '
        f'was trained on ({record["given"]}): other params or functions; give the original '
        f'weights or use a new workdir')
  now = _PROBES.get(given['given'])
  if now is not None and 'probe_logits' in record:
    err = logit_difference(record['probe_logits'], now)
    if not err <= LOGIT_TOLERANCE:
      raise checkpoints.CheckpointError(
          f'the classifier given now has the params and function names {workdir} was '
          f'trained on, but its logits on the probe batch differ by {err:.3g} (relative, '
          f'> {LOGIT_TOLERANCE:g}): its functions compute something else; give the '
          f'original functions or use a new workdir')
