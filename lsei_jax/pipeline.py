"""The three stages wired together: classifier → DVAE → explainer(s), each resumable.

Upstream stages are frozen and deterministic in eval mode, so h = c1(x) (for the DVAE)
and ĥ = d(1[l(h) > 0]) (for the explainer) are computed once per stage, not every step.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsei_jax import data as data_lib
from lsei_jax import balance, checkpoints, compile_cache, fisher, models, parallel, steps
from lsei_jax import errors, validate
from lsei_jax import signature as signature_lib
from lsei_jax import workdir as workdir_lib
from lsei_jax.workdir import check_workdir
from lsei_jax.trainer import Stage, load_complete, run_stage, save_untrained

STAGES = ('classifier', 'dvae', 'explainer', 'explainer_noreg', 'probe')
_STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}


def stage_names(config) -> tuple[str, ...]:
  """The stages this config trains, in order."""
  names = STAGES[:3] + (('explainer_noreg',) if config.explainer.train_noreg else ())
  return names + ('probe',) + (('sanity',) if config.sanity.enabled else ())


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
  if config.explainer.fisher_weight < 0:
    raise ValueError('config.explainer.fisher_weight must be ≥ 0')
  parallel.check_batch(config.explainer.fisher_batch, mesh, 'config.explainer.fisher_batch')
  parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  if config.explainer.fisher_batch > config.explainer.batch_size:
    raise ValueError('config.explainer.fisher_batch must not exceed config.explainer.batch_size')


# Frozen, so hashable by value: jitted functions are built once per (Models, mesh).
@dataclasses.dataclass(frozen=True)
class Models:
  classifier: models.Classifier
  dvae: models.DVAE
  explainer: models.Explainer
  probe: models.Classifier | None = None


def build(config, num_attributes: int | None = None) -> Models:
  """The stage modules; the attribute probe needs the dataset's attribute count."""
  probe = None
  if num_attributes is not None:
    pc = config.model.probe
    probe = models.Classifier(channels=tuple(pc.channels), strides=tuple(pc.strides),
                              hidden_dim=pc.hidden_dim, num_classes=num_attributes,
                              dropout=0.0)
  return Models(*steps.build_models(config), probe)


def signature(config, stage: str) -> dict:
  """Fields that must not change while a workdir holds checkpoints of `stage`."""
  return signature_lib.stage_signature(config, stage)


def balance_weights(config, ds) -> np.ndarray | None:
  """Per-example sampling weights [N] of the train split for the stages with balance=True
  (explainer, probe): the label decorrelated from every attribute (balance.py)."""
  if not (config.explainer.get('balance', False) or config.probe.get('balance', False)):
    return None
  task = ds.task if ds.task in ds.attribute_names else None
  return balance.balancing_weights(
      ds.labels, ds.attributes, None if task is None else ds.attribute_names.index(task))


def stage_rngs(config, stage: str) -> tuple[jax.Array, jax.Array]:
  """(init key, step key) of a stage: fixed by the seed, independent across stages."""
  key = jax.random.fold_in(jax.random.key(config.seed), _STAGE_INDEX[stage])
  init_key, step_key = jax.random.split(key)
  return init_key, step_key


def template_state(config, mods: Models, stage: str, mesh, rng: jax.Array | None = None):
  """A fresh, replicated train state of `stage` (its initial state when rng is the init key)."""
  rng = stage_rngs(config, stage)[0] if rng is None else rng
  cfg = config['explainer' if stage.startswith('explainer') else stage]
  tx = steps.make_optimizer(cfg, max(cfg.steps, 1))
  size, d = config.data.image_size, config.model.classifier.hidden_dim
  if stage == 'classifier':
    state = steps.create_train_state(mods.classifier, rng, jnp.zeros((1, size, size, 3)), tx)
  elif stage == 'probe':
    state = steps.create_train_state(mods.probe, rng, jnp.zeros((1, size, size, 3)), tx)
  elif stage == 'dvae':
    state = steps.create_train_state(mods.dvae, rng, jnp.zeros((1, d)), tx)
  else:
    state = steps.create_train_state(mods.explainer, rng, jnp.zeros((1, d)), tx)
  return parallel.replicate(state, mesh)


def random_classifier_state(config, mods: Models, mesh):
  """The sanity check's untrained classifier: a pure function of the seed and seed_offset."""
  key = jax.random.fold_in(jax.random.key(config.seed), config.sanity.seed_offset)
  return template_state(config, mods, 'classifier', mesh, key)


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


