"""The stages as a declarative graph, walked by training (here) and evaluation.

Each `StageDef` names its upstream stages, its config section, its state template, its step
factory and its frozen inputs (arrays computed once from the upstream stages, e.g.
h = c1(x) for the DVAE and ĥ = d(1[l(h) > 0]) for the explainers, docs/method.md §2).
Random streams are named: a stage's keys and batch order come from fold_in of a stable hash
of its name, never from its position. The classifier is a `ClassifierSplit`: trained here
from config.model.classifier, or given (`classifier=`, config.classifier.source), in which
case it is not trained and its fingerprint is recorded instead.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsei_jax import data as data_lib
from lsei_jax.data import fingerprint as data_fingerprint
from lsei_jax import classifier_split, compile_cache, concepts, errors, fisher, models
from lsei_jax.training import atomic, balance, checkpoints, parallel, steps, validate
from lsei_jax.training import given as given_lib
from lsei_jax.training import signature as signature_lib
from lsei_jax.training import workdir as workdir_lib
from lsei_jax.training.workdir import check_workdir  # noqa: F401  (public here too)
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.training.trainer import (Stage, adopt_stage, load_complete, run_stage,
                                      save_untrained)

STAGES = ('classifier', 'dvae', 'explainer', 'explainer_noreg', 'probe')
GIVEN_FILE = 'classifier.json'  # WORKDIR/classifier.json: the given classifier's fingerprint


def stage_names(config) -> tuple[str, ...]:
  """The stages this config trains, in order."""
  names = STAGES[:3] + (('explainer_noreg',) if config.explainer.train_noreg else ())
  return names + ('probe',) + (('sanity',) if config.sanity.enabled else ())


# ----------------------------------------------------------------------- random streams
def _name_hash(name: str) -> int:
  """A stable 31-bit hash of a stream name (Python's hash() changes between runs)."""
  return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], 'little') & 0x7FFFFFFF


def stream(seed: int, name: str) -> jax.Array:
  """The PRNG key of the random stream `name` ('dvae', 'eval/tcav', …) under `seed`."""
  return jax.random.fold_in(jax.random.key(seed), _name_hash(name))


def stream_seed(seed: int, name: str) -> int:
  """An integer seed for NumPy streams (batch order) named like `stream`."""
  return _name_hash(f'{seed}/{name}')


def validate_config(config, mesh) -> None:
  """Clear errors for values no stage can run with (before anything is written)."""
  if config.data.name not in data_lib.SPLITS:
    raise ValueError(f'unknown dataset config.data.name={config.data.name!r}; known: '
                     f'{", ".join(data_lib.SPLITS)}')
  for stage in ('classifier', 'dvae', 'explainer', 'probe'):
    c = config[stage]
    for field in ('steps', 'batch_size', 'learning_rate'):
      if not c[field] > 0:
        raise ValueError(f'config.{stage}.{field} must be positive, got {c[field]}')
    parallel.check_batch(c.batch_size, mesh, f'config.{stage}.batch_size')
    # Each host reads batch_size / process_count examples (data_lib.batch_indices).
    data_lib.check_process_batch(c.batch_size, f'config.{stage}.batch_size')
  if not config.model.dvae.latent_dim > 0:
    raise ValueError(f'config.model.dvae.latent_dim must be positive, got '
                     f'{config.model.dvae.latent_dim}')
  concepts.build(config, config.model.classifier.hidden_dim)  # kind and sizes (no params)
  if config.explainer.fisher_weight < 0:
    raise ValueError('config.explainer.fisher_weight must be ≥ 0')
  parallel.check_batch(config.explainer.fisher_batch, mesh, 'config.explainer.fisher_batch')
  parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  if config.explainer.fisher_batch > config.explainer.batch_size:
    raise ValueError('config.explainer.fisher_batch must not exceed config.explainer.batch_size')


# Frozen, so hashable by value: jitted functions are built once per (Models, mesh).
@dataclasses.dataclass(frozen=True)
class Models:
  """The stage modules. `dvae` is the concept learner's module (models.DVAE for the
  paper's kind) and `learner` the learner itself (lsei_jax.concepts)."""
  classifier: models.Classifier
  dvae: Any
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


def signature(config, stage: str) -> dict:
  """Fields that must not change while a workdir holds checkpoints of `stage`."""
  sig = signature_lib.stage_signature(config, stage)
  sig.update(data_fingerprint.signature_fields(config.data))  # the data's content (issue 28)
  if stage in ('dvae', 'explainer', 'explainer_noreg') and concepts.kind_of(config) != 'dvae':
    sig.update(concepts.signature(config))  # the learner's kind and sizes shape ĥ
  return sig


