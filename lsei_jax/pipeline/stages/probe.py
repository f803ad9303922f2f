"""The attribute probe: a small CNN trained on real train images and the explainer's g(ĥ) of
them, so that it reads generated images as well as real ones; its evaluators: the probes'
accuracy and the explainer's view (attribute shifts between g(ĥ) and g(ĥ'))."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.data import rows
from lsei_jax.pipeline import artifacts, closed_loop, frozen
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import host_batch, image0, init_state, on_float_images
from lsei_jax.pipeline.stages.concepts import hhat_train
from lsei_jax.pipeline.stages.explainer import balance_weights
from lsei_jax.reporting import bias
from lsei_jax.training import parallel, steps


@functools.lru_cache(maxsize=16)
def _probe_fn(probe, explainer, mesh):
  """((g, probe params), {'before', 'after': ĥ [b,d], 'image': uint8}) → probe probabilities
  [b, A] of g(before), g(after) and of the real image."""
  def f(params, batch):
    g_p, probe_p = params
    read = lambda img: jax.nn.sigmoid(probe.apply({'params': probe_p}, img))
    g = lambda e: jax.nn.sigmoid(explainer.apply({'params': g_p}, e))
    real = batch['image'].astype(jnp.float32) / 255.0
    return {'before': read(g(batch['before'])), 'after': read(g(batch['after'])),
            'real': read(real)}
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


def probe(ctx: Context, g_params, before: np.ndarray, after: np.ndarray, desc: str) -> dict:
  """The probes' readings of g(before), g(after) and the real test images."""
  return ctx.map(_probe_fn(ctx.mods.probe, ctx.mods.explainer, ctx.mesh),
                 (g_params, ctx.params('probe')),
                 {'before': before, 'after': after, 'image': ctx.data.images}, desc)


def _inputs(ctx: Context):
  """Real train images and the explainer's g(ĥ) of them, each with its attributes: the
  images [2N, H, W, 3] written to a temporary file on this host's disk as they are made
  (data.rows.spill), read per batch, never held whole (a second copy of the split)."""
  ds, size, chunk = ctx.data, ctx.spec.image_size, ctx.spec.config.eval.batch_size

  def images():
    for s in range(0, len(ds), chunk):
      yield np.asarray(ds.images[s:s + chunk])
    yield from parallel.map_batches(frozen.render_fn(ctx.mods.explainer, ctx.mesh),
                                    ctx.params('explainer'), {'e': hhat_train(ctx)},
                                    chunk, ctx.mesh, 'g(ĥ) train')
  arrays = {'image': rows.spill(images(), (2 * len(ds), size, size, 3), np.uint8,
                                rows.spill_dir_of(ctx.spec.config.data)),
            'attributes': np.concatenate([ds.attributes, ds.attributes]).astype(np.float32)}
  return arrays, host_batch


def probes(ctx: Context) -> dict:
  """The probes' readings of the run's g(ĥ) and g(ĥ_m) (the bias report's mask)."""
  out = artifacts.outputs(ctx)
  return ctx.derived('probes', lambda: probe(ctx, ctx.params('explainer'), out['hhat'],
                                             out['hhat_masked'], 'probes'))


def accuracy(ctx: Context) -> dict:
  """Each probe's accuracy on real test images and on g(ĥ) of them."""
  probs, test = probes(ctx), ctx.data
  attrs = test.attributes
  return {'probe_accuracy': {
      n: {'real': float(np.mean((probs['real'][:, a] > 0.5) == attrs[:, a])),
          'generated': float(np.mean((probs['before'][:, a] > 0.5) == attrs[:, a]))}
      for a, n in enumerate(test.attribute_names)}}


def explainer_view(ctx: Context, probs: dict, logits_hat, logits_after) -> list:
  """Attribute shifts between g(ĥ) and g(ĥ'), gated by the probes' accuracy on real images
  (bias.reliance_report): the explainer's view, shown beside the verdict, never as it (on
  the truthfulness benchmark it flags unused attributes)."""
  ec, test = ctx.spec.config.eval, ctx.data
  readable = [ctx.derived('probe_accuracy', lambda: accuracy(ctx))['probe_accuracy'][n]['real']
              for n in test.attribute_names]
  return bias.reliance_report(
      probs['before'], probs['after'], np.argmax(logits_hat, -1), np.argmax(logits_after, -1),
      test.attribute_names, test.task, ctx.spec.num_classes, readable,
      min_probe_accuracy=ec.get('min_probe_accuracy', 0.75),
      min_shift=ec.get('min_shift', 0.05), level=ec.ci_level)


def intervention_report(ctx: Context) -> list:
  """The explainer's view of the run: g(ĥ) against g(ĥ_m)."""
  out = artifacts.outputs(ctx)
  return ctx.derived('intervention_report', lambda: explainer_view(
      ctx, probes(ctx), out['logits_hat'], out['logits_masked']))


def intervention(ctx: Context) -> dict:
  bits = tuple(ctx.spec.config.eval.bias_bits)
  verb, unit = ('flip', 'bits') if ctx.mods.learner.binary else ('toggle', 'units')
  return {'intervention': f'{verb} all {unit}' if not bits else f'{verb} {unit} {list(bits)}',
          'intervention_report': intervention_report(ctx)}


NODE = Node(
    'probe', ('classifier', 'concepts', 'explainer'), 'probe',
    ('data', 'model.probe', 'model.explainer', 'probe'),
    template=lambda spec, rng: init_state(spec.mods.probe, rng, image0(spec), spec.config.probe),
    step=lambda ctx: parallel.data_parallel_step(
        on_float_images(steps.probe_step), ctx.mesh,
        compiler_options=parallel.convnet_compiler_options()),
    inputs=_inputs,
    # Real images and g(ĥ) of them: the train split's weights twice.
    weights=lambda ctx: (None if balance_weights(ctx, 'probe') is None
                         else np.concatenate([balance_weights(ctx, 'probe')] * 2)),
    evaluators=(lambda ctx: ctx.derived('probe_accuracy', lambda: accuracy(ctx)), intervention,
                closed_loop.evaluate))