# ----------------------------------------------------------------------- frozen functions
@functools.lru_cache(maxsize=16)
def embed_fn(mods: Models, mesh) -> Callable:
  """(classifier params, {'image': uint8 [b,H,W,3]}) → h [b, d]."""
  def f(params, batch):
    x = batch['image'].astype(jnp.float32) / 255.0
    return mods.classifier.apply({'params': params}, x, method='embed')
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def reconstruct_fn(mods: Models, mesh) -> Callable:
  """(dvae params, {'h': [b, d]}) → ĥ [b, d] (eval-mode code)."""
  return parallel.data_parallel_apply(
      lambda p, b: steps.encode_decode(mods.dvae, p, b['h'])[1], mesh)


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


@functools.lru_cache(maxsize=16)
def head_apply(mods: Models) -> Callable:
  return lambda p, e: mods.classifier.apply({'params': p}, e, method='head')


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


# ----------------------------------------------------------------------- training
def train(config, workdir: str, stages: Sequence[str] | None = None, *, mesh=None,
          hooks: Sequence[Callable] = (), random_classifier: bool = False
          ) -> dict[str, dict]:
  """Trains the selected stages (default: every stage of the config) in order.

  Stages not selected but needed upstream must already be complete in `workdir`.
  random_classifier=True stores an untrained, randomly initialised classifier instead of
  training one (the model-randomisation sanity check trains the rest on top of it).
  Returns {stage: final checkpoint meta} for every stage touched.
  """
  compile_cache.enable()  # library use gets the cache too, not only the CLI
  mesh = parallel.make_mesh() if mesh is None else mesh
  with errors.as_user_errors():
    validate_config(config, mesh)
  validate.check_config(config)
  check_workdir(workdir)
  with workdir_lib.lock(workdir):
    return _train(config, workdir, stages, mesh=mesh, hooks=hooks,
                  random_classifier=random_classifier)


