"""Concept learners on the embedding h = c1(x): one interface, several implementations.

A concept learner maps embeddings h [B, d] to codes [B, K] (`encode`, eval mode) and codes
back to embeddings ĥ [B, d] (`decode`), and trains on h with a data-parallel step
`(state, {'h': [b, d]}, rng) -> (state, metrics)` (the pipeline's 'concepts' stage). Its
intervention is `interventions.intervene`: each masked unit that is on is switched off, each
one that is off is switched on at `on_value` (the paper's z XOR m for the DVAE's bits).

Implementations (config `model.concepts.kind`, sizes in `model.<kind>`):
  'dvae'      the paper's discrete VAE (lsei_jax.concepts.dvae)
  'topk_sae'  TopK sparse autoencoder with a dead-latent auxiliary loss (topk_sae)
  'nmf'       non-negative matrix factorisation of the ReLU embedding (nmf)
A fourth is one module defining a learner class with `from_config`, plus an entry in KINDS
and a `model.<kind>` config section.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Protocol

import flax.linen as nn
import jax
import numpy as np

from lsei_jax.errors import UserError
from lsei_jax.train_state import compute_dtype

Array = jax.Array

# kind → module defining `Learner` (imported lazily: one module per learner).
KINDS = {'dvae': 'lsei_jax.concepts.dvae', 'topk_sae': 'lsei_jax.concepts.topk_sae',
         'nmf': 'lsei_jax.concepts.nmf'}
DEFAULT_KIND = 'dvae'


class ConceptLearner(Protocol):
  """What the pipeline, evaluation and metrics need from a concept learner."""
  kind: str
  module: nn.Module      # Flax module: init(rng, h [1, d]) gives its params; has hidden_dim
  latent_dim: int        # K
  binary: bool           # codes in {0, 1}: on_value is 1, no quantiles needed

  def encode(self, params, h: Array) -> Array:
    """Eval-mode code [B, K] of embeddings h [B, d]."""

  def decode(self, params, code: Array) -> Array:
    """ĥ [B, d] of codes [B, K]."""

  def make_step(self, cfg) -> Callable:
    """Per-device train step (state, {'h': [b, d]}, rng) → (state, metrics), for
    parallel.data_parallel_step; cfg is the stage's config section (config.concepts)."""

  def check_input(self, h: np.ndarray) -> None:
    """Raises a one-line errors.UserError if h [N, d] is not data this learner can model."""

  # Optional: create_state(rng, example h [1, d], optax tx) → a TrainState subclass, for a
  # learner whose step keeps state besides params (pipeline.concept_state; default: a plain
  # TrainState of `module`).


def kind_of(config) -> str:
  """config.model.concepts.kind (default 'dvae' for configs without the section)."""
  section = config.model.get('concepts', None)
  kind = section.get('kind', DEFAULT_KIND) if section is not None else DEFAULT_KIND
  if kind not in KINDS:
    raise UserError(f'unknown concept learner config.model.concepts.kind={kind!r}; known: '
                     f'{", ".join(KINDS)}')
  return kind


def section(config, kind: str | None = None):
  """The config section with the learner's sizes: config.model.<kind>."""
  kind = kind or kind_of(config)
  if kind not in config.model:
    raise UserError(f'config.model.concepts.kind={kind!r} needs a config.model.{kind} '
                     f'section with its sizes (see configs/shapes.py)')
  return config.model[kind]


def build(config, embed_dim: int, kind: str | None = None) -> ConceptLearner:
  """The configured learner for embeddings of width embed_dim (d); a learner whose module
  has dense layers with a `compute_dtype` (the DVAE) gets config.model.compute_dtype."""
  kind = kind or kind_of(config)
  learner = importlib.import_module(KINDS[kind]).Learner.from_config(section(config, kind),
                                                                      embed_dim)
  dtype = compute_dtype(config)
  if dtype != 'float32' and hasattr(learner.module, 'compute_dtype'):
    learner = dataclasses.replace(learner, module=learner.module.clone(compute_dtype=dtype))
  return learner


def signature(config) -> dict:
  """Fields that must not change while a workdir holds the learner's checkpoints."""
  kind = kind_of(config)
  sig = {f'model.{kind}.{k}': v for k, v in section(config, kind).items()}
  # Older DVAE checkpoints recorded only model.dvae.*: keep them loadable.
  return sig if kind == 'dvae' else {'model.concepts.kind': kind, **sig}


class ModuleLearner:
  """Base of learners whose module has encode(h) → code and decode(code) methods."""
  module: nn.Module

  @property
  def latent_dim(self) -> int:
    return self.module.latent_dim

  def encode(self, params, h: Array) -> Array:
    return self.module.apply({'params': params}, h, method='encode')

  def decode(self, params, code: Array) -> Array:
    return self.module.apply({'params': params}, code, method='decode')

  def check_input(self, h: np.ndarray) -> None:
    del h  # any real embedding