def balance_weights(config, ds) -> np.ndarray | None:
  """Per-example sampling weights [N] of the train split for the stages with balance=True
  (explainer, probe): the label decorrelated from every attribute (balance.py)."""
  if not (config.explainer.get('balance', False) or config.probe.get('balance', False)):
    return None
  task = ds.task if ds.task in ds.attribute_names else None
  return balance.balancing_weights(
      ds.labels, ds.attributes, None if task is None else ds.attribute_names.index(task))


def explainer_step(explainer, cfg, mesh) -> Callable:
  """The jitted explainer step; with fisher_every = k > 1, the regularized step on every
  k-th state.step and the plain one between (two compilations, no lax.cond). Built once
  per (explainer, cfg, mesh): the sanity run reuses the main run's compiled step."""
  return _explainer_step(explainer, ml_collections.FrozenConfigDict(cfg), mesh)


@functools.lru_cache(maxsize=16)
def _explainer_step(explainer, cfg, mesh) -> Callable:
  make = lambda reg: parallel.data_parallel_step(
      steps.make_explainer_step(explainer, cfg, regularize=reg), mesh, num_replicated=2,
      compiler_options=parallel.convnet_compiler_options())
  if float(cfg.fisher_weight) == 0:
    return make(True)
  return parallel.every_nth(int(cfg.get('fisher_every', 1)), make(True), make(False))


# ----------------------------------------------------------------------- the classifier
def builtin_split(mods: Models, params) -> ClassifierSplit:
  """The config's own classifier (models.Classifier) with trained params, as a split."""
  return classifier_split.from_module(mods.classifier, {'params': params})


def probe_images(image_size: int) -> np.ndarray:
  """A fixed batch [8, S, S, 3] in [0, 1] that fingerprints a classifier's function."""
  key = stream(0, 'classifier/fingerprint')
  return np.asarray(jax.random.uniform(key, (8, image_size, image_size, 3)))


def classifier_fingerprint(split: ClassifierSplit, image_size: int) -> str:
  """Fingerprint of a given classifier: its params and functions (given.py); its logits on
  `probe_images` are kept for the workdir's record, compared to a tolerance."""
  return given_lib.identify(split, probe_images(image_size))  # params, functions (issue 28)


def given_identity(split: ClassifierSplit, config) -> dict:
  """What downstream stages record about a given classifier (instead of a checkpoint)."""
  return {'given': classifier_fingerprint(split, config.data.image_size)}


SANITY_MODES = ('auto', 'init', 'head')
SANITY_PROBE_IMAGES = 128  # training images the sanity check's random head is scaled on


def sanity_mode(config, given: bool) -> str:
  """How the sanity check randomises the classifier (config.sanity.randomize): 'init'
  re-initialises the config's own classifier; 'head' keeps the classifier's embedding and
  puts a random linear head on it (classifier_split.random_head: needs only the functions,
  so it is the one for a given classifier). 'auto' (default): 'init' for the built-in
  classifier, 'head' for a given one."""
  mode = config.sanity.get('randomize', 'auto')
  if mode not in SANITY_MODES:
    raise errors.UserError(f'config.sanity.randomize={mode!r}: must be one of '
                           f'{", ".join(map(repr, SANITY_MODES))}')
  if mode == 'init' and given:
    raise errors.UserError("config.sanity.randomize='init' re-initialises the config's own "
                           "classifier, which a given classifier is not: use 'head' (a random "
                           "head on its embedding) or 'auto'")
  return ('head' if given else 'init') if mode == 'auto' else mode


def sanity_classifier(config, split: ClassifierSplit, train_images: np.ndarray
                      ) -> ClassifierSplit:
  """The sanity check's random-head classifier of `split`: a pure function of the seed
  (stream 'sanity/classifier'), the classifier and the first SANITY_PROBE_IMAGES training
  images (uint8 [N, H, W, 3]), on which its logits are scaled like the real head's."""
  probe = np.asarray(train_images[:SANITY_PROBE_IMAGES], np.float32) / 255.0
  return classifier_split.random_head(split, stream(config.seed, 'sanity/classifier'), probe)


