"""Concept learners on the embedding h = c1(x): one interface, several implementations.

A concept learner maps embeddings h [B, d] to codes [B, K] (`encode`, eval mode) and codes
back to embeddings ĥ [B, d] (`decode`), and trains on h with a data-parallel step
`(state, {'h': [b, d]}, rng) -> (state, metrics)` (the pipeline's 'dvae' stage). Its
intervention is `toggle`: each masked unit that is on is switched off (set to 0), each
masked unit that is off is switched on at `on_value` — for the DVAE's boolean code with
on_value 1 this is the paper's z XOR m; for a sparse autoencoder or NMF it is the usual
"ablate a latent / clamp it to a high quantile of its activations".

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
import jax.numpy as jnp
import numpy as np

from lsei_jax.errors import UserError
from lsei_jax.training import steps

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
    parallel.data_parallel_step; cfg is the stage's config section (config.dvae)."""

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
  dtype = steps.compute_dtype(config)
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


# ----------------------------------------------------------------------- interventions
def toggle(code: Array, mask: Array, on_value: Array | float = 1.0) -> Array:
  """Switches the masked units: on (> 0) → 0, off → on_value.

  code [B, K] (or [K]); mask [K] or code's shape, nonzero = switch; on_value scalar or [K].
  For boolean codes and on_value 1 this equals z XOR m (interventions.intervene).
  """
  mask = jnp.asarray(mask).astype(bool)
  on = jnp.broadcast_to(jnp.asarray(on_value, code.dtype), code.shape[-1:])
  switched = jnp.where(code > 0, jnp.zeros((), code.dtype), on)
  return jnp.where(mask, switched, code)


def on_values(codes: np.ndarray, quantile: float = 0.9) -> np.ndarray:
  """Per unit, the `quantile` of its nonzero activations over codes [N, K] → [K].

  A unit never active gets the same quantile over all nonzero activations (so switching it
  on is a typical-size intervention); 1.0 if the code is all zero.
  """
  codes = np.asarray(codes, np.float64)
  nz = codes[codes > 0]
  fallback = float(np.quantile(nz, quantile)) if nz.size else 1.0
  out = np.full(codes.shape[1], fallback)
  for k in range(codes.shape[1]):  # K is small; NumPy's quantile has no masked axis form
    col = codes[:, k][codes[:, k] > 0]
    if col.size:
      out[k] = np.quantile(col, quantile)
  return out.astype(np.float32)


def intervened(decode: Callable[[Array], Array], h: Array, code: Array, new_code: Array,
               add_error: bool = False) -> Array:
  """ĥ' = decode(new_code) [B, d]; with add_error, plus the reconstruction error h − decode(code)
  (SAE steering: the intervention changes only what the code explains)."""
  out = decode(new_code)
  return out + (h - decode(code)) if add_error else out


def decisive_units(code: Array, decode: Callable[[Array], Array],
                   head: Callable[[Array], Array], on_value: Array | float = 1.0) -> Array:
  """bool [B, K]: (b, i) is True iff toggling unit i alone changes argmax head(decode(·)).

  Generalises interventions.decisive_bits (equal for boolean codes, on_value 1).
  """
  base = jnp.argmax(head(decode(code)), axis=-1)                            # [B]
  masks = jnp.eye(code.shape[-1], dtype=bool)                               # [K, K]
  preds = jax.vmap(lambda m: jnp.argmax(head(decode(toggle(code, m, on_value))), -1))(masks)
  return (preds != base[None, :]).T


def active(code: Array) -> Array:
  """Which units are on: code > 0, [B, K] bool."""
  return code > 0
