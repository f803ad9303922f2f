"""The three stages wired together: classifier → DVAE → explainer(s), each resumable.

Upstream stages are frozen and deterministic in eval mode, so h = c1(x) (for the DVAE)
and ĥ = d(1[l(h) > 0]) (for the explainer) are computed once per stage, not every step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsei_jax import data as data_lib
from lsei_jax import checkpoints, models, parallel, steps
from lsei_jax.trainer import Stage, load_complete, run_stage

STAGES = ('classifier', 'dvae', 'explainer', 'explainer_noreg')
_STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}


def stage_names(config) -> tuple[str, ...]:
  """The stages this config trains, in order."""
  names = STAGES[:3]
  return names + ('explainer_noreg',) if config.explainer.train_noreg else names


def validate_config(config, mesh) -> None:
  """Clear errors for values no stage can run with (before anything is written)."""
  for stage in ('classifier', 'dvae', 'explainer'):
    c = config[stage]
    for field in ('steps', 'batch_size', 'learning_rate'):
      if not c[field] > 0:
        raise ValueError(f'config.{stage}.{field} must be positive, got {c[field]}')
    parallel.check_batch(c.batch_size, mesh, f'config.{stage}.batch_size')
  if not config.model.dvae.latent_dim > 0:
    raise ValueError(f'config.model.dvae.latent_dim must be positive, got '
                     f'{config.model.dvae.latent_dim}')
  if config.explainer.fisher_weight < 0:
    raise ValueError('config.explainer.fisher_weight must be ≥ 0')
  parallel.check_batch(config.explainer.fisher_batch, mesh, 'config.explainer.fisher_batch')
  parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  if config.explainer.fisher_batch > config.explainer.batch_size:
    raise ValueError('config.explainer.fisher_batch must not exceed config.explainer.batch_size')


@dataclasses.dataclass
class Models:
  classifier: models.Classifier
  dvae: models.DVAE
  explainer: models.Explainer


def signature(config, stage: str) -> dict:
  """Fields that must not change while a workdir holds checkpoints of `stage`."""
  base = {'image_size': config.data.image_size, 'task': config.data.task,
          **{f'model.classifier.{k}': v for k, v in config.model.classifier.items()}}
  if stage == 'classifier':
    return base
  if stage == 'dvae':
    return {f'model.dvae.{k}': v for k, v in config.model.dvae.items()}
  weight = config.explainer.fisher_weight if stage == 'explainer' else 0.0
  return {'image_size': config.data.image_size, 'fisher_weight': weight,
          **{f'model.explainer.{k}': v for k, v in config.model.explainer.items()}}


def stage_rngs(config, stage: str) -> tuple[jax.Array, jax.Array]:
  """(init key, step key) of a stage: fixed by the seed, independent across stages."""
  key = jax.random.fold_in(jax.random.key(config.seed), _STAGE_INDEX[stage])
  init_key, step_key = jax.random.split(key)
  return init_key, step_key


def template_state(config, mods: Models, stage: str, mesh, rng: jax.Array | None = None):
  """A fresh, replicated train state of `stage` (its initial state when rng is the init key)."""
  rng = stage_rngs(config, stage)[0] if rng is None else rng
  cfg = config['explainer' if stage.startswith('explainer') else stage]
  tx = steps.make_optimizer(cfg, cfg.steps)
  size, d = config.data.image_size, config.model.classifier.hidden_dim
  if stage == 'classifier':
    state = steps.create_train_state(mods.classifier, rng, jnp.zeros((1, size, size, 3)), tx)
  elif stage == 'dvae':
    state = steps.create_train_state(mods.dvae, rng, jnp.zeros((1, d)), tx)
  else:
    state = steps.create_train_state(mods.explainer, rng, jnp.zeros((1, d)), tx)
  return parallel.replicate(state, mesh)


# ----------------------------------------------------------------------- frozen functions
def embed_fn(mods: Models, mesh) -> Callable:
  """(classifier params, {'image': uint8 [b,H,W,3]}) → h [b, d]."""
  def f(params, batch):
    x = batch['image'].astype(jnp.float32) / 255.0
    return mods.classifier.apply({'params': params}, x, method='embed')
  return parallel.data_parallel_apply(f, mesh)


def reconstruct_fn(mods: Models, mesh) -> Callable:
  """(dvae params, {'h': [b, d]}) → ĥ [b, d] (eval-mode code)."""
  return parallel.data_parallel_apply(
      lambda p, b: steps.encode_decode(mods.dvae, p, b['h'])[1], mesh)


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


def head_apply(mods: Models) -> Callable:
  return lambda p, e: mods.classifier.apply({'params': p}, e, method='head')


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
def _batch_fn(arrays_fn: Callable[[np.ndarray], dict], n: int, batch_size: int, seed: int):
  pi, pc = jax.process_index(), jax.process_count()
  return lambda step: arrays_fn(data_lib.batch_indices(n, batch_size, step, seed, pi, pc))


def _run(config, workdir, mesh, stage: Stage, hooks):
  return run_stage(stage, workdir, mesh, save_every=config.checkpoint.every_steps,
                   max_to_keep=config.checkpoint.max_to_keep, log_every=config.log_every,
                   hooks=hooks)


def train(config, workdir: str, stages: Sequence[str] | None = None, *, mesh=None,
          hooks: Sequence[Callable] = ()) -> dict[str, dict]:
  """Trains the selected stages (default: every stage of the config) in order.

  Stages not selected but needed upstream must already be complete in `workdir`.
  Returns {stage: final checkpoint meta} for every stage touched.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  validate_config(config, mesh)
  wanted = stage_names(config) if not stages else tuple(stages)
  unknown = [s for s in wanted if s not in STAGES]
  if unknown:
    raise ValueError(f'unknown stage(s) {unknown}; known: {", ".join(STAGES)}')
  mods = Models(*steps.build_models(config))
  ds = data_lib.load(config.data, 'train')
  logging.info('train split: %d images, task %r, %d devices', len(ds), config.data.task,
               mesh.devices.size)
  metas: dict[str, dict] = {}
  last = max(_STAGE_INDEX[s] for s in wanted)

  # -------- stage 1: classifier
  if 'classifier' in wanted:
    cfg = config.classifier
    init_key, step_key = stage_rngs(config, 'classifier')
    stage = Stage(
        'classifier', cfg.steps, template_state(config, mods, 'classifier', mesh, init_key),
        parallel.data_parallel_step(steps.classifier_step, mesh),
        _batch_fn(lambda i: {'image': ds.images[i].astype(np.float32) / 255.0,
                             'label': ds.labels[i]}, len(ds), cfg.batch_size, config.seed),
        step_key, signature=signature(config, 'classifier'))
    clf_state, metas['classifier'] = _run(config, workdir, mesh, stage, hooks)
  else:
    clf_state, metas['classifier'] = load_complete(
        workdir, 'classifier', template_state(config, mods, 'classifier', mesh),
        signature(config, 'classifier'))
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
    stage = Stage(
        'dvae', cfg.steps, template_state(config, mods, 'dvae', mesh, init_key),
        parallel.data_parallel_step(steps.make_dvae_step(mods.dvae, cfg), mesh),
        _batch_fn(lambda i: {'h': h_train[i]}, len(ds), cfg.batch_size, config.seed + 1),
        step_key, upstream=link, signature=signature(config, 'dvae'))
    dvae_state, metas['dvae'] = _run(config, workdir, mesh, stage, hooks)
  else:
    dvae_state, metas['dvae'] = load_complete(workdir, 'dvae',
                                              template_state(config, mods, 'dvae', mesh),
                                              signature(config, 'dvae'))
    _check_link('dvae', metas['dvae'], link, workdir)
  if last < 2:
    return metas
  link = dict(link, dvae=checkpoints.identity(metas['dvae']))

  # -------- stage 3: explainer(s) on ĥ = d(1[l(h) > 0]), computed once
  hhat = parallel.map_in_batches(reconstruct_fn(mods, mesh), dvae_state.params,
                                 {'h': h_train}, config.eval.batch_size, mesh, 'reconstruct')
  cfg = config.explainer
  sigma = parallel.replicate(
      jnp.asarray(cfg.sigma_scale * hhat.std(0, ddof=1), jnp.float32), mesh)
  n_info = min(cfg.info_examples, len(hhat))
  info_c2 = mean_information(head_apply(mods), 'ce', clf_state.params, hhat[:n_info],
                             sigma, jax.random.key(config.seed + 17), cfg.fisher_samples,
                             config.eval.batch_size, mesh, 'I(c2)')
  info_c2 = parallel.replicate(jnp.asarray(info_c2), mesh)
  for name in ('explainer', 'explainer_noreg'):
    if name not in wanted:
      continue
    weight = cfg.fisher_weight if name == 'explainer' else 0.0
    scfg = cfg.copy_and_resolve_references()
    with scfg.unlocked():
      scfg.fisher_weight = weight
    init_key, step_key = stage_rngs(config, name)
    stage = Stage(
        name, cfg.steps, template_state(config, mods, name, mesh, init_key),
        parallel.data_parallel_step(steps.make_explainer_step(mods.explainer, scfg), mesh,
                                    num_replicated=2),
        _batch_fn(lambda i: {'image': ds.images[i].astype(np.float32) / 255.0,
                             'hhat': hhat[i]}, len(ds), cfg.batch_size, config.seed + 2),
        step_key, extra=(info_c2, sigma), upstream=link,
        signature=signature(config, name))
    _, metas[name] = _run(config, workdir, mesh, stage, hooks)
  return metas


def _check_link(stage: str, meta: dict, link: dict, workdir: str) -> None:
  checkpoints.check_upstream(stage, f'{workdir}/{stage}', meta.get('upstream', {}), link)