def check_sanity_workdir(sdir: str, mode: str) -> None:
  """WORKDIR/sanity holds the run of one sanity_mode: a re-initialised classifier
  checkpoint ('init') or a random head's record ('head'), never the other."""
  other = {'init': os.path.join(sdir, GIVEN_FILE), 'head': os.path.join(sdir, 'classifier')}
  if os.path.exists(other[mode]):
    was = 'head' if mode == 'init' else 'init'
    raise checkpoints.CheckpointError(
        f"{sdir} holds the sanity check made with config.sanity.randomize='{was}', not "
        f"'{mode}': set it back, or move {sdir} away and rerun with --stages=sanity")


def trained_split(config, workdir: str, mesh) -> ClassifierSplit:
  """The config's classifier as trained in `workdir` (its complete checkpoint)."""
  mods = build(config)
  state, _ = load_complete(workdir, 'classifier', restore_target(config, mods, 'classifier', mesh),
                           signature(config, 'classifier'))
  return builtin_split(mods, state.params)


def resolve_classifier(config, classifier: ClassifierSplit | None, mesh
                       ) -> ClassifierSplit | None:
  """`classifier`, or the one config.classifier.source names, or None (train one); its
  params replicated on the mesh (a restored checkpoint may sit on one device)."""
  if classifier is None:
    classifier = classifier_split.load_source(config)
    if classifier is None:
      return None
  if not isinstance(classifier, ClassifierSplit):
    raise TypeError(f'classifier must be a lsei_jax.ClassifierSplit, got '
                    f'{type(classifier).__name__}')
  return dataclasses.replace(classifier, params=parallel.replicate(classifier.params, mesh))


def _given_record(workdir: str) -> dict | None:
  path = os.path.join(workdir, GIVEN_FILE)
  return json.load(open(path)) if os.path.exists(path) else None


def check_classifier_workdir(workdir: str, given: dict | None) -> None:
  """A workdir explains one classifier: the trained one or a given one, never a mix."""
  record = _given_record(workdir)
  trained = os.path.isdir(os.path.join(workdir, 'classifier'))
  if given is not None and trained:
    raise checkpoints.CheckpointError(
        f'{workdir} holds a classifier trained by the pipeline; explain a given classifier '
        f'in a new workdir')
  if given is None and record is not None:
    raise checkpoints.CheckpointError(
        f'{workdir} explains a given classifier (fingerprint {record["given"]}); pass it '
        f'again (classifier=… or --config.classifier.source=…)')
  if given is not None and record is not None:
    given_lib.check_record(workdir, record, given)  # fingerprint, then logits to a tolerance


def _record_given(workdir: str, given: dict, d: int, num_classes: int, name: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(os.path.join(workdir, GIVEN_FILE),
                      dict(given, embed_dim=d, num_classes=num_classes, cut=name,
                           **given_lib.record_fields(given)))


# ----------------------------------------------------------------------- frozen functions
@functools.lru_cache(maxsize=16)
def embed_fn(embed: Callable, mesh) -> Callable:
  """(classifier params, {'image': uint8 [b,H,W,3]}) → h [b, d] = embed(params, image)."""
  def f(params, batch):
    return embed(params, batch['image'].astype(jnp.float32) / 255.0)
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def reconstruct_fn(mods: Models, mesh) -> Callable:
  """(concept learner params, {'h': [b, d]}) → ĥ [b, d] (eval-mode code)."""
  learner = mods.learner
  return parallel.data_parallel_apply(
      lambda p, b: learner.decode(p, learner.encode(p, b['h'])), mesh)


@functools.lru_cache(maxsize=16)
def info_fn(apply: Callable, loss: str, num_samples: int, mesh) -> Callable:
  """((params, σ [d], key), {'e': [b, d], 'index': [b]}) → information per example [b, d].

  Each example's perturbations come from fold_in(key, index): the mean over examples is
  the same however the data is batched or split across devices.
  """
  def f(args, batch):
    params, sigma, key = args
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch['index'])
    return steps.per_example_fisher(lambda e: apply(params, e), batch['e'], keys, sigma,
                                    num_samples=num_samples, loss=loss, per_example=True)
  return parallel.data_parallel_apply(f, mesh)


@functools.lru_cache(maxsize=16)
def render_fn(mods: Models, mesh) -> Callable:
  """(explainer params, {'e': [b, d]}) → images uint8 [b, H, W, 3] = 255·sigmoid(g(e))."""
  def f(params, batch):
    img = jax.nn.sigmoid(mods.explainer.apply({'params': params}, batch['e']))
    return jnp.round(img * 255).astype(jnp.uint8)
  return parallel.data_parallel_apply(f, mesh)


def head_apply(split: ClassifierSplit) -> Callable:
  return split.head


@functools.lru_cache(maxsize=16)
def generator_apply(mods: Models) -> Callable:
  return lambda p, e: mods.explainer.apply({'params': p}, e)


