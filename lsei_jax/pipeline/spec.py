"""The run spec: a config resolved once into what every stage and evaluator reads.

`resolve` checks the config, loads the split, sizes the modules by the classifier (trained
here, given, or the sanity check's randomised one: d = embedding width, C = classes) and
returns a frozen, hashable `RunSpec`. Stages and evaluators read it, never the raw
ConfigDict: their own section (`spec.section('explainer')`), the modules (`spec.mods`), the
named random streams (`spec.stream('eval/tcav')`) and their checkpoint signatures.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from lsei_jax import compile_cache, concepts, errors, models, streams
from lsei_jax import data as data_lib
from lsei_jax import classifier_split
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.pipeline import identity
from lsei_jax.training import parallel, steps, validate


@dataclasses.dataclass(frozen=True)
class Models:
  """The stage modules. `learner` is the concept learner (lsei_jax.concepts) and `concepts`
  its Flax module (models.DVAE for the paper's kind); `probe` needs the attribute count."""
  classifier: models.Classifier
  concepts: Any
  explainer: models.Explainer
  probe: models.Classifier | None = None
  learner: concepts.ConceptLearner | None = None


def build(config, num_attributes: int | None = None, embed_dim: int | None = None) -> Models:
  """The stage modules; the attribute probe needs the dataset's attribute count and the
  concept learner the embedding width d (default: config.model.classifier.hidden_dim)."""
  probe = None
  if num_attributes is not None:
    pc = config.model.probe
    probe = models.Classifier(channels=tuple(pc.channels), strides=tuple(pc.strides),
                              hidden_dim=pc.hidden_dim, num_classes=num_attributes,
                              dropout=0.0, compute_dtype=steps.compute_dtype(config))
  clf, _, g = steps.build_models(config)
  learner = concepts.build(config, config.model.classifier.hidden_dim if embed_dim is None
                           else embed_dim)
  return Models(clf, learner.module, g, probe, learner)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run, resolved: hashable, so jitted functions and templates are built once per spec.

  config: the resolved config, frozen (stages read their sections through `section`).
  d, num_classes: the classifier's embedding width and classes; classifier: 'trained'
  (config.model.classifier, trained here), 'given' (a ClassifierSplit: `given` holds it and
  `given_id` its fingerprint) or 'random' (the sanity check's untrained classifier).
  """
  config: ml_collections.FrozenConfigDict
  mesh: Any
  mods: Models
  d: int
  num_classes: int
  num_attributes: int | None
  classifier: str
  given_fingerprint: str | None = None
  given: ClassifierSplit | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def given_id(self) -> dict | None:
    """What downstream stages record about a given classifier: {'given': fingerprint}."""
    return None if self.given_fingerprint is None else {'given': self.given_fingerprint}

  @property
  def seed(self) -> int:
    return self.config.seed

  @property
  def image_size(self) -> int:
    return self.config.data.image_size

  def section(self, name: str):
    """A config section by dotted name ('explainer', 'eval.tcav')."""
    node = self.config
    for part in name.split('.'):
      node = node[part]
    return node

  def stream(self, name: str) -> jax.Array:
    """The named random stream under the run's seed (lsei_jax.streams)."""
    return streams.stream(self.config.seed, name)

  def stream_seed(self, name: str) -> int:
    return streams.stream_seed(self.config.seed, name)

  def replace(self, **changes) -> 'RunSpec':
    return dataclasses.replace(self, **changes)


def validate_config(config, mesh) -> None:
  """Clear errors for values no stage can run with (before anything is written)."""
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top  (graph → spec)
  if config.data.name not in data_lib.SPLITS:
    raise errors.UserError(f'unknown dataset config.data.name={config.data.name!r}; known: '
                           f'{", ".join(data_lib.SPLITS)}')
  with errors.as_user_errors():
    for section in graph.trained_sections(config):
      c = config[section]
      for field in ('steps', 'batch_size', 'learning_rate'):
        if not c[field] > 0:
          raise ValueError(f'config.{section}.{field} must be positive, got {c[field]}')
      parallel.check_batch(c.batch_size, mesh, f'config.{section}.batch_size')
      # Each host reads batch_size / process_count examples (data_lib.batch_indices).
      data_lib.check_process_batch(c.batch_size, f'config.{section}.batch_size')
    if not config.model.dvae.latent_dim > 0:
      raise ValueError(f'config.model.dvae.latent_dim must be positive, got '
                       f'{config.model.dvae.latent_dim}')
    concepts.build(config, config.model.classifier.hidden_dim)  # kind and sizes (no params)
    if config.explainer.fisher_weight < 0:
      raise ValueError('config.explainer.fisher_weight must be ≥ 0')
    parallel.check_batch(config.explainer.fisher_batch, mesh, 'config.explainer.fisher_batch')
    parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
    if config.explainer.fisher_batch > config.explainer.batch_size:
      raise ValueError('config.explainer.fisher_batch must not exceed '
                       'config.explainer.batch_size')
  validate.check_config(config, graph.trained_sections(config))


def resolve(config, split: str, *, classifier: ClassifierSplit | None = None, mesh=None,
            check: bool = True
            ) -> tuple[RunSpec, data_lib.Dataset]:
  """(RunSpec, the loaded `split`) of `config` explaining `classifier` (None: the config's
  own, trained here; or the one config.classifier.source names). Checks the config (check=
  False: only what evaluation needs) and the data, before anything is written."""
  compile_cache.enable()  # library use gets the cache too, not only the CLI
  mesh = parallel.make_mesh() if mesh is None else mesh
  if check:
    validate_config(config, mesh)
  else:
    from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top  (graph → spec)
    with errors.as_user_errors():
      parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
    validate.check_config(config, graph.trained_sections(config))
  frozen = ml_collections.FrozenConfigDict(config)
  classifier = identity.resolve_classifier(frozen, classifier, mesh)
  ds = data_lib.load(frozen.data, split)
  return spec_for(frozen, mesh, ds, split, classifier), ds


def spec_for(frozen, mesh, ds, split: str, classifier: ClassifierSplit | None) -> RunSpec:
  """The RunSpec of a resolved config over `ds` for `classifier` (None: the built-in one)."""
  size = frozen.data.image_size
  if classifier is None:
    d, num_classes = frozen.model.classifier.hidden_dim, frozen.model.classifier.num_classes
    kind, given_fp = 'trained', None
  else:
    d, num_classes = classifier.dims((size, size, 3))
    probe = np.asarray(ds.images[:8], np.float32) / 255.0
    classifier.check_cut(probe)
    classifier_split.check_independent_rows(classifier, probe)  # rows must not see the batch
    kind, given_fp = 'given', identity.given_identity(classifier, size)['given']
  validate.check_data(ds, frozen, split,
                      None if classifier is None else num_classes)
  num_attributes = len(ds.attribute_names)
  return RunSpec(frozen, mesh, build(frozen, num_attributes, d), d, num_classes,
                 num_attributes, kind, given_fp, classifier)


def make_spec(config, mesh=None, *, num_attributes: int | None = None,
              embed_dim: int | None = None, classifier: str = 'trained') -> RunSpec:
  """A RunSpec of the config's own classifier without loading data (tests, benchmarks,
  notebooks that build states or steps directly): d defaults to
  config.model.classifier.hidden_dim; the probe exists when num_attributes is given."""
  frozen = ml_collections.FrozenConfigDict(config)
  d = frozen.model.classifier.hidden_dim if embed_dim is None else embed_dim
  return RunSpec(frozen, parallel.make_mesh() if mesh is None else mesh,
                 build(frozen, num_attributes, d), d, frozen.model.classifier.num_classes,
                 num_attributes, classifier)
