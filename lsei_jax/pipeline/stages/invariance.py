"""The conditional INN of the classifier's invariances (issue 26; Rombach, Esser & Ommer,
ECCV 2020; docs/method.md § "The invariances as stages"): ν = τ(v | h) between the image
autoencoder's latent v = E(x) and h = c1(x), trained on the train split; linked to the
classifier it explains and to the autoencoder. Its evaluator holds h of a few test images
fixed, resamples ν ~ N(0, T²·I), decodes x̃ = D(τ⁻¹(ν | h)) and re-runs the classifier and
the attribute probes on x̃ (metrics.json 'invariance', figure invariance_grid.png)."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import data as data_lib
from lsei_jax.inn import conditional, factor
from lsei_jax.pipeline import artifacts, frozen
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import autoencoder as ae_stage
from lsei_jax.pipeline.stages.concepts import h_train, train_split_h
from lsei_jax.pipeline.stages.inn import standardise
from lsei_jax.training import parallel, steps


def model(spec) -> conditional.ConditionalINN:
  """The conditional INN of the spec; ActNorm without data init (v and h are standardised
  by the train split's statistics instead, so the template needs no data)."""
  c = spec.config.invariance
  return conditional.ConditionalINN(num_steps=c.num_steps, hidden=tuple(c.hidden),
                                    embed=tuple(c.embed), clamp=c.clamp, linear=c.linear,
                                    seed=c.seed, data_init=False)


def _train_images(ctx: Context) -> np.ndarray:
  return ctx.data.images if ctx.split == 'train' else artifacts.train_images(ctx)


def stats(ctx: Context) -> dict:
  """Per-feature (mean, scale) of h and of v over the train split (stages.inn.standardise)."""
  return ctx.derived('invariance_stats', lambda: {
      'h': standardise(train_split_h(ctx)),
      'v': standardise(ae_stage.latents(ctx, _train_images(ctx), f'v_{ctx.split}_train'))})


def _std(x: np.ndarray, ms: tuple) -> np.ndarray:
  return ((np.asarray(x) - ms[0]) / ms[1]).astype(np.float32)


def _inputs(ctx: Context):
  s = stats(ctx)
  v = ae_stage.latents(ctx, ctx.data.images, f'v_{ctx.split}_train')
  h = h_train(ctx)   # on disk: each batch's rows read, then standardised (elementwise)
  return ({'v': _std(v, s['v']), 'index': np.arange(len(v))},
          lambda b: {'v': b['v'], 'h': _std(h[b['index']], s['h'])})


@functools.lru_cache(maxsize=8)
def _sampler(inn: conditional.ConditionalINN, n: int, temperature: float):
  return jax.jit(lambda p, h, k: conditional.sample_invariances(inn, p, h, k, n, temperature))


@functools.lru_cache(maxsize=8)
def _round_trip(inn: conditional.ConditionalINN):
  """(params, v [B, m], h [B, d]) → τ⁻¹(τ(v | h) | h) [B, m]."""
  return jax.jit(lambda p, v, h: inn.apply({'params': p}, conditional.residual(inn, p, v, h),
                                           h, method='inverse'))


@functools.lru_cache(maxsize=16)
def _probe_images_fn(probe, mesh):
  """(probe params, {'image': uint8}) → attribute probabilities [b, A]."""
  return parallel.data_parallel_apply(
      lambda p, b: jax.nn.sigmoid(probe.apply({'params': p},
                                              b['image'].astype(jnp.float32) / 255.0)),
      mesh, parallel.convnet_compiler_options())


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Images in [0, 1] → uint8, as a decoded image would be stored and read back."""
  return np.round(np.clip(np.asarray(images), 0, 1) * 255).astype(np.uint8)


def invariance_rates(pred_orig: np.ndarray, pred_recon: np.ndarray, pred_samples: np.ndarray,
                     attr_recon: np.ndarray, attr_samples: np.ndarray) -> dict:
  """Shares over the invariance samples of B images, n samples each.

  pred_orig, pred_recon [B]: the classifier's labels of the images and of D(E(x));
  pred_samples [n, B]: of the samples; attr_recon [B, A], attr_samples [n, B, A]: the
  probes' decisions (bool). → label_kept (samples labelled as the original), recon_label_kept
  (D(E(x)) labelled as the original), attribute_change [A] (samples whose probe decision
  differs from D(E(x))'s)."""
  pred_samples, attr_samples = np.asarray(pred_samples), np.asarray(attr_samples, bool)
  return {'label_kept': float(np.mean(pred_samples == np.asarray(pred_orig)[None])),
          'recon_label_kept': float(np.mean(np.asarray(pred_recon) == pred_orig)),
          'attribute_change': np.mean(attr_samples != np.asarray(attr_recon, bool)[None],
                                      axis=(0, 1))}


def h_probe_accuracy(h_tr: np.ndarray, y_tr: np.ndarray, h_te: np.ndarray, y_te: np.ndarray
                     ) -> np.ndarray:
  """[A]: test accuracy of a linear (logistic, inn.factor.fit_logistic) probe per attribute
  on h, fit on the train split: what h encodes linearly."""
  return np.array([np.mean(factor.probe_predict(factor.fit_logistic(h_tr, y_tr[:, a]), h_te)
                           == y_te[:, a].astype(bool)) for a in range(y_tr.shape[1])])


def evaluate_invariance(ctx: Context) -> dict:
  """metrics.json 'invariance' and the figure's arrays (ctx.figures['invariance'])."""
  spec, test, cfg = ctx.spec, ctx.data, ctx.spec.config.invariance
  split, bs = ctx.classifier, spec.config.eval.batch_size
  b, n = min(int(cfg.eval_images), len(test)), int(cfg.samples)
  images = np.asarray(test.images[:b])
  s = stats(ctx)
  embed = frozen.embed_fn(split.embed, ctx.mesh)
  h_test = ctx.map(embed, split.params, {'image': test.images}, 'embed test')
  v = ae_stage.latents(ctx, images, 'v_invariance_test')
  sample_std = _sampler(model(spec), n, float(cfg.temperature))(
      ctx.params('invariance'), jnp.asarray(_std(h_test[:b], s['h'])),
      spec.stream('eval/invariance'))
  v_std, h_std = _std(v, s['v']), _std(h_test[:b], s['h'])
  round_trip = float(np.max(np.abs(np.asarray(_round_trip(model(spec))(
      ctx.params('invariance'), v_std, h_std)) - v_std)))
  v_samples = np.asarray(sample_std) * s['v'][1] + s['v'][0]           # [n, B, m]
  decode = ae_stage.decode_fn(ae_stage.model(spec))
  decoded = np.asarray(decode(ctx.params('autoencoder'),
                              jnp.concatenate([v, v_samples.reshape(n * b, -1)])))
  recon, samples = decoded[:b], decoded[b:].reshape((n, b) + decoded.shape[1:])
  u8 = to_uint8(decoded)
  classify = artifacts.classify_fn(split, bs, ctx.mesh)
  pred = lambda x: np.argmax(classify(x), -1)
  pred_orig, pred_dec = pred(images), pred(u8)
  attr_names, probe_acc_recon = list(test.attribute_names), None
  if 'probe' in ctx.states:
    probs = ctx.map(_probe_images_fn(ctx.mods.probe, ctx.mesh), ctx.params('probe'),
                    {'image': u8}, 'probe invariance') > 0.5
    probe_acc_recon = np.mean(probs[:b] == test.attributes[:b].astype(bool), 0)
  else:   # no probes: the label share alone
    probs = np.zeros((b * (n + 1), 0), bool)
  rates = invariance_rates(pred_orig, pred_dec[:b], pred_dec[b:].reshape(n, b), probs[:b],
                           probs[b:].reshape(n, b, -1))
  y_tr = data_lib.load_annotations(spec.config.data, 'train')[1]
  acc_h = h_probe_accuracy(_std(train_split_h(ctx), s['h']), y_tr, _std(h_test, s['h']),
                           test.attributes)
  ctx.figures['invariance'] = {'original': images[:cfg.figure_images] / 255.0,
                               'reconstruction': recon[:cfg.figure_images],
                               'samples': samples[:cfg.figure_samples, :cfg.figure_images]}
  return {'invariance': summarise(
      rates, attr_names, acc_h, probe_acc_recon,
      ctx.derived('reliance', lambda: artifacts.ground_truth_reliance(
          spec.config.data, split, test, bs, ctx.mesh)),
      num_images=b, samples=n, temperature=float(cfg.temperature),
      reconstruction_mse=float(np.mean((recon - images / 255.0) ** 2)), round_trip=round_trip,
      encoded_min=float(cfg.encoded_min), change_max=float(cfg.change_max),
      relied_min=float(spec.config.eval.min_effect),
      min_probe_accuracy=float(spec.config.eval.get('min_probe_accuracy', 0.75)))}


def summarise(rates: dict, names: list, acc_h: np.ndarray, probe_acc_recon, reliance,
              *, num_images: int, samples: int, temperature: float, reconstruction_mse: float,
              round_trip: float, encoded_min: float, change_max: float, relied_min: float,
              min_probe_accuracy: float) -> dict:
  """The 'invariance' entry: the shares, and which attributes the samples vary (change
  > change_max) against which h encodes (linear probe ≥ encoded_min) and which the
  classifier relies on by the ground truth (flip rate ≥ relied_min; absent without it).
  probe_acc_recon [A]: the probes' accuracy on D(E(x)); below min_probe_accuracy an
  attribute is unreadable there."""
  change = rates['attribute_change']
  out = {'num_images': num_images, 'samples_per_image': samples, 'temperature': temperature,
         'label_kept': rates['label_kept'], 'recon_label_kept': rates['recon_label_kept'],
         'reconstruction_mse': reconstruction_mse,
         'round_trip_max_abs': round_trip,   # |τ⁻¹(τ(v | h) | h) − v| on standardised v
         'h_probe_accuracy': {a: float(x) for a, x in zip(names, acc_h)},
         'encoded_by_h': [a for a, x in zip(names, acc_h) if x >= encoded_min]}
  if len(change):
    out['attribute_change'] = {a: float(x) for a, x in zip(names, change)}
    out['probe_accuracy_on_reconstruction'] = {a: float(x) for a, x in zip(names, probe_acc_recon)}
    # A probe that cannot read its attribute on D(E(x)) changes its decision at random:
    # such attributes are named, and not counted as varied or kept.
    out['unreadable'] = [a for a, x in zip(names, probe_acc_recon) if x < min_probe_accuracy]
    out['varied'] = [a for a, x in zip(names, change)
                     if x > change_max and a not in out['unreadable']]
    out['unencoded_varied'] = all(a in out['varied'] for a in names
                                  if a not in out['encoded_by_h'] + out['unreadable'])
  if reliance is not None:
    out['relied_on'] = [a for a in names if reliance[a]['flip_rate'] >= relied_min]
    if len(change):
      out['relied_kept'] = all(out['attribute_change'][a] <= change_max for a in out['relied_on'])
  return out


def _factor_sweep(ctx: Context) -> dict:
  """The factor sweeps (pipeline/factor_sweep.py) where the factor INN is trained too;
  imported here, at call time, because that module builds on this one."""
  from lsei_jax.pipeline import factor_sweep  # pylint: disable=g-import-not-at-top
  return factor_sweep.evaluate_factor_sweep(ctx)


NODE = Node(
    'invariance', ('classifier', 'autoencoder'), 'invariance',
    ('data', 'model.classifier', 'autoencoder', 'invariance'),
    template=lambda spec, rng: conditional.create_state(
        model(spec), rng, jnp.zeros((2, spec.config.autoencoder.latent_dim)),
        jnp.zeros((2, spec.d)),
        steps.make_optimizer(spec.config.invariance, max(spec.config.invariance.steps, 1))),
    step=lambda ctx: parallel.data_parallel_step(
        conditional.make_step(model(ctx.spec), float(ctx.spec.config.invariance.noise_std)),
        ctx.mesh),
    inputs=_inputs,
    signature_fix=ae_stage.signature_fix,
    enabled=ae_stage.enabled,
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'invariance')),
    evaluators=(evaluate_invariance, _factor_sweep))