def mean_information(apply, loss, params, e: np.ndarray, sigma, key, num_samples, batch_size,
                     mesh, desc=None) -> np.ndarray:
  """Information vector [d] averaged over the rows of e [N, d]."""
  fn = info_fn(apply, loss, num_samples, mesh)
  per = parallel.map_in_batches(fn, (params, sigma, key),
                                {'e': e, 'index': np.arange(len(e), dtype=np.int32)},
                                batch_size, mesh, desc)
  return per.mean(0)


# ----------------------------------------------------------------------- the stage graph
@dataclasses.dataclass
class Context:
  """What stage definitions read: config, modules, the train split, finished stages."""
  config: Any
  mesh: Any
  mods: Models
  data: data_lib.Dataset
  embed_dim: int
  classifier: ClassifierSplit | None = None      # set once the classifier stage is done
  states: dict = dataclasses.field(default_factory=dict)
  _cache: dict = dataclasses.field(default_factory=dict)

  def derived(self, key: str, fn: Callable[[], Any]) -> Any:
    """A frozen input computed once (from finished upstream stages) and reused."""
    if key not in self._cache:
      self._cache[key] = fn()
    return self._cache[key]

  def h_train(self) -> np.ndarray:
    """h = c1(x) [N, d] of the train images."""
    return self.derived('h', lambda: parallel.map_in_batches(
        embed_fn(self.classifier.embed, self.mesh), self.classifier.params,
        {'image': self.data.images}, self.config.eval.batch_size, self.mesh, 'embed train'))

  def balance(self, section: str) -> np.ndarray | None:
    """Sampling weights [N] of the train split when config.<section>.balance, else None."""
    if not self.config[section].get('balance', False):
      return None
    return self.derived('balance', lambda: balance_weights(self.config, self.data))

  def hhat_train(self) -> np.ndarray:
    """ĥ = decode(encode(h)) [N, d] of the train images (the concept learner's eval code)."""
    return self.derived('hhat', lambda: parallel.map_in_batches(
        reconstruct_fn(self.mods, self.mesh), self.states['dvae'].params,
        {'h': self.h_train()}, self.config.eval.batch_size, self.mesh, 'reconstruct'))


@dataclasses.dataclass(frozen=True)
class StageDef:
  """One node of the stage graph.

  upstream: stages whose final checkpoints it is trained on (recorded, checked on resume).
  section: the config section with its steps, batch_size and optimizer fields.
  template: (ctx, init key) → a fresh, unreplicated train state.
  step: ctx → the compiled data-parallel step.
  inputs: ctx → (arrays [N, …] its batches are drawn from, host transform of a batch).
  weights: ctx → sampling weights [N] of those arrays (balanced stages), or None: uniform
    shuffled epochs.
  extra: ctx → replicated extra step arguments.
  stream: the random stream's name (default: the stage name).
  """
  name: str
  upstream: tuple[str, ...]
  section: str
  template: Callable[[Context, jax.Array], Any]
  step: Callable[[Context], Callable]
  inputs: Callable[[Context], tuple[dict, Callable[[dict], dict]]]
  weights: Callable[[Context], np.ndarray | None] = lambda ctx: None
  extra: Callable[[Context], tuple] = lambda ctx: ()
  stream: str = ''

  @property
  def stream_name(self) -> str:
    return self.stream or self.name


def _float_images(batch: dict) -> dict:
  return {k: (v.astype(np.float32) / 255.0 if k == 'image' else v) for k, v in batch.items()}


def _init(module: Any, rng: jax.Array, example: Any, cfg) -> steps.TrainState:
  return steps.create_train_state(module, rng, example, steps.make_optimizer(cfg, max(cfg.steps, 1)))


def concept_state(learner, module: Any, rng: jax.Array, example: jax.Array, cfg
                  ) -> steps.TrainState:
  """A fresh train state of the concept learner (module: its Flax module; learner may be
  None): the learner's own `create_state` when it keeps more than params and optimizer
  state (the TopK SAE's steps since each latent fired)."""
  create = getattr(learner, 'create_state', None)
  if create is None:
    return _init(module, rng, example, cfg)
  return create(rng, example, steps.make_optimizer(cfg, max(cfg.steps, 1)))


def _image0(ctx: Context) -> jax.Array:
  size = ctx.config.data.image_size
  return jnp.zeros((1, size, size, 3))