def _train(config, workdir, stages, *, mesh, hooks, random_classifier) -> dict[str, dict]:
  wanted = stage_names(config) if not stages else tuple(stages)
  unknown = [s for s in wanted if s not in STAGES + ('sanity',)]
  if unknown:
    raise errors.UserError(f'unknown stage(s) {unknown}; known: {", ".join(STAGES + ("sanity",))}')
  if 'sanity' in wanted:
    rest = tuple(s for s in wanted if s != 'sanity')
    metas = train(config, workdir, rest, mesh=mesh, hooks=hooks) if rest else {}
    sanity = train_sanity(config, workdir, mesh=mesh, hooks=hooks)
    return dict(metas, **{f'sanity/{k}': v for k, v in sanity.items()})
  ds = data_lib.load(config.data, 'train')
  validate.check_data(ds, config, 'train')
  mods = build(config, len(ds.attribute_names))
  logging.info('train split: %d images, task %r, %d devices', len(ds), config.data.task,
               mesh.devices.size)
  metas: dict[str, dict] = {}
  last = max(_STAGE_INDEX[s] for s in wanted)
  run = lambda stage: run_stage(stage, workdir, mesh, save_every=config.checkpoint.every_steps,
                                max_to_keep=config.checkpoint.max_to_keep,
                                log_every=config.log_every, hooks=hooks)

  def complete(name):
    state, metas[name] = load_complete(workdir, name, template_state(config, mods, name, mesh),
                                       signature(config, name))
    return state

  def batches(arrays_fn, n, batch_size, offset, weights=None):
    pi, pc = jax.process_index(), jax.process_count()
    if weights is not None:   # balanced stages: examples drawn ∝ weights (balance.py)
      return lambda step: arrays_fn(balance.weighted_batch_indices(
          weights, batch_size, step, config.seed + offset, pi, pc))
    return lambda step: arrays_fn(data_lib.batch_indices(n, batch_size, step,
                                                         config.seed + offset, pi, pc))

  weights = balance_weights(config, ds)

  images = lambda i: ds.images[i].astype(np.float32) / 255.0

  # -------- stage 1: classifier (or a random one, for the sanity check)
  if random_classifier:
    clf_state, metas['classifier'] = save_untrained(
        workdir, 'classifier', random_classifier_state(config, mods, mesh),
        signature(config, 'classifier'))
  elif 'classifier' in wanted:
    cfg = config.classifier
    init_key, step_key = stage_rngs(config, 'classifier')
    clf_state, metas['classifier'] = run(Stage(
        'classifier', cfg.steps, template_state(config, mods, 'classifier', mesh, init_key),
        parallel.data_parallel_step(steps.classifier_step, mesh,
                                    compiler_options=parallel.convnet_compiler_options()),
        batches(lambda i: {'image': images(i), 'label': ds.labels[i]}, len(ds),
                cfg.batch_size, 0),
        step_key, signature=signature(config, 'classifier')))
  else:
    clf_state = complete('classifier')
  if last < 1:
    return metas
  link = {'classifier': checkpoints.identity(metas['classifier'])}

  # -------- stage 2: DVAE on h = c1(x), computed once
  h_train = parallel.map_in_batches(embed_fn(mods, mesh), clf_state.params,
                                    {'image': ds.images}, config.eval.batch_size, mesh,
                                    'embed train')
  if 'dvae' in wanted:
    cfg = config.dvae
    init_key, step_key = stage_rngs(config, 'dvae')
    dvae_state, metas['dvae'] = run(Stage(
        'dvae', cfg.steps, template_state(config, mods, 'dvae', mesh, init_key),
        parallel.data_parallel_step(steps.make_dvae_step(mods.dvae, cfg), mesh),
        batches(lambda i: {'h': h_train[i]}, len(ds), cfg.batch_size, 1),
        step_key, upstream=link, signature=signature(config, 'dvae')))
  else:
    dvae_state = complete('dvae')
    _check_link('dvae', metas['dvae'], link, workdir)
  if last < 2:
    return metas
  link = dict(link, dvae=checkpoints.identity(metas['dvae']))

  # -------- stage 3: explainer(s) on ĥ = d(1[l(h) > 0]), computed once
  hhat = parallel.map_in_batches(reconstruct_fn(mods, mesh), dvae_state.params,
                                 {'h': h_train}, config.eval.batch_size, mesh, 'reconstruct')
  explainers = [n for n in ('explainer', 'explainer_noreg') if n in wanted]
  if explainers:
    cfg = config.explainer
    sigma = parallel.replicate(fisher.batch_sigma(jnp.asarray(hhat), cfg.sigma_scale), mesh)
    n_info = min(cfg.info_examples, len(hhat))
    info_c2 = mean_information(head_apply(mods), 'ce', clf_state.params, hhat[:n_info],
                               sigma, jax.random.key(config.seed + 17), cfg.fisher_samples,
                               config.eval.batch_size, mesh, 'I(c2)')
    info_c2 = parallel.replicate(jnp.asarray(info_c2), mesh)
  g_state = None
  for name in explainers:
    scfg = cfg.copy_and_resolve_references()
    with scfg.unlocked():
      scfg.fisher_weight = signature(config, name)['explainer.fisher_weight']
    init_key, step_key = stage_rngs(config, name)
    state, metas[name] = run(Stage(
        name, cfg.steps, template_state(config, mods, name, mesh, init_key),
        explainer_step(mods.explainer, scfg, mesh),
        batches(lambda i: {'image': images(i), 'hhat': hhat[i]}, len(ds), cfg.batch_size, 2,
                weights if cfg.get('balance', False) else None),
        step_key, extra=(info_c2, sigma), upstream=link, signature=signature(config, name)))
    g_state = state if name == 'explainer' else g_state
  if 'probe' not in wanted:
    return metas

  # -------- attribute probes, on real images and the explainer's g(ĥ) of them
  if g_state is None:
    g_state = complete('explainer')
    _check_link('explainer', metas['explainer'], link, workdir)
  generated = parallel.map_in_batches(render_fn(mods, mesh), g_state.params, {'e': hhat},
                                      config.eval.batch_size, mesh, 'g(ĥ) train')
  probe_images = np.concatenate([ds.images, generated])
  probe_attrs = np.concatenate([ds.attributes, ds.attributes]).astype(np.float32)
  cfg = config.probe
  init_key, step_key = stage_rngs(config, 'probe')
  _, metas['probe'] = run(Stage(
      'probe', cfg.steps, template_state(config, mods, 'probe', mesh, init_key),
      parallel.data_parallel_step(steps.probe_step, mesh,
                                  compiler_options=parallel.convnet_compiler_options()),
      batches(lambda i: {'image': probe_images[i].astype(np.float32) / 255.0,
                         'attributes': probe_attrs[i]}, len(probe_images), cfg.batch_size, 3,
              np.concatenate([weights, weights]) if cfg.get('balance', False) else None),
      step_key, upstream=dict(link, explainer=checkpoints.identity(metas['explainer'])),
      signature=signature(config, 'probe')))
  return metas


def train_sanity(config, workdir: str, *, mesh=None, hooks: Sequence[Callable] = ()
                 ) -> dict[str, dict]:
  """Model randomisation: DVAE and explainer trained over a randomly initialised classifier,
  in WORKDIR/sanity, to check that explanations depend on what the classifier learned."""
  named = [lambda stage, step, state, h=h: h(f'sanity/{stage}', step, state) for h in hooks]
  return train(config, os.path.join(workdir, 'sanity'), ('classifier', 'dvae', 'explainer'),
               mesh=mesh, hooks=named, random_classifier=True)


def _check_link(stage: str, meta: dict, link: dict, workdir: str) -> None:
  checkpoints.check_upstream(stage, f'{workdir}/{stage}', meta.get('upstream', {}), link)
