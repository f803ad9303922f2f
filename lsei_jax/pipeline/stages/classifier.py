"""The classifier c = c2 ∘ c1: trained here from config.model.classifier, given (a
ClassifierSplit whose fingerprint is recorded), or the sanity check's untrained one; its
evaluators: the run's header and accuracy, the verdict, the training data's association,
the ground truth, and the TCAV / attribution cross-checks."""
from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from lsei_jax import data as data_lib, metrics
from lsei_jax import errors
from lsei_jax.pipeline import artifacts, identity, templates
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import host_batch, image0, init_state, on_float_images
from lsei_jax.reporting import bias, crosscheck, heldout
from lsei_jax.training import parallel, steps
from lsei_jax.training.trainer import save_untrained


def header(ctx: Context) -> dict:
  out, test = artifacts.outputs(ctx), ctx.data
  res = {'split': split_description(ctx.spec.config.data), 'num_examples': len(test),
         'task': test.task, 'num_classes': ctx.spec.num_classes,
         'embed_dim': int(out['h'].shape[1]), 'classifier': ctx.identities['classifier'],
         'accuracy': float(metrics.accuracy(out['logits'], test.labels))}
  unbiased = artifacts.unbiased_accuracy(ctx.spec.config.data, ctx.classifier,
                                         ctx.spec.config.eval.batch_size, ctx.mesh)
  if unbiased is not None:
    res['accuracy_unbiased'] = unbiased
  return res


def split_description(data_config) -> str:
  """What the test split is, for the report's header: the embedded shapes say how their
  spurious attribute relates to the task there (config.data.test_rho)."""
  if data_config.name != 'shapes' or data_config.get('bias_split', ''):
    return 'test'
  rho, spurious = float(data_config.get('test_rho', 0.5)), data_config.get('spurious')
  if rho == 0.5 or not spurious:
    return 'test (unbiased)'
  return (f'test ({spurious} agrees with {data_config.task.split("+")[0]} in {rho:.0%}: '
          f'r = {2 * rho - 1:+.2f})')


def verdict(ctx: Context) -> dict:
  """How the classifier's own predictions depend on each attribute over the test split
  (benchmarks/truthfulness.py: this is what matches the ground truth); a row the test split
  leaves 'cannot tell' (a correlate confounds it, its interval is too wide, or it is
  constant) looked at again on the test and held-out 'validation' images (the training
  distribution) pooled, at half the α (reporting/heldout.py,
  benchmarks/truthfulness_correlated.py). That split is loaded and classified only then."""
  ec, test = ctx.spec.config.eval, ctx.data
  return {'bias_report': heldout.prediction_association(
      np.argmax(artifacts.outputs(ctx)['logits'], -1), test.attributes, test.attribute_names,
      test.task, ctx.spec.num_classes, held=lambda: held_out(ctx), split='validation',
      level=ec.ci_level, min_effect=ec.get('min_effect', 0.05),
      max_hidden=ec.get('max_hidden', 0.25))}


def held_out(ctx: Context) -> tuple[np.ndarray, np.ndarray] | None:
  """(predictions int [M], attributes [M, A]) of the data's 'validation' split, or None
  where the data has none (a BYO dataset without validation rows)."""
  try:
    ds = data_lib.load(ctx.spec.config.data, 'validation')
  except Exception as e:  # pylint: disable=broad-except
    if not errors.is_user_error(e):   # a bug, not a dataset without that split
      raise
    # The rows it would fill stay 'cannot tell' and say so.
    logging.warning('the verdict has no validation split to answer confounded attributes '
                    'from: %s', e)
    return None
  if len(ds) == 0:
    return None
  logits = artifacts.classify_fn(ctx.classifier, ctx.spec.config.eval.batch_size,
                                 ctx.mesh)(ds.images)
  return np.argmax(logits, -1), ds.attributes


def data_association(ctx: Context) -> dict:
  """A property of the training data, not of the classifier: shown apart from the report."""
  labels, attributes = data_lib.load_annotations(ctx.spec.config.data, 'train')
  return {'data_association': bias.label_association(labels, attributes,
                                                     ctx.data.attribute_names,
                                                     ctx.spec.num_classes)}