def _explainer_extra(ctx: Context) -> tuple:
  """(I(c2) [d], σ [d]) at ĥ, replicated; I(c2) is constant while g trains."""
  def compute():
    cfg, hhat = ctx.config.explainer, ctx.hhat_train()
    sigma = parallel.replicate(fisher.batch_sigma(jnp.asarray(hhat), cfg.sigma_scale), ctx.mesh)
    n_info = min(cfg.info_examples, len(hhat))
    info_c2 = mean_information(head_apply(ctx.classifier), 'ce', ctx.classifier.params,
                               hhat[:n_info], sigma, stream(ctx.config.seed, 'explainer/info_c2'),
                               cfg.fisher_samples, ctx.config.eval.batch_size, ctx.mesh, 'I(c2)')
    return parallel.replicate(jnp.asarray(info_c2), ctx.mesh), sigma
  return ctx.derived('explainer_extra', compute)


def _explainer_def(name: str) -> StageDef:
  def step(ctx):
    scfg = ctx.config.explainer.copy_and_resolve_references()
    with scfg.unlocked():
      scfg.fisher_weight = signature(ctx.config, name)['explainer.fisher_weight']
    return explainer_step(ctx.mods.explainer, scfg, ctx.mesh)
  return StageDef(
      name, ('classifier', 'dvae'), 'explainer',
      template=lambda ctx, rng: _init(ctx.mods.explainer, rng, jnp.zeros((1, ctx.embed_dim)),
                                      ctx.config.explainer),
      step=step,
      inputs=lambda ctx: ({'image': ctx.data.images, 'hhat': ctx.hhat_train()}, _float_images),
      weights=lambda ctx: ctx.balance('explainer'),
      extra=_explainer_extra,
      # Both explainers draw the same initialisation and batches: Table 2's with / without
      # comparison then differs in the regularizer only.
      stream='explainer')


def _probe_inputs(ctx: Context) -> tuple[dict, Callable]:
  """Real train images and the explainer's g(ĥ) of them, each with its attributes."""
  generated = parallel.map_in_batches(render_fn(ctx.mods, ctx.mesh), ctx.states['explainer'].params,
                                      {'e': ctx.hhat_train()}, ctx.config.eval.batch_size,
                                      ctx.mesh, 'g(ĥ) train')
  ds = ctx.data
  arrays = {'image': np.concatenate([ds.images, generated]),
            'attributes': np.concatenate([ds.attributes, ds.attributes]).astype(np.float32)}
  return arrays, _float_images


def _concept_inputs(ctx: Context) -> tuple[dict, Callable]:
  """h = c1(x) of the train images, checked for the concept learner (NMF needs h ≥ 0)."""
  h = ctx.h_train()
  ctx.mods.learner.check_input(h)
  return {'h': h}, lambda b: b


GRAPH: tuple[StageDef, ...] = (
    StageDef('classifier', (), 'classifier',
             template=lambda ctx, rng: _init(ctx.mods.classifier, rng, _image0(ctx),
                                             ctx.config.classifier),
             step=lambda ctx: parallel.data_parallel_step(
                 steps.classifier_step, ctx.mesh,
                 compiler_options=parallel.convnet_compiler_options()),
             inputs=lambda ctx: ({'image': ctx.data.images, 'label': ctx.data.labels},
                                 _float_images)),
    StageDef('dvae', ('classifier',), 'dvae',
             template=lambda ctx, rng: concept_state(ctx.mods.learner, ctx.mods.dvae, rng,
                                                     jnp.zeros((1, ctx.embed_dim)),
                                                     ctx.config.dvae),
             step=lambda ctx: parallel.data_parallel_step(
                 ctx.mods.learner.make_step(ctx.config.dvae), ctx.mesh),
             inputs=_concept_inputs),
    _explainer_def('explainer'),
    _explainer_def('explainer_noreg'),
    StageDef('probe', ('classifier', 'dvae', 'explainer'), 'probe',
             template=lambda ctx, rng: _init(ctx.mods.probe, rng, _image0(ctx), ctx.config.probe),
             step=lambda ctx: parallel.data_parallel_step(
                 steps.probe_step, ctx.mesh,
                 compiler_options=parallel.convnet_compiler_options()),
             inputs=_probe_inputs,
             # Real images and g(ĥ) of them: the train split's weights twice.
             weights=lambda ctx: (None if ctx.balance('probe') is None
                                  else np.concatenate([ctx.balance('probe')] * 2))),
)
STAGE_DEFS = {s.name: s for s in GRAPH}


