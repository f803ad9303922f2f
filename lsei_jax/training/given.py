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


import jax
import numpy as np

from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.fingerprints import VERSION, describe  # noqa: F401  (public here too)
from lsei_jax.fingerprints import split as fingerprint  # noqa: F401
from lsei_jax.training import checkpoints

# Relative to 1 + max |logit|. The same weights and functions differ by float rounding only:
# a GPU's TF32 convolutions keep 10 mantissa bits (≈ 5e-4 relative per rounding, a few
# layers deep); another function of the same weights differs by O(1).
LOGIT_TOLERANCE = 2e-2
_PROBES: dict[str, np.ndarray] = {}   # fingerprint → its probe logits, for the record


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
