"""Up-front checks of every config field a run uses, and of the data, before any stage
trains or any output is written. Each failure is a UserError naming the field and the fix."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax import concepts, layers
from lsei_jax.inn import conditional_base
from lsei_jax.training import steps
from lsei_jax.errors import UserError


def _positive(config, dotted: str, integer: bool = False) -> None:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  ok = isinstance(node, (int, float, np.integer, np.floating)) and not isinstance(node, bool)
  if not ok or not np.isfinite(node) or node <= 0 or (integer and int(node) != node):
    kind = 'a positive integer' if integer else 'positive'
    raise UserError(f'config.{dotted} must be {kind}, got {node!r}')


def check_config(config, sections: Sequence[str]) -> None:
  """Fields of every stage and of evaluation; `sections`: the trained stages' config
  sections (the graph's: lsei_jax.pipeline.graph.trained_sections). The pipeline's
  validate_config checks the rest: steps, batch sizes, learning rates, device divisibility."""
  for dotted in ('log_every', 'checkpoint.every_steps', 'checkpoint.max_to_keep',
                 'explainer.fisher_samples', 'explainer.info_examples', 'eval.fisher_samples',
                 'eval.fisher_examples', 'eval.num_bootstrap', 'eval.grid_rows',
                 'model.classifier.hidden_dim'):
    _positive(config, dotted, integer=True)
  for dotted in ('concepts.temperature_start', 'concepts.temperature_end', 'explainer.sigma_scale'):
    _positive(config, dotted)
  if not config.concepts.beta >= 0:
    raise UserError(f'config.concepts.beta must be ≥ 0 (the KL weight), got {config.concepts.beta}')
  if config.model.classifier.num_classes < 2:
    raise UserError(f'config.model.classifier.num_classes must be ≥ 2, got '
                    f'{config.model.classifier.num_classes}')
  if not 0 < config.eval.ci_level < 1:
    raise UserError(f'config.eval.ci_level must be in (0, 1), got {config.eval.ci_level}')
  if config.explainer.get('fisher_every', 1) < 1:
    raise UserError(f'config.explainer.fisher_every must be ≥ 1 (1 = every step), got '
                    f'{config.explainer.fisher_every}')
  per = config.get('steps_per_dispatch', 1)
  if 'steps_per_dispatch' in config:
    _positive(config, 'steps_per_dispatch', integer=True)
  every = int(config.explainer.get('fisher_every', 1))
  if per > 1 and every > 1 and per % every and config.explainer.fisher_weight > 0:
    # A window of k steps runs fisher_every's alternation as one program (parallel.multi_step).
    raise UserError(f'config.steps_per_dispatch={per} must be a multiple of '
                    f'config.explainer.fisher_every={every} (or 1): use e.g. '
                    f'{every * max(per // every, 1)}')
  dtype = steps.compute_dtype(config)
  if dtype not in layers.COMPUTE_DTYPES:
    raise UserError(f'config.model.compute_dtype must be one of '
                    f'{", ".join(map(repr, layers.COMPUTE_DTYPES))}, got {dtype!r}')
  if config.explainer.get('similarity', 'cosine') not in ('cosine', 'dot'):
    raise UserError(f"config.explainer.similarity must be 'cosine' or 'dot', got "
                    f'{config.explainer.similarity!r}')
  for stage in sections:  # unknown optimizer / schedule names, before training
    try:
      steps.make_optimizer(config[stage], max(int(config[stage].steps), 1))
    except ValueError as e:
      raise UserError(f'config.{stage}: {e}') from None
  kind = concepts.kind_of(config)
  k = concepts.section(config, kind).latent_dim  # units of the configured concept learner
  bits = list(config.eval.bias_bits)
  bad = [b for b in bits if not (isinstance(b, (int, np.integer)) and 0 <= b < k)]
  if bad or len(set(bits)) != len(bits):
    raise UserError(f'config.eval.bias_bits={tuple(bits)}: bits must be distinct integers in '
                    f'[0, {k}) (config.model.{kind}.latent_dim={k}); () flips all of them')
  size, channels = config.data.image_size, tuple(config.model.explainer.channels)
  s0 = size // 2**len(channels)
  if s0 < 1 or s0 * 2**len(channels) != size:
    raise UserError(f'the explainer cannot make {size}×{size} images: it doubles a '
                    f's0×s0 map once per entry of config.model.explainer.channels='
                    f'{channels}, so config.data.image_size must be a multiple of '
                    f'{2**len(channels)}; change one of them')
  if config.get('invariance', None) and config.invariance.get('enabled', False):
    # The autoencoder halves the image once per entry of its channels (inn/autoencoder.py);
    # caught here, not at init, where it would stop the run after the earlier stages.
    ae, ae_kind = tuple(config.autoencoder.channels), config.autoencoder.get('kind', 'conv')
    if ae_kind not in ('conv', 'pca'):
      raise UserError(f'config.autoencoder.kind={ae_kind!r} is not one of conv, pca')
    base = config.invariance.get('base', 'none')
    if base not in conditional_base.KINDS:
      raise UserError(f'config.invariance.base={base!r} is not one of '
                      f'{", ".join(conditional_base.KINDS)}')
    if ae_kind == 'conv' and (not ae or size % 2**len(ae)):
      raise UserError(f'the autoencoder cannot encode {size}×{size} images: it halves them '
                      f'once per entry of config.autoencoder.channels={ae}, so '
                      f'config.data.image_size must be a multiple of {2**len(ae)}; use '
                      f'fewer channels or another image size')


def check_data(ds, config, split: str, num_classes: int | None = None) -> None:
  """The loaded split can train / evaluate the classifier: the configured one, or a given
  one with `num_classes` outputs."""
  n = config.model.classifier.num_classes if num_classes is None else num_classes
  labels = np.asarray(ds.labels)
  if labels.size and (labels.min() < 0 or labels.max() >= n):
    bad = sorted(set(labels[(labels < 0) | (labels >= n)].tolist()))[:3]
    where = (f'config.model.classifier.num_classes={n}' if num_classes is None
             else f'the given classifier has {n} classes')
    raise UserError(f'{split} split: labels {bad} are outside [0, {n}) ({where}); fix the '
                    f'labels or the number of classes')
  if labels.size and np.all(labels == labels[0]):
    raise UserError(f'{split} split: task {config.data.task!r} is {labels[0]} for all '
                    f'{labels.size} examples, so there is nothing to classify; choose '
                    f'another config.data.task or fix the data')