def upstream_closure(names: Sequence[str]) -> set[str]:
  """Every stage the named stages are trained on, directly or not."""
  out, todo = set(), list(names)
  while todo:
    for u in STAGE_DEFS[todo.pop()].upstream:
      if u not in out:
        out.add(u)
        todo.append(u)
  return out


def stage_rngs(config, stage: str) -> tuple[jax.Array, jax.Array]:
  """(init key, step key) of a stage, from its named stream."""
  init_key, step_key = jax.random.split(stream(config.seed, STAGE_DEFS[stage].stream_name))
  return init_key, step_key


def _context(config, mods: Models, mesh, data=None, embed_dim=None) -> Context:
  d = config.model.classifier.hidden_dim if embed_dim is None else embed_dim
  return Context(config, mesh, mods, data, d)


def _embed_dim(mods: Models, embed_dim: int | None) -> int:
  return mods.dvae.hidden_dim if embed_dim is None else embed_dim


def template_state(config, mods: Models, stage: str, mesh, rng: jax.Array | None = None,
                   embed_dim: int | None = None):
  """A fresh, replicated train state of `stage` (its initial state when rng is the init key),
  initialised eagerly: `initial_state` computes the same values under jit."""
  rng = stage_rngs(config, stage)[0] if rng is None else rng
  ctx = _context(config, mods, mesh, None, _embed_dim(mods, embed_dim))
  return parallel.replicate(STAGE_DEFS[stage].template(ctx, rng), mesh)


def restore_target(config, mods: Models, stage: str, mesh, embed_dim: int | None = None):
  """The structure, shapes, dtypes and replicated shardings of `stage`'s train state
  (jax.ShapeDtypeStruct leaves), without computing it: what a checkpoint restores into.

  `template_state` would initialise the modules eagerly, one small XLA compilation per
  distinct parameter shape and op (about 8 s of a warm evaluation, none of it cached); this
  is the shape of `initial_state`'s jitted template, once per (config, models, stage, mesh,
  d)."""
  return _restore_target(ml_collections.FrozenConfigDict(config), mods, stage, mesh,
                         _embed_dim(mods, embed_dim))


@functools.lru_cache(maxsize=64)
def _restore_target(config, mods: Models, stage: str, mesh, d: int):
  shapes = jax.eval_shape(_jitted_template(config, mods, stage, mesh, d),
                          stage_rngs(config, stage)[0])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


def random_classifier_state(config, mods: Models, mesh):
  """The sanity check's untrained classifier: a pure function of the seed (its named stream).

  Evaluation recomputes it to check the stored one."""
  return initial_state(config, mods, 'classifier', mesh, stream(config.seed, 'sanity/classifier'))


def initial_state(config, mods: Models, stage: str, mesh, rng: jax.Array,
                  embed_dim: int | None = None):
  """`template_state` under jit: the same values (the initialisers are jitted functions
  either way), one compilation, persistently cached, instead of an eager one per
  parameter shape and op (seconds per stage on 2 CPU cores, never cached); compiled at a
  lower LLVM optimisation level (`compile_cache.init_compiler_options`), bitwise the same."""
  init = _jitted_template(ml_collections.FrozenConfigDict(config), mods, stage, mesh,
                          _embed_dim(mods, embed_dim))
  return parallel.replicate(init(rng), mesh)


@functools.lru_cache(maxsize=32)
def _jitted_template(config, mods: Models, stage: str, mesh, d: int) -> Callable:
  ctx = _context(config, mods, mesh, None, d)
  return jax.jit(lambda rng: STAGE_DEFS[stage].template(ctx, rng),
                 compiler_options=compile_cache.init_compiler_options() or None)


def link_of(stage: str, identities: dict) -> dict:
  """{upstream: identity} that `stage` records / is checked against."""
  return {u: identities[u] for u in STAGE_DEFS[stage].upstream if u in identities}


def check_link(stage: str, meta: dict, link: dict, workdir: str) -> None:
  recorded = meta.get('upstream', {})
  was, now = recorded.get('classifier'), link.get('classifier')
  if now is not None and was != now and ('given' in now or 'given' in (was or {})):
    raise checkpoints.CheckpointError(
        f'{stage} checkpoint in {workdir}/{stage} was trained on classifier {was}, but the '
        f'classifier now is {now}: give the original classifier, or use a new workdir')
  checkpoints.check_upstream(stage, f'{workdir}/{stage}', recorded, link)


