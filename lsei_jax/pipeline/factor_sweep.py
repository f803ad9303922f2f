"""The factor sweep evaluator (issue 26; inn/sweep.py): a few test images decoded while one
attribute block of z = T(h) moves from its value-0 class mean to its value-1 one, the rest
of each image (its own residual ν = τ(E(x) | h)) kept. Needs both the factor INN ('inn')
and the invariance stages ('autoencoder', 'invariance'); without either it reports nothing.
→ metrics.json 'factor_sweep' and the figure factor_sweep.png (ctx.figures['factor_sweep'])."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.inn import conditional, sweep
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context
from lsei_jax.pipeline.stages import autoencoder as ae_stage
from lsei_jax.pipeline.stages import inn as inn_stage
from lsei_jax.pipeline.stages import invariance as inv_stage

# config.eval.factor_sweep.{steps, images} where a config has no such section (one older
# than it): a row per (image, attribute) makes the figure tall, so it shows fewer images than
# invariance_grid. Not in the stages' sections: their checkpoints pin every field there.
DEFAULTS = {'steps': 5, 'images': 4}


def _setting(spec, name: str) -> int:
  fs = spec.config.eval.get('factor_sweep', None)
  return int(fs.get(name, DEFAULTS[name]) if fs is not None else DEFAULTS[name])


@functools.lru_cache(maxsize=8)
def _tau(inn: conditional.ConditionalINN):
  """(params, v_std, h_std) → τ(v | h) and (params, ν, h_std) → v_std = τ⁻¹(ν | h), jitted."""
  return (jax.jit(lambda p, v, h: conditional.residual(inn, p, v, h)),
          jax.jit(lambda p, nu, h: inn.apply({'params': p}, nu, h, method='inverse')))


def maps(ctx: Context) -> dict:
  """The callables `sweep.factor_sweep` takes, bound to ctx's trained stages; v and h are
  standardised by the train split's statistics (stages.invariance.stats) around τ = τ₁ ∘ τ₀
  (τ₀ the conditional affine base, stages.invariance.to_base / from_base)."""
  spec = ctx.spec
  enc, dec = inn_stage.codecs(inn_stage.model(spec))
  p_inn, p_inv, p_ae = ctx.params('inn'), ctx.params('invariance'), ctx.params('autoencoder')
  bas = inn_stage.fitted_basis(ctx)
  s = inv_stage.stats(ctx)
  res, inv = _tau(inv_stage.model(spec))
  std = lambda x, ms: (np.asarray(x, np.float32) - ms[0]) / ms[1]
  decode = ae_stage.decode_fn(ae_stage.model(spec))
  head = jax.jit(ctx.classifier.head)
  return {
      'encode_h': lambda h: enc(p_inn, bas.forward(h)),
      'decode_z': lambda z: bas.backward(np.asarray(dec(p_inn, jnp.asarray(z)))),
      'residual': lambda v, h: res(p_inv, inv_stage.to_base(ctx, std(v, s['v']), std(h, s['h'])),
                                   std(h, s['h'])),
      'invert': lambda nu, h: inv_stage.from_base(
          ctx, np.asarray(inv(p_inv, jnp.asarray(nu), std(h, s['h']))), std(h, s['h']))
                              * s['v'][1] + s['v'][0],
      'decode_v': lambda v: decode(p_ae, jnp.asarray(v, jnp.float32)),
      'head': lambda h: head(ctx.classifier.params, jnp.asarray(h, jnp.float32))}


def sweep_values(ctx: Context, steps: int) -> np.ndarray:
  """[A, S, d_f]: each block's S values between its train split's class means in z."""
  return sweep.block_values(inn_stage.class_means(ctx), steps)


def evaluate_factor_sweep(ctx: Context) -> dict:
  """metrics.json 'factor_sweep' and ctx.figures['factor_sweep'] when the run has the factor
  INN and the invariance stages; {} otherwise."""
  if not all(s in ctx.states for s in ('inn', 'autoencoder', 'invariance')):
    return {}
  spec, test, cfg = ctx.spec, ctx.data, ctx.spec.config.invariance
  b = min(int(cfg.eval_images), len(test))
  steps = _setting(spec, 'steps')
  images = np.asarray(test.images[:b])
  h = ctx.map(frozen.embed_fn(ctx.classifier.embed, ctx.mesh), ctx.classifier.params,
              {'image': images}, 'embed sweep')
  v = ae_stage.latents(ctx, images, 'v_invariance_test')   # the invariance evaluator's
  layout = inn_stage.model(spec).layout
  blocks = [layout.block(a) for a in range(layout.num_factors)]
  fns, values = maps(ctx), sweep_values(ctx, steps)
  classify = artifacts.classify_fn(ctx.classifier, spec.config.eval.batch_size, ctx.mesh)
  k = _setting(spec, 'images')
  # In chunks of about eval.batch_size decoded images (A·S per test image; CelebA's 40
  # attributes would otherwise decode 50k images at once); only the figure's k are kept.
  chunk = max(1, int(spec.config.eval.batch_size) // (len(blocks) * steps))
  pred, image_pred, kept = [], [], []
  for i in range(0, b, chunk):
    out = sweep.factor_sweep(h[i:i + chunk], v[i:i + chunk], values, blocks, **fns)
    flat = out['images'].reshape((-1,) + out['images'].shape[3:])
    image_pred.append(np.argmax(classify(flat), -1).reshape(out['pred'].shape))  # c(x'(t))
    pred.append(out['pred'])
    kept.append(out['images'][:max(0, k - i)])
  pred, image_pred = np.concatenate(pred), np.concatenate(image_pred)
  names = list(test.attribute_names)
  ctx.figures['factor_sweep'] = {
      'original': images[:k], 'sweeps': np.concatenate(kept), 'pred': pred[:k],
      'image_pred': image_pred[:k], 'attributes': names,
      'original_pred': np.argmax(np.asarray(fns['head'](h[:k])), -1)}
  return {'factor_sweep': summary(pred, image_pred, names)}


def summary(pred: np.ndarray, image_pred: np.ndarray, names: list) -> dict:
  """The 'factor_sweep' entry of B sweeps of S steps per attribute: pred [B, A, S] the
  head's labels c2(h'(t)), image_pred [B, A, S] the classifier's labels of the decoded
  images x'(t)."""
  b, _, steps = pred.shape
  return {
      'num_images': int(b), 'steps': int(steps),
      # Share of sweeps whose label at the value-1 class mean differs from that at the
      # value-0 one: the head's reliance on the block, read from h'.
      'head_endpoint_change': dict(zip(names, map(float, sweep.endpoint_change(pred)))),
      # The same read from the decoded images by the whole classifier: whether the images
      # carry the change the head sees.
      'image_endpoint_change': dict(zip(names, map(float, sweep.endpoint_change(image_pred)))),
      # Share of sweep images the classifier labels as the head labels their h'.
      'image_agrees_with_head': float(np.mean(np.asarray(pred) == np.asarray(image_pred)))}
