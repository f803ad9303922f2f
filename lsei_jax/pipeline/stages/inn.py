"""The factor INN on h (issue 26; docs/method.md § "The INN"): T = flow ∘ attribute basis
maps the embedding onto one block per annotated attribute plus a residual; the basis
(`inn.basis`, a fixed linear map fitted on the train split's h and attributes) is recomputed
wherever it is needed, the flow is trained on pairs of images that share an attribute. A stage added as one node: its
evaluators report each block's probe accuracy, the round trip, and the factor
intervention (move block a to the other value's mean, map back, read c2) as an estimator of
the classifier's reliance on attribute a as its representation encodes it."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import data as data_lib
from lsei_jax.inn import basis, factor
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages.concepts import h_train, train_split_h
from lsei_jax.training import parallel, steps


def model(spec) -> factor.FactorINN:
  """The factor INN of the spec: one block per attribute, ActNorm without data init (its
  inputs are standardised instead, so the template needs no data)."""
  m = factor.build(spec.config.inn, spec.d, spec.num_attributes)
  return dataclasses.replace(m, flow=m.flow.clone(data_init=False))


def standardise(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [d], scale [d]) of train embeddings h [N, d]; a feature constant over the split
  (a ReLU unit that never fires) gets scale 1, so the flow sees it as the constant 0."""
  h = np.asarray(h, np.float64)
  sd = h.std(0)
  return h.mean(0).astype(np.float32), np.where(sd > 1e-6, sd, 1.0).astype(np.float32)


def _train_stats(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
  return ctx.derived('inn_stats', lambda: standardise(train_split_h(ctx)))


def train_attributes(ctx: Context) -> np.ndarray:
  """bool [N, A]: the train split's attributes (what the basis and class means are of)."""
  if ctx.split == 'train':
    return ctx.data.attributes
  return data_lib.load_annotations(ctx.spec.config.data, 'train')[1]


def fitted_basis(ctx: Context) -> basis.Basis:
  """The attribute basis of the train split (float64 on the host, deterministic)."""
  return ctx.derived('inn_basis', lambda: basis.fit(
      train_split_h(ctx), train_attributes(ctx), int(ctx.spec.config.inn.factor_dim)))


def _inputs(ctx: Context):
  bas = fitted_basis(ctx)
  h = h_train(ctx)   # on disk: each batch's rows read and mapped by the basis (row-wise)
  cfg = ctx.spec.config.inn
  table = factor.sample_pair_table(
      ctx.data.attributes, np.random.default_rng(ctx.spec.stream_seed('inn/pairs')),
      int(cfg.pairs_per_example))

  def batch(b):
    pairs = factor.pair_batch(h, table, b['index'])
    return {k: bas.forward(v) if k in ('h_a', 'h_b') else v for k, v in pairs.items()}
  return {'index': np.arange(len(table[0]))}, batch


@functools.lru_cache(maxsize=8)
def codecs(m: factor.FactorINN):
  """(params, x [B, d]) → z = T_flow(x) and (params, z) → x, jitted once per model."""
  return (jax.jit(lambda p, h: factor.encode(m, p, h)),
          jax.jit(lambda p, z: factor.decode(m, p, z)))


def class_means(ctx: Context) -> np.ndarray:
  """factor.class_means of the train split's codes z = T(h), computed once per evaluation
  (the flip rates here and the factor sweeps both move blocks to them)."""
  def compute():
    m = model(ctx.spec)
    enc, _ = codecs(m)
    z_train = np.asarray(enc(ctx.params('inn'), fitted_basis(ctx).forward(train_split_h(ctx))))
    return factor.class_means(z_train, train_attributes(ctx), m.layout)
  return ctx.derived('inn_class_means', compute)


def evaluate_inn(ctx: Context) -> dict:
  """Per-block probe accuracy (test split; probes fit on the train split), the probe on h
  itself, the round trip's largest error, and the factor intervention's flip rates."""
  spec, test = ctx.spec, ctx.data
  m = model(spec)
  enc, dec = codecs(m)
  params = ctx.params('inn')
  mean, scale = _train_stats(ctx)
  bas = fitted_basis(ctx)
  train_attrs = train_attributes(ctx)
  embed = lambda images, what: ctx.map(frozen.embed_fn(ctx.classifier.embed, ctx.mesh),
                                      ctx.classifier.params, {'image': images}, what)
  x_train = bas.forward(train_split_h(ctx))

  def probes(h, attributes):
    # The probe on h itself reads the standardised h (not the basis: a probe's L2 penalty
    # depends on the coordinates it is given).
    return factor.evaluate(m, params, x_train, train_attrs, bas.forward(h), attributes,
                           encode_fn=lambda x: enc(params, x),
                           h_probe=((train_split_h(ctx) - mean) / scale, (h - mean) / scale))
  h_test = embed(test.images, 'embed test')
  x_test = bas.forward(h_test)
  ev = probes(h_test, test.attributes)
  z = np.asarray(enc(params, x_test))
  means = class_means(ctx)
  head = jax.jit(ctx.classifier.head)
  pred = np.argmax(np.asarray(head(ctx.classifier.params, jnp.asarray(h_test))), -1)
  flips = {}
  for a, name in enumerate(test.attribute_names):
    z_f = factor.flip_factor(z, a, m.layout, test.attributes, means)
    h_f = bas.backward(np.asarray(dec(params, z_f)))
    after = np.argmax(np.asarray(head(ctx.classifier.params, jnp.asarray(h_f))), -1)
    flips[name] = float(np.mean(after != pred))
  names = test.attribute_names

  def table(e):
    return {
        'block_accuracy': {n: [float(x) for x in e['block_accuracy'][a]]
                           for a, n in enumerate(names)},
        'own_block': dict(zip(names, map(float, e['own_block']))),
        'other_max': dict(zip(names, map(float, e['other_max']))),
        'h_accuracy': dict(zip(names, map(float, e['h_accuracy']))),
        'chance': dict(zip(names, map(float, e['chance'])))}
  # Where the test split correlates attributes (the demo's colour with its shape), a block
  # reads the other's attribute through the data; the probes on the unbiased split are
  # the ones the target (docs/method.md) is stated on.
  unbiased = artifacts.unbiased_split(spec.config.data)
  extra = {} if unbiased is None else {'unbiased': table(probes(
      embed(unbiased.images, 'embed test_unbiased'), unbiased.attributes))}
  return {'inn': {
      'attributes': list(names),
      **table(ev),
      **extra,
      'round_trip_max_abs': ev['round_trip_max_abs'],
      # The whole T⁻¹(T(h)) − h, basis included, in units of h.
      'round_trip_h_max_abs': float(np.max(np.abs(
          bas.backward(np.asarray(dec(params, jnp.asarray(z)))) - np.asarray(h_test)))),
      # The estimator: share of test predictions that change when block a moves to the
      # other value's class mean (the rest of z kept) and T⁻¹ maps it back to h.
      'factor_flip_rate': flips}}


NODE = Node(
    'inn', ('classifier',), 'inn', ('data', 'model.classifier', 'inn'),
    template=lambda spec, rng: factor.create_state(
        model(spec), rng, jnp.zeros((2, spec.d)),
        steps.make_optimizer(spec.config.inn, max(spec.config.inn.steps, 1))),
    step=lambda ctx: parallel.data_parallel_step(factor.make_step(model(ctx.spec)), ctx.mesh),
    inputs=_inputs,
    enabled=lambda config: bool(config.get('inn', None) and config.inn.get('enabled', False)),
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'inn')),
    evaluators=(evaluate_inn,))