# ----------------------------------------------------------------------- training
def train(config, workdir: str, stages: Sequence[str] | None = None, *,
          classifier: ClassifierSplit | None = None, mesh=None,
          hooks: Sequence[Callable] = (), random_classifier: bool = False,
          adopt: dict[str, tuple[Any, str]] | None = None) -> dict[str, dict]:
  """Trains the selected stages (default: every stage of the config) in graph order.

  Stages not selected but needed upstream must already be complete in `workdir`.
  classifier: a `ClassifierSplit` to explain instead of training config.model.classifier
  (default: the one config.classifier.source names, if any); it is never trained, its
  fingerprint is recorded (WORKDIR/classifier.json and each downstream checkpoint) so a
  later run with other weights is refused.
  random_classifier=True stores an untrained, randomly initialised classifier instead of
  training one (the model-randomisation sanity check trains the rest on top of it).
  adopt: {stage: (final state, source)} for stages whose training here would reproduce a
  state trained in `source` bit for bit (same inputs, seed and config): it is stored as the
  stage's complete checkpoint instead (`trainer.adopt_stage`; the head-mode sanity run's
  concept learner).
  Returns {stage: final checkpoint meta} for every stage trained or loaded (a given
  classifier's entry is its identity {'given': fingerprint}).
  """
  compile_cache.enable()  # library use gets the cache too, not only the CLI
  mesh = parallel.make_mesh() if mesh is None else mesh
  with errors.as_user_errors():
    validate_config(config, mesh)
  validate.check_config(config)
  check_workdir(workdir)
  classifier = resolve_classifier(config, classifier, mesh)
  with workdir_lib.lock(workdir):
    return _train(config, workdir, stages, classifier=classifier, mesh=mesh, hooks=hooks,
                  random_classifier=random_classifier, adopt=adopt)


def _train(config, workdir, stages, *, classifier, mesh, hooks, random_classifier, adopt=None
           ) -> dict[str, dict]:
  adopt = adopt or {}   # {stage: (final state, where it was trained)}: stored, not retrained
  wanted = stage_names(config) if not stages else tuple(stages)
  unknown = [s for s in wanted if s not in STAGES + ('sanity',)]
  if unknown:
    raise errors.UserError(f'unknown stage(s) {unknown}; known: '
                           f'{", ".join(STAGES + ("sanity",))}')
  if 'sanity' in wanted:
    sanity_mode(config, classifier is not None)  # a bad choice fails before any training
    rest = tuple(s for s in wanted if s != 'sanity')
    metas = train(config, workdir, rest, classifier=classifier, mesh=mesh,
                  hooks=hooks) if rest else {}
    sanity = train_sanity(config, workdir, classifier=classifier, mesh=mesh, hooks=hooks)
    return dict(metas, **{f'sanity/{k}': v for k, v in sanity.items()})
  ds = data_lib.load(config.data, 'train')
  size = config.data.image_size
  if classifier is not None:
    d, num_classes = classifier.dims((size, size, 3))
    classifier.check_cut(jnp.asarray(ds.images[:8], jnp.float32) / 255.0)
    classifier_split.check_independent_rows(classifier, ds.images[:8].astype(np.float32) / 255)
    given = given_identity(classifier, config)
    check_classifier_workdir(workdir, given)
  else:
    d, num_classes = config.model.classifier.hidden_dim, config.model.classifier.num_classes
    given = None
    check_classifier_workdir(workdir, None)
  validate.check_data(ds, config, 'train', None if given is None else num_classes)
  mods = build(config, len(ds.attribute_names), d)
  ctx = Context(config, mesh, mods, ds, d)
  logging.info('train split: %d images, task %r, %d classes, d=%d, %d devices', len(ds),
               config.data.task, num_classes, d, mesh.devices.size)
  metas: dict[str, dict] = {}
  identities: dict[str, dict] = {}
  needed = set(wanted) | upstream_closure([s for s in wanted if s in STAGE_DEFS])
  pi, pc = jax.process_index(), jax.process_count()

  for sd in GRAPH:
    if sd.name not in needed:
      continue
    link = link_of(sd.name, identities)
    if sd.name == 'classifier' and given is not None:
      ctx.classifier = classifier
      metas['classifier'] = identities['classifier'] = given
      _record_given(workdir, given, d, num_classes, classifier.name)
      continue
    if sd.name == 'classifier' and random_classifier:
      state, meta = save_untrained(workdir, 'classifier',
                                   random_classifier_state(config, mods, mesh),
                                   signature(config, 'classifier'))
    elif sd.name in wanted and sd.name in adopt:   # trained already on the same inputs
      trained, source = adopt[sd.name]
      state, meta = adopt_stage(
          Stage(sd.name, config[sd.section].steps, restore_target(config, mods, sd.name, mesh, d),
                step=None, batch_fn=None, rng=None, upstream=link,
                signature=signature(config, sd.name)),
          workdir, trained, source, hooks=hooks)
    elif sd.name in wanted:
      cfg = config[sd.section]
      arrays, prepare = sd.inputs(ctx)
      n = len(next(iter(arrays.values())))
      order_seed = stream_seed(config.seed, f'{sd.stream_name}/batches')
      weights = sd.weights(ctx)
      if weights is None:
        indices = lambda step, n=n, bs=cfg.batch_size: data_lib.batch_indices(
            n, bs, step, order_seed, pi, pc)
      else:   # balanced stages: examples drawn ∝ weights (balance.py)
        indices = lambda step, w=weights, bs=cfg.batch_size: balance.weighted_batch_indices(
            w, bs, step, order_seed, pi, pc)
      batch_fn = (lambda arrays, prepare, indices: lambda step: prepare(
          {k: v[indices(step)] for k, v in arrays.items()}))(arrays, prepare, indices)
      template = initial_state(config, mods, sd.name, mesh, stage_rngs(config, sd.name)[0], d)
      state, meta = run_stage(
          Stage(sd.name, cfg.steps, template, sd.step(ctx), batch_fn,
                stage_rngs(config, sd.name)[1], extra=sd.extra(ctx), upstream=link,
                signature=signature(config, sd.name)),
          workdir, mesh, save_every=config.checkpoint.every_steps,
          max_to_keep=config.checkpoint.max_to_keep, log_every=config.log_every, hooks=hooks)
    else:
      state, meta = load_complete(workdir, sd.name, restore_target(config, mods, sd.name, mesh, d),
                                  signature(config, sd.name))
      check_link(sd.name, meta, link, workdir)
    ctx.states[sd.name] = state
    identities[sd.name] = checkpoints.identity(meta)
    metas[sd.name] = meta
    if sd.name == 'classifier':
      ctx.classifier = builtin_split(mods, state.params)
  return metas


