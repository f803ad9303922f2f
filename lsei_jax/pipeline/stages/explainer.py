"""The explainer g: ĥ → image, trained with the Fisher regularizer (Eq. 6) and, for Table 2's
comparison, without it (λ = 0, `explainer_noreg`); its evaluators: Table 2 (cosine of I(g)
and I(c2) at ĥ) and the figure rows g(ĥ), g(ĥ')."""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from lsei_jax import fisher
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context, Node, concept_signature
from lsei_jax.pipeline.stages import host_batch, init_state, on_float_images
from lsei_jax.pipeline.stages.concepts import hhat_train
from lsei_jax.training import balance, parallel, steps
from lsei_jax.training.signature import UNUSED_NOREG


def explainer_step(explainer, cfg, mesh) -> Callable:
  """The jitted explainer step; with fisher_every = k > 1, the regularized step on every
  k-th state.step and the plain one between (two compilations, no lax.cond). Built once
  per (explainer, cfg, mesh): the sanity run reuses the main run's compiled step."""
  return _explainer_step(explainer, ml_collections.FrozenConfigDict(cfg), mesh)


@functools.lru_cache(maxsize=16)
def _explainer_step(explainer, cfg, mesh) -> Callable:
  make = lambda reg: parallel.data_parallel_step(
      on_float_images(steps.make_explainer_step(explainer, cfg, regularize=reg)), mesh,
      num_replicated=2,
      compiler_options=parallel.convnet_compiler_options())
  if float(cfg.fisher_weight) == 0:
    return make(True)
  return parallel.every_nth(int(cfg.get('fisher_every', 1)), make(True), make(False))


def balance_weights(ctx: Context, section: str):
  """Sampling weights [N] of the train split when config.<section>.balance, else None: the
  label decorrelated from every attribute (balance.py)."""
  if not ctx.spec.section(section).get('balance', False):
    return None
  def compute():
    ds = ctx.data
    task = ds.task if ds.task in ds.attribute_names else None
    return balance.balancing_weights(
        ds.labels, ds.attributes, None if task is None else ds.attribute_names.index(task))
  return ctx.derived('balance', compute)


def _extra(ctx: Context) -> tuple:
  """(I(c2) [d], σ [d]) at ĥ, replicated; I(c2) is constant while g trains."""
  def compute():
    cfg, hhat, mesh = ctx.spec.config.explainer, hhat_train(ctx), ctx.mesh
    # σ over the whole split: ĥ read from disk whole for it (N × d floats, held briefly)
    # Eager batch_sigma: under one jit XLA fuses the std's reductions differently (3 of the
    # demo's 128 σ differ in the last bit). device_put: jnp.asarray compiles per shape.
    sigma = parallel.replicate(
        fisher.batch_sigma(jax.device_put(hhat[:]), cfg.sigma_scale), mesh)
    n_info = min(cfg.info_examples, len(hhat))
    info_c2 = frozen.mean_information(
        ctx.classifier.head, 'ce', ctx.classifier.params, hhat[:n_info], sigma,
        ctx.spec.stream('explainer/info_c2'), cfg.fisher_samples,
        ctx.spec.config.eval.batch_size, mesh, 'I(c2)')
    return parallel.replicate(info_c2, mesh), sigma
  return ctx.derived('explainer_extra', compute)


def _noreg_signature(spec, sig: dict) -> dict:
  """λ = 0: the regularizer's settings are never used."""
  for key in UNUSED_NOREG:
    sig.pop(key, None)
  sig['explainer.fisher_weight'] = 0.0
  return concept_signature(spec, sig)


def _information(ctx: Context):
  """(ĥ rows, σ, key, I(c2)) of Table 2: information of g and c2 at ĥ, with the same σ and
  perturbation keys."""
  def compute():
    spec, ec = ctx.spec, ctx.spec.config.eval
    hhat = artifacts.outputs(ctx)['hhat'][:min(ec.fisher_examples, len(ctx.data))]
    sigma = parallel.replicate(
        fisher.batch_sigma(jax.device_put(hhat), spec.config.explainer.sigma_scale), ctx.mesh)
    key = spec.stream('eval/info')
    info_c2 = frozen.mean_information(ctx.classifier.head, 'ce', ctx.classifier.params, hhat,
                                      sigma, key, ec.fisher_samples, ec.batch_size, ctx.mesh,
                                      'I(c2)')
    return hhat, sigma, key, info_c2
  return ctx.derived('information', compute)


def _table2(name: str, suffix: str) -> Callable[[Context], dict]:
  def evaluate(ctx: Context) -> dict:
    ec = ctx.spec.config.eval
    hhat, sigma, key, info_c2 = _information(ctx)
    info_g = frozen.mean_information(frozen.generator_apply(ctx.mods.explainer), 'bce',
                                     ctx.params(name), hhat, sigma, key, ec.fisher_samples,
                                     ec.batch_size, ctx.mesh, f'I(g) {name}')
    return {'info_cosine' + suffix: float(artifacts.jitted(fisher.similarity)(info_g, info_c2))}
  return evaluate


def figure_rows(ctx: Context) -> dict:
  """The Fig. 3 grid's rows: test images, g(ĥ), g(ĥ') after flipping every unit."""
  out, k = artifacts.outputs(ctx), ctx.spec.config.eval.grid_rows
  ctx.figures.update(image=ctx.data.images[:k] / 255.0,
                     g_hhat=artifacts.generated(ctx, 'explainer', out['hhat'][:k]),
                     g_flip=artifacts.generated(ctx, 'explainer', out['hhat_flip'][:k]))
  return {}


def _node(name: str, fisher_weight: Callable, **kw) -> Node:
  """An explainer node; fisher_weight: spec → its λ (the config's, or 0)."""
  def step(ctx):
    # A copy: FrozenConfigDict.as_configdict() hands back the caller's own section.
    cfg = ctx.spec.config.explainer.as_configdict().copy_and_resolve_references()
    with cfg.unlocked():
      cfg.fisher_weight = fisher_weight(ctx.spec)
    return explainer_step(ctx.mods.explainer, cfg, ctx.mesh)
  return Node(
      name, ('classifier', 'concepts'), 'explainer',
      ('data', 'model.classifier', 'model.dvae', 'model.explainer', 'explainer'),
      template=lambda spec, rng: init_state(spec.mods.explainer, rng, jnp.zeros((1, spec.d)),
                                            spec.config.explainer),
      step=step,
      inputs=lambda ctx: ({'image': ctx.data.images, 'hhat': hhat_train(ctx)}, host_batch),
      weights=lambda ctx: balance_weights(ctx, 'explainer'),
      extra=_extra,
      # Both explainers draw the same initialisation and batches: Table 2's with / without
      # comparison then differs in the regularizer only.
      stream='explainer', **kw)


NODE = _node('explainer', lambda spec: spec.config.explainer.fisher_weight,
             signature_fix=concept_signature, evaluators=(_table2('explainer', ''), figure_rows))
NOREG = _node('explainer_noreg', lambda spec: 0.0, signature_fix=_noreg_signature,
              enabled=lambda config: config.explainer.train_noreg,
              present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'explainer_noreg')),
              evaluators=(_table2('explainer_noreg', '_noreg'),))
