"""What a stage's checkpoint must agree with to be resumed or reused: every config field
the stage reads, minus an explicit list of fields that cannot change its result.

The signature is recorded in each checkpoint's meta (`config`) and compared on resume and
on load (checkpoints.check_config), which names every changed field. Upstream checkpoints
are pinned separately by fingerprint (checkpoints.check_upstream).
"""
from __future__ import annotations

from typing import Any, Sequence

from lsei_jax.training import steps

# Bumped when the signature's contents change; checkpoints recorded with another version
# (or before versions existed: architecture fields only) are refused with a clear message.
# 3: the train split's content fingerprint (data/fingerprint.py, added by pipeline.node.Node.signature).
VERSION = 3

# Fields read while training that cannot change what it computes: where the data is
# cached and how fast it is read, the test split's size and correlation, whether the λ = 0
# explainer is also trained (a stage list choice), the invariance evaluator's settings
# (the flow is trained whatever T, images or thresholds it is evaluated with). Dropped
# from the recorded signature as well, so that a field made harmless later no longer
# refuses checkpoints that recorded it.
HARMLESS = frozenset({
    'data.num_test', 'data.test_rho', 'data.data_dir', 'data.workers', 'data.cache',
    'explainer.train_noreg', 'inn.enabled', 'invariance.enabled',
    'invariance.eval_images', 'invariance.samples', 'invariance.temperature',
    'invariance.figure_images', 'invariance.figure_samples', 'invariance.encoded_min',
    'invariance.change_max',
})

# explainer_noreg trains with λ = 0: the regularizer's settings are never used.
UNUSED_NOREG = ('explainer.fisher_samples', 'explainer.fisher_batch', 'explainer.fisher_every',
                 'explainer.fisher_chunk', 'explainer.fisher_group', 'explainer.sigma_scale',
                 'explainer.similarity', 'explainer.info_examples')


def _flatten(prefix: str, value: Any, out: dict) -> None:
  if hasattr(value, 'items'):
    for k, v in value.items():
      _flatten(f'{prefix}.{k}', v, out)
  else:
    out[prefix] = list(value) if isinstance(value, tuple) else value


def _section(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def stage_signature(config, sections: Sequence[str]) -> dict:
  """{dotted field: value} of the config `sections` a stage reads (its node declares them:
  lsei_jax.pipeline), minus HARMLESS, plus the seed and the signature version under
  '_signature'."""
  sig: dict[str, Any] = {'_signature': VERSION, 'seed': config.seed}
  for name in sections:
    _flatten(name, _section(config, name), sig)
  for key in HARMLESS:
    sig.pop(key, None)
  # Every stage's dense layers compute in it. Recorded only when not float32, so that
  # float32 checkpoints written before the field existed keep loading.
  dtype = steps.compute_dtype(config)
  if dtype != 'float32':
    sig['model.compute_dtype'] = dtype
  return sig


def legacy_message(stage: str, directory: str, recorded: dict) -> str | None:
  """Why a checkpoint recorded under another signature version cannot be checked, or None."""
  version = recorded.get('_signature')
  if version == VERSION:
    return None
  made_by = ('an older lsei_jax that recorded only the architecture fields'
             if version is None else f'signature version {version}')
  return (f'{stage} checkpoint in {directory} was written by {made_by}, so whether it '
          f'matches this config (seed, data, optimizer, …) cannot be checked; retrain in a '
          f'new workdir, or move {directory} away')
