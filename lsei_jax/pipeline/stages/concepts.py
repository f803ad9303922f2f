"""The concept learner on h = c1(x) (the paper's DVAE, or another lsei_jax.concepts kind),
trained on the frozen embeddings of the train split; its evaluators: Table 1 (accuracy on ĥ,
agreement, % change under flip-all), the concept-learner metrics and the per-bit analysis."""
from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from lsei_jax import concept_metrics, metrics
from lsei_jax.data import rows
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context, Node, concept_signature
from lsei_jax.pipeline.stages import init_state
from lsei_jax.reporting import bias
from lsei_jax.training import parallel, steps


def h_train(ctx: Context) -> rows.Rows:
  """h = c1(x) [N, d] of the train images, on this host's disk, read per batch."""
  return ctx.derived('h', lambda: ctx.map_to_disk(
      frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
      {'image': ctx.data.images}, 'embed train'))


def train_split_h(ctx: Context) -> np.ndarray | rows.Rows:
  """h [N, d] of the train split in training (h_train) and in evaluation, where ctx holds
  the test split (embedded once per evaluation: the INN stages both read it)."""
  if ctx.split == 'train':
    return h_train(ctx)
  return ctx.derived('h_train_eval', lambda: ctx.map(
      frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
      {'image': artifacts.train_images(ctx)}, 'embed train'))


def hhat_train(ctx: Context) -> rows.Rows:
  """ĥ = decode(encode(h)) [N, d] of the train images (the concept learner's eval code), on
  this host's disk, read per batch."""
  return ctx.derived('hhat', lambda: ctx.map_to_disk(
      frozen.reconstruct_fn(ctx.mods.learner, ctx.mesh), ctx.params('concepts'),
      {'h': h_train(ctx)}, 'reconstruct'))


def concept_state(learner, rng, example, cfg) -> steps.TrainState:
  """A fresh train state of the concept learner: the learner's own `create_state` when it
  keeps more than params and optimizer state (the TopK SAE's steps since each latent
  fired), else a plain TrainState of its module."""
  create = getattr(learner, 'create_state', None)
  if create is None:
    return init_state(learner.module, rng, example, cfg)
  return create(rng, example, steps.make_optimizer(cfg, max(cfg.steps, 1)))


def _inputs(ctx: Context):
  """h = c1(x) of the train images, checked for the concept learner (NMF needs h ≥ 0)."""
  h = h_train(ctx)
  ctx.mods.learner.check_input(h)
  return {'h': h}, lambda b: b


def table1(out: dict, labels: np.ndarray) -> dict:
  """The paper's Table 1 from `artifacts.explain`'s outputs."""
  return {'accuracy': float(metrics.accuracy(out['logits'], labels)),
          'recon_accuracy': float(metrics.recon_accuracy(out['logits_hat'], labels)),
          'agreement': float(metrics.agreement(out['logits_hat'], out['logits'])),
          'flip_all_change': float(metrics.change_rate(out['logits_hat'], out['logits_flip']))}


def summary(ctx: Context, out: dict, accuracy: float, recon_accuracy: float) -> dict:
  """The concept-learner metrics (concept_metrics.summary) and recovery of the test
  split's annotated attributes, from `artifacts.explain`'s outputs."""
  split, test = ctx.classifier, ctx.data
  hbar = out['h'].mean(0, keepdims=True)
  mean_pred = int(np.argmax(np.asarray(artifacts.jitted(split.head)(split.params, hbar)), -1)[0])
  acc_mean = float(np.mean(test.labels == mean_pred))
  return {'kind': ctx.mods.learner.kind,
          **concept_metrics.summary(out['h'], out['hhat'], out['code'], acc_h=accuracy,
                                    acc_hhat=recon_accuracy, acc_mean=acc_mean,
                                    decisive=out['decisive']),
          'factor_recovery': concept_metrics.factor_recovery(out['code'], test.attributes,
                                                              test.attribute_names)}


def evaluate_concepts(ctx: Context) -> dict:
  out = artifacts.outputs(ctx)
  res = table1(out, ctx.data.labels)
  del res['accuracy']   # the classifier node's
  acc = float(metrics.accuracy(out['logits'], ctx.data.labels))
  res['concepts'] = summary(ctx, out, acc, res['recon_accuracy'])
  return res


def per_bit(ctx: Context) -> dict:
  """Which single flips change c2(ĥ)'s prediction."""
  out = artifacts.outputs(ctx)
  pb = bias.per_bit_summary(out['decisive'], np.argmax(out['logits_hat'], -1),
                            ctx.spec.num_classes)
  return {'per_bit_change': pb['per_bit_change'], 'single_bit_change': pb['single_bit_change'],
          'per_bit_change_by_class': pb['per_class']}


def concepts_step(learner, cfg, mesh) -> Callable:
  """The jitted concept-learner step, built once per (learner, cfg, mesh): the sanity run
  trains its concept learner with the main run's (no second trace and lowering). A learner
  of another package that is not hashable gets a fresh step each time."""
  cfg = ml_collections.FrozenConfigDict(cfg)
  try:
    hash(learner)
  except TypeError:
    return _concepts_step.__wrapped__(learner, cfg, mesh)
  return _concepts_step(learner, cfg, mesh)


@functools.lru_cache(maxsize=16)
def _concepts_step(learner, cfg, mesh) -> Callable:
  return parallel.data_parallel_step(learner.make_step(cfg), mesh)


NODE = Node(
    'concepts', ('classifier',), 'concepts',
    ('data', 'model.classifier', 'model.dvae', 'concepts'),
    template=lambda spec, rng: concept_state(spec.mods.learner, rng, jnp.zeros((1, spec.d)),
                                             spec.config.concepts),
    step=lambda ctx: concepts_step(ctx.mods.learner, ctx.spec.config.concepts, ctx.mesh),
    inputs=_inputs,
    signature_fix=concept_signature,
    stream='dvae',   # its name before lsei_jax 0.2: the same keys and batches as then
    evaluators=(evaluate_concepts, per_bit))