def train_sanity(config, workdir: str, *, classifier: ClassifierSplit | None = None, mesh=None,
                 hooks: Sequence[Callable] = ()) -> dict[str, dict]:
  """Model randomisation: DVAE and explainer trained over a randomised classifier, in
  WORKDIR/sanity, to check that explanations depend on what the classifier learned.
  sanity_mode 'init': the config's classifier re-initialised (stored untrained); 'head':
  the classifier's embedding with a random head (`sanity_classifier`, recorded in
  WORKDIR/sanity/classifier.json like any given classifier, so later runs are checked)."""
  named = [lambda stage, step, state, h=h: h(f'sanity/{stage}', step, state) for h in hooks]
  sdir = os.path.join(workdir, 'sanity')
  stages = ('classifier', 'dvae', 'explainer')
  mesh = parallel.make_mesh() if mesh is None else mesh
  mode = sanity_mode(config, classifier is not None)
  check_sanity_workdir(sdir, mode)
  if mode == 'init':
    return train(config, sdir, stages, mesh=mesh, hooks=named, random_classifier=True)
  base = classifier if classifier is not None else trained_split(config, workdir, mesh)
  rand = sanity_classifier(config, base, data_lib.load(config.data, 'train').images)
  # The random head keeps the embedding, so the concept learner would be trained again on
  # the same h, batches and keys: the run's own one is stored instead (bitwise the same).
  learner = _complete_concept_learner(config, workdir, base, classifier is not None, mesh)
  return train(config, sdir, stages, classifier=rand, mesh=mesh, hooks=named,
               adopt={'dvae': (learner, workdir)} if learner is not None else None)


def _complete_concept_learner(config, workdir: str, split: ClassifierSplit, given: bool, mesh):
  """The final state of WORKDIR's concept learner (its 'dvae' stage) when it is complete and
  was trained on `split`, WORKDIR's classifier (given, or its checkpoint); else None."""
  if not os.path.isdir(os.path.join(workdir, 'dvae')):
    return None
  size = config.data.image_size
  d, _ = split.dims((size, size, 3))
  try:
    if given:
      link = {'classifier': given_identity(split, config)}
    else:
      _, cmeta = load_complete(workdir, 'classifier',
                               restore_target(config, build(config), 'classifier', mesh))
      link = {'classifier': checkpoints.identity(cmeta)}
    state, meta = load_complete(workdir, 'dvae',
                                restore_target(config, build(config, None, d), 'dvae', mesh, d),
                                signature(config, 'dvae'))
  except checkpoints.CheckpointError:
    return None
  return state if meta.get('upstream') == link else None
