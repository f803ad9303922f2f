"""The factor INN on h (issue 26; docs/method.md § "The INN"): T = flow ∘ attribute basis
maps the embedding onto one block per annotated attribute plus a residual; the basis
(`inn.basis`, a fixed linear map fitted on the fit split's h and attributes) is recomputed
wherever it is needed, the flow is trained on pairs of images that share an attribute. The
fit split (`inn.fit_split`): 'train', or the held-out 'validation' images, which the
classifier never trained on (its h of its own training images separates what it memorised
more than a new image's h does; docs/truthfulness_estimators.md). A stage added as one
node: its evaluators report each block's probe accuracy, the round trip, and the factor
intervention (move block a to the other value's mean, map back, read c2) as an estimator of
the classifier's reliance on attribute a as its representation encodes it."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import data as data_lib, errors
from lsei_jax.inn import basis, factor
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages.concepts import train_split_h
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


FIT_SPLITS = ('train', 'validation')


def fit_split(config) -> str:
  """config.inn.fit_split, checked: the split whose h the basis, the flow and the class
  means are fitted on (absent: 'train')."""
  split = str(config.inn.get('fit_split', 'train'))
  if split not in FIT_SPLITS:
    raise errors.UserError(f"inn.fit_split={split!r} is not one of {', '.join(FIT_SPLITS)}: "
                           "'validation' fits the INN on held-out images, 'train' on the "
                           'training images')
  return split


def fit_rows(ctx: Context):
  """(h [M, d], attributes bool [M, A]) of the fit split, in training and in evaluation:
  the train split's (h on disk in training, `train_split_h`) or the 'validation' split's
  (embedded once, in memory: a held-out split is small)."""
  if fit_split(ctx.spec.config) == 'train':
    return train_split_h(ctx), train_attributes(ctx)
  return ctx.derived('inn_fit_rows', lambda: _validation_rows(ctx))


def _validation_rows(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
  fix = "set inn.fit_split='train' to fit the INN on the training images"
  try:
    ds = data_lib.load(ctx.spec.config.data, 'validation')
  except Exception as e:  # pylint: disable=broad-except
    if not errors.is_user_error(e):   # a bug, not a dataset without that split
      raise
    raise errors.UserError(f"inn.fit_split='validation' but the data has no validation "
                           f'split ({e}): {fix}') from e
  if len(ds) < 2:
    raise errors.UserError(f"inn.fit_split='validation' but the data's validation split "
                           f'has {len(ds)} rows: {fix}')
  h = ctx.map(frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
              {'image': ds.images}, 'embed validation')
  return np.asarray(h), np.asarray(ds.attributes)


def fitted_basis(ctx: Context) -> basis.Basis:
  """The attribute basis of the fit split (float64 on the host, deterministic)."""
  def fit():
    h, attributes = fit_rows(ctx)
    return basis.fit(h, attributes, int(ctx.spec.config.inn.factor_dim))
  return ctx.derived('inn_basis', fit)


def _inputs(ctx: Context):
  bas = fitted_basis(ctx)
  # The train split's h on disk (each batch's rows read and mapped by the basis, row-wise);
  # the validation split's in memory.
  h, attributes = fit_rows(ctx)
  cfg = ctx.spec.config.inn
  table = factor.sample_pair_table(
      attributes, np.random.default_rng(ctx.spec.stream_seed('inn/pairs')),
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
  """factor.class_means of the fit split's codes z = T(h), computed once per evaluation
  (the flip rates here and the factor sweeps both move blocks to them)."""
  def compute():
    m = model(ctx.spec)
    enc, _ = codecs(m)
    h, attributes = fit_rows(ctx)
    z_fit = np.asarray(enc(ctx.params('inn'), fitted_basis(ctx).forward(h)))
    return factor.class_means(z_fit, attributes, m.layout)
  return ctx.derived('inn_class_means', compute)


def evaluate_inn(ctx: Context) -> dict:
  """Per-block probe accuracy (test split; probes fit on the train split whatever the fit
  split, so that the block targets are read the same way), the probe on h itself, the
  round trip's largest error, and the factor intervention's flip rates."""
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


def _signature_fix(spec, sig: dict) -> dict:
  """Fitted on the validation split, the stage reads data.num_test as well (shapes draws
  that many validation images), a field the signature otherwise counts harmless. Fitted on
  the train split, fit_split is left out, so that checkpoints written before the field
  existed keep loading."""
  if fit_split(spec.config) == 'validation':
    return {**sig, 'data.num_test': spec.config.data.get('num_test', None)}
  return {k: v for k, v in sig.items() if k != 'inn.fit_split'}


NODE = Node(
    'inn', ('classifier',), 'inn', ('data', 'model.classifier', 'inn'),
    signature_fix=_signature_fix,
    template=lambda spec, rng: factor.create_state(
        model(spec), rng, jnp.zeros((2, spec.d)),
        steps.make_optimizer(spec.config.inn, max(spec.config.inn.steps, 1))),
    step=lambda ctx: parallel.data_parallel_step(factor.make_step(model(ctx.spec)), ctx.mesh),
    inputs=_inputs,
    enabled=lambda config: bool(config.get('inn', None) and config.inn.get('enabled', False)),
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'inn')),
    evaluators=(evaluate_inn,))
