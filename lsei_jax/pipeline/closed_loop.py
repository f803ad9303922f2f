"""The closed loop's per-example arrays (issue 25 item 4): every test image's ĥ with each
concept unit switched alone, rendered by the explainer g and read back by the classifier c
itself and by the attribute probes (reporting/closed_loop.py turns them into rows)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import interventions
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.pipeline import artifacts
from lsei_jax.pipeline.node import Context
from lsei_jax.reporting import closed_loop
from lsei_jax.training import parallel


@functools.lru_cache(maxsize=16)
def _loop_fn(embed, head_fn, learner, explainer, probe, mesh, add_error: bool = False):
  """((clf, learner, g, probe params, on_value [K]), {'image': uint8 [b,H,W,3]}) →
  pred_before [b] = argmax c(g(ĥ)), pred_after [b, K] = argmax c(g(ĥ'_k)) with unit k
  switched alone, pred_flip_all [b] (every unit switched), p_before [b, A] and p_after
  [b, K, A]: the probes' probabilities on g(ĥ) and g(ĥ'_k); pred_real [b] = argmax c(x)."""
  def f(params, batch):
    clf_p, lp, g_p, probe_p, on = params
    x = batch['image'].astype(jnp.float32) / 255.0
    h = embed(clf_p, x)
    decode = lambda z: learner.decode(lp, z)
    z = learner.encode(lp, h)
    def classify_and_read(e):   # one render of g, read by c and by the probes
      img = jax.nn.sigmoid(explainer.apply({'params': g_p}, e))
      return (jnp.argmax(head_fn(clf_p, embed(clf_p, img)), -1),
              jax.nn.sigmoid(probe.apply({'params': probe_p}, img)))
    edit = lambda m: interventions.intervened(decode, h, z, interventions.intervene(z, m, on),
                                              add_error)
    pred_before, p_before = classify_and_read(decode(z))
    masks = interventions.single_bit_masks(z.shape[-1])                       # [K, K]
    pred_after, p_after = jax.vmap(lambda m: classify_and_read(edit(m)))(masks)  # [K, b(, A)]
    return {'pred_before': pred_before, 'p_before': p_before,
            'pred_real': jnp.argmax(head_fn(clf_p, h), -1),
            'pred_after': pred_after.T, 'p_after': jnp.swapaxes(p_after, 0, 1),
            'pred_flip_all': classify_and_read(edit(jnp.ones(z.shape[-1])))[0]}
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


def loop_arrays(ctx: Context, split: ClassifierSplit, learner_params, g_params, probe_params,
                desc: str = 'closed loop') -> dict:
  """`_loop_fn` over the test images, with pred_after [K, N] and p_after [K, N, A] (bit
  first, as reporting.closed_loop takes them)."""
  cfg = ctx.spec.config.model.get('concepts', None) or {}
  fn = _loop_fn(split.embed, split.head, ctx.mods.learner, ctx.mods.explainer, ctx.mods.probe,
                ctx.mesh, bool(cfg.get('add_error', False)))
  on = artifacts.on_value(ctx, split, learner_params)
  out = ctx.map(fn, (split.params, learner_params, g_params, probe_params, on),
                {'image': ctx.data.images}, desc)
  return dict(out, pred_after=np.swapaxes(out['pred_after'], 0, 1),
              p_after=np.swapaxes(out['p_after'], 0, 1))


def report(ctx: Context, arrays: dict) -> dict:
  """closed_loop.closed_loop_report of `loop_arrays`' output with the run's eval settings."""
  ec = ctx.spec.config.eval
  return closed_loop.closed_loop_report(
      arrays['pred_before'], arrays['pred_after'], arrays['p_before'], arrays['p_after'],
      list(ctx.data.attribute_names), ctx.data.task, arrays['pred_flip_all'],
      pred_real=arrays['pred_real'],
      level=ec.ci_level, min_effect=ec.get('min_effect', 0.05),
      max_hidden=ec.get('max_hidden', 0.25))


def evaluate(ctx: Context) -> dict:
  """metrics.json's `closed_loop`: the explainer's view closed through the classifier."""
  arrays = loop_arrays(ctx, ctx.classifier, ctx.params('concepts'), ctx.params('explainer'),
                       ctx.params('probe'))
  return {'closed_loop': report(ctx, arrays)}