def ground_truth(ctx: Context) -> dict:
  """Where the data can be re-rendered with one attribute flipped."""
  return {'reliance': ctx.derived('reliance', lambda: artifacts.ground_truth_reliance(
      ctx.spec.config.data, ctx.classifier, ctx.data, ctx.spec.config.eval.batch_size,
      ctx.mesh))}   # cached: the invariance evaluator reads it too


def random_head(ctx: Context):
  """The sanity check's random-head classifier of the run's classifier (replicated)."""
  spec = ctx.spec
  return ctx.derived('random_head', lambda: identity.resolve_classifier(
      spec.config, identity.sanity_classifier(spec.seed, ctx.classifier,
                                              artifacts.train_images(ctx)), spec.mesh))


def sanity_mode(spec) -> str:
  given = spec.classifier == 'given'
  return (identity.sanity_mode(spec.config.sanity, given) if spec.config.sanity.enabled
          else 'head' if given else 'init')


def cross_checks(ctx: Context) -> dict:
  """TCAV of each attribute on the same layer, and whether the input attributions depend
  on the trained weights at all. Cascading re-initialisation needs the module's own
  initialisers: the config's classifier; a given one gets the cascade's top-layer step,
  with the sanity check's random head."""
  spec, split, test, out = ctx.spec, ctx.classifier, ctx.data, artifacts.outputs(ctx)
  ec = spec.config.eval
  head = lambda e: split.head(split.params, e)
  result = {'tcav': crosscheck.tcav_entries(spec.stream('eval/tcav'), head, out['h'],
                                            test.attributes, test.labels,
                                            test.attribute_names, ec.tcav, split=split),
            'tcav_skipped': crosscheck.tcav_skipped(test.attributes, test.attribute_names)}
  ka = ec.attribution.images
  pred_c = np.argmax(out['logits'][:ka], -1)
  x_a = test.images[:ka].astype(np.float32) / 255.0
  given = spec.classifier == 'given'
  if not given:
    result['attribution_sanity'] = crosscheck.attribution_sanity(
        ctx.mods.classifier, split.params['params'], x_a, pred_c,
        spec.stream('eval/attribution'), ec.attribution)
  else:
    rand = random_head(ctx) if sanity_mode(spec) != 'init' else None
    result['attribution_sanity'] = crosscheck.head_randomization(split, rand, x_a, pred_c,
                                                                 ec.attribution)
  k = ec.grid_rows
  ctx.figures.update(attribution_image=x_a[:k], ig=crosscheck.ig_heatmaps(
      split, x_a[:k], pred_c[:k], ec.attribution.ig_steps,
      model=None if given else ctx.mods.classifier))
  return result


@dataclasses.dataclass(frozen=True)
class ClassifierNode(Node):
  """Trained by the loop unless the spec's classifier is given (its fingerprint recorded)
  or random (the sanity check's untrained state, stored as complete)."""

  def fit(self, ctx: Context, link: dict):
    spec = ctx.spec
    if spec.classifier == 'given':
      identity.record_given(ctx.workdir, spec.given_id, spec.d, spec.num_classes, spec.given.name)
      ctx.classifier = spec.given
      return None, spec.given_id
    if spec.classifier == 'random':
      state, meta = save_untrained(ctx.workdir, 'classifier',
                                   templates.random_classifier_state(spec), self.signature(spec))
    else:
      state, meta = super().fit(ctx, link)
    ctx.classifier = identity.builtin_split(spec.mods.classifier, state.params)
    return state, meta

  def load(self, ctx: Context, link: dict):
    spec = ctx.spec
    if spec.classifier == 'given':
      ctx.classifier = spec.given
      return None, spec.given_id
    state, meta = super().load(ctx, link)
    ctx.classifier = identity.builtin_split(spec.mods.classifier, state.params)
    return state, meta


NODE = ClassifierNode(
    'classifier', (), 'classifier', ('data', 'model.classifier', 'classifier'),
    template=lambda spec, rng: init_state(spec.mods.classifier, rng, image0(spec),
                                          spec.config.classifier),
    step=lambda ctx: parallel.data_parallel_step(
        on_float_images(steps.classifier_step), ctx.mesh,
        compiler_options=parallel.convnet_compiler_options()),
    inputs=lambda ctx: ({'image': ctx.data.images, 'label': ctx.data.labels}, host_batch),
    evaluators=(header, verdict, data_association, ground_truth, cross_checks))
