"""The conditional INN of the classifier's invariances (issue 26; Rombach, Esser & Ommer,
ECCV 2020; docs/method.md § "The invariances as stages"): ν = τ(v | h) between the image
autoencoder's latent v = E(x) and h = c1(x), trained on the train split; linked to the
classifier it explains and to the autoencoder. Its evaluator holds h of a few test images
fixed, resamples ν ~ N(0, T²·I), decodes x̃ = D(τ⁻¹(ν | h)) and re-runs the classifier and
the attribute probes on x̃ (metrics.json 'invariance', figure invariance_grid.png). With
config.invariance.base ('linear', 'nearest', 'nearest_white'; inn.conditional_base)
τ = τ₁ ∘ τ₀: the flow τ₁ is trained on ε = τ₀(v | h), the closed-form conditional affine
layer fitted on the train split."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import data as data_lib, errors, invariance_reliance
from lsei_jax.inn import conditional, conditional_base, factor
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


def base_kind(config) -> str:
  k = config.invariance.get('base', 'none')
  if k not in conditional_base.KINDS:
    raise errors.UserError(f'config.invariance.base={k!r} is not one of '
                           f'{", ".join(conditional_base.KINDS)}')
  return k


def base(ctx: Context) -> tuple[conditional_base.AffineBase, np.ndarray]:
  """(τ₀ fitted on the train split's standardised h and v, its m(h) of the train rows)."""
  def fit():
    s = stats(ctx)
    v = ae_stage.latents(ctx, _train_images(ctx), f'v_{ctx.split}_train')
    return conditional_base.fit(base_kind(ctx.spec.config),
                                _std(train_split_h(ctx), s['h']), _std(v, s['v']))
  return ctx.derived('invariance_base', fit)


def to_base(ctx: Context, v_std: np.ndarray, h_std: np.ndarray) -> np.ndarray:
  """ε = τ₀(v | h) [B, m] of standardised v, h (v itself where config.invariance.base is
  'none', so that such runs train and sample as before the base existed)."""
  if base_kind(ctx.spec.config) == 'none':
    return np.asarray(v_std, np.float32)
  b, _ = base(ctx)
  return np.asarray(conditional_base.affine_forward(
      jnp.asarray(b.mean(h_std), jnp.float32), jnp.asarray(b.chol, jnp.float32),
      jnp.asarray(v_std, jnp.float32))[0])


def from_base(ctx: Context, eps: np.ndarray, h_std: np.ndarray) -> np.ndarray:
  """Standardised v = τ₀⁻¹(ε | h) of ε [B, m] or [n, B, m] given h_std [B, d]."""
  if base_kind(ctx.spec.config) == 'none':
    return np.asarray(eps, np.float32)
  b, _ = base(ctx)
  return np.asarray(conditional_base.affine_inverse(
      jnp.asarray(b.mean(h_std), jnp.float32), jnp.asarray(b.chol, jnp.float32),
      jnp.asarray(eps, jnp.float32)))


def _inputs(ctx: Context):
  s = stats(ctx)
  v = _std(ae_stage.latents(ctx, ctx.data.images, f'v_{ctx.split}_train'), s['v'])
  h = h_train(ctx)   # on disk: each batch's rows read, then standardised (elementwise)
  if base_kind(ctx.spec.config) != 'none':   # the flow learns what τ₀ leaves: ε = τ₀(v | h)
    b, train_mean = base(ctx)
    v = np.asarray(conditional_base.affine_forward(
        jnp.asarray(train_mean, jnp.float32), jnp.asarray(b.chol, jnp.float32),
        jnp.asarray(v))[0])
  return ({'v': v, 'index': np.arange(len(v))},
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


def pairwise_disagreement(attr_samples: np.ndarray) -> np.ndarray:
  """[A]: the share of pairs of distinct draws (i ≠ j) of one image whose decisions differ,
  averaged over the images; attr_samples [n ≥ 2, B, A] bool. With k of n draws True, 2k(n − k)
  of the n(n − 1) ordered pairs differ. 0 where the draws of each image agree (nothing
  varies between them, whatever they differ in from the original)."""
  a = np.asarray(attr_samples, bool)
  n, k = a.shape[0], a.sum(0)
  return np.mean(2 * k * (n - k) / (n * (n - 1)), 0)


def latent_probes(ctx: Context) -> list:
  """Per attribute a logistic probe (inn.factor.fit_logistic) on the train split's
  standardised autoencoder latents v = E(x): for the 'pca' autoencoder a linear probe on
  the image's projection onto the components, which D(E(x)) shares with x (E(D(v)) = v up
  to clipping and 8-bit rounding); the image probe, trained on real images, reads shape
  on D(E(x)) at 0.63-0.70 on the demo, this one at 0.84-0.91 (docs/method.md)."""
  def fit():
    s = stats(ctx)
    v = _std(ae_stage.latents(ctx, _train_images(ctx), f'v_{ctx.split}_train'), s['v'])
    y = data_lib.load_annotations(ctx.spec.config.data, 'train')[1]
    return [factor.fit_logistic(v, y[:, a]) for a in range(y.shape[1])]
  return ctx.derived('invariance_latent_probes', fit)


def _latent_reading(ctx: Context, u8: np.ndarray, y: np.ndarray, n: int) -> dict:
  """The latent probes read on the decoded images u8 [B (originals' D(E(x))) + n·B, …]
  re-encoded (E of the stored uint8 image, as the classifier sees it): accuracy on D(E(x))
  against y [B, A], change of the samples against D(E(x)), pairwise_disagreement."""
  ae = ae_stage.model(ctx.spec)
  v = _std(ctx.map(ae_stage.encode_fn(ae, ctx.mesh), ctx.params('autoencoder'),
                   {'image': u8}, 'encode invariance'), stats(ctx)['v'])
  dec = np.stack([factor.probe_predict(p, v) for p in latent_probes(ctx)], -1)
  b = len(y)
  recon, samples = dec[:b], dec[b:].reshape(n, b, -1)
  return {'accuracy': np.mean(recon == np.asarray(y, bool), 0),
          'change': np.mean(samples != recon[None], (0, 1)),
          'changed': samples != recon[None],   # [n, B, A], split by reliance in the hook
          'spread': pairwise_disagreement(samples) if n > 1 else np.zeros(dec.shape[1])}


def summarise_latent(out: dict, reading: dict, names: list, *, change_max: float,
                     min_probe_accuracy: float) -> dict:
  """out (summarise's entry) with the latent probes' reading beside the image probes': the
  same 'unreadable', 'varied', 'unencoded_varied', 'relied_kept' read by them (suffix
  _latent), and 'sample_spread_latent' (pairwise_disagreement)."""
  out = dict(out)
  f = lambda x: {a: float(v) for a, v in zip(names, x)}
  change, acc = reading['change'], reading['accuracy']
  out['latent_probe_accuracy_on_reconstruction'] = f(acc)
  out['attribute_change_latent'] = f(change)
  out['sample_spread_latent'] = f(reading['spread'])
  out['unreadable_latent'] = [a for a, x in zip(names, acc) if x < min_probe_accuracy]
  out['varied_latent'] = [a for a, x in zip(names, change)
                          if x > change_max and a not in out['unreadable_latent']]
  out['unencoded_varied_latent'] = all(
      a in out['varied_latent'] for a in names
      if a not in out['encoded_by_h'] + out['unreadable_latent'])
  if 'relied_on' in out:
    out['relied_kept_latent'] = all(out['attribute_change_latent'][a] <= change_max
                                    for a in out['relied_on'])
  return out


def h_probe_accuracy(h_tr: np.ndarray, y_tr: np.ndarray, h_te: np.ndarray, y_te: np.ndarray
                     ) -> np.ndarray:
  """[A]: test accuracy of a linear (logistic, inn.factor.fit_logistic) probe per attribute
  on h, fit on the train split: what h encodes linearly."""
  return np.array([np.mean(factor.probe_predict(factor.fit_logistic(h_tr, y_tr[:, a]), h_te)
                           == y_te[:, a].astype(bool)) for a in range(y_tr.shape[1])])


def evaluate_invariance(ctx: Context, temperature: float | None = None) -> dict:
  """metrics.json 'invariance' and the figure's arrays (ctx.figures['invariance']);
  temperature: T instead of config.invariance.temperature (not pinned: signature.HARMLESS), for
  benchmarks/invariance_base.py's sweep over T."""
  spec, test, cfg = ctx.spec, ctx.data, ctx.spec.config.invariance
  temp = float(cfg.temperature if temperature is None else temperature)
  split, bs = ctx.classifier, spec.config.eval.batch_size
  b, n = min(int(cfg.eval_images), len(test)), int(cfg.samples)
  images = np.asarray(test.images[:b])
  s = stats(ctx)
  embed = frozen.embed_fn(split.embed, ctx.mesh)
  h_test = ctx.map(embed, split.params, {'image': test.images}, 'embed test')
  v = ae_stage.latents(ctx, images, 'v_invariance_test')
  v_std, h_std = _std(v, s['v']), _std(h_test[:b], s['h'])
  eps = _sampler(model(spec), n, temp)(
      ctx.params('invariance'), jnp.asarray(h_std), spec.stream('eval/invariance'))
  eps0 = to_base(ctx, v_std, h_std)
  round_trip = float(np.max(np.abs(from_base(ctx, np.asarray(_round_trip(model(spec))(
      ctx.params('invariance'), eps0, h_std)), h_std) - v_std)))
  v_samples = from_base(ctx, eps, h_std) * s['v'][1] + s['v'][0]      # [n, B, m]
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
  out = summarise(
      rates, attr_names, acc_h, probe_acc_recon,
      ctx.derived('reliance', lambda: artifacts.ground_truth_reliance(
          spec.config.data, split, test, bs, ctx.mesh, ctx.split)),
      num_images=b, samples=n, temperature=temp,
      reconstruction_mse=float(np.mean((recon - images / 255.0) ** 2)), round_trip=round_trip,
      encoded_min=float(cfg.encoded_min), change_max=float(cfg.change_max),
      relied_min=float(spec.config.eval.min_effect),
      min_probe_accuracy=float(spec.config.eval.get('min_probe_accuracy', 0.75)))
  out['base'] = base_kind(spec.config)
  if out['base'] in conditional_base.NEAREST:   # ground truth: what the train image τ₀ centres on differs in
    out['neighbour_attribute_change'] = dict(zip(attr_names, map(float, np.mean(
        y_tr[base(ctx)[0].neighbours(h_std)].astype(bool) != test.attributes[:b].astype(bool),
        0))))
  reading = None
  if kind_is_pca(spec) and len(attr_names):
    reading = _latent_reading(ctx, u8, test.attributes[:b], n)
    out = summarise_latent(out, reading, attr_names,
                           change_max=float(cfg.change_max),
                           min_probe_accuracy=float(spec.config.eval.get(
                               'min_probe_accuracy', 0.75)))
  flips = ctx.derived(f'invariance_flips_{b}', lambda: artifacts.ground_truth_flips(
      spec.config.data, split, images, attr_names, bs, ctx.mesh, ctx.split))
  if flips is not None:   # the samples apart where c relies on each attribute per image
    out.update(invariance_reliance.summarise_by_reliance(
        flips, attr_names, kept=pred_dec[b:].reshape(n, b) == pred_orig,
        changed=probs[b:].reshape(n, b, -1) != probs[:b][None] if probs.shape[1] else None,
        changed_latent=None if reading is None else reading['changed'],
        change_max=float(cfg.change_max), relied_on=out.get('relied_on')))
  return {'invariance': out}


def kind_is_pca(spec) -> bool:
  """The latent probes read the 'pca' autoencoder's latents (a linear projection of the
  image); a 'conv' autoencoder's are no such reading of the image."""
  return ae_stage.kind(spec.config) == 'pca'


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


def signature_fix(spec, sig: dict) -> dict:
  """The autoencoder's (stages.autoencoder.signature_fix); base pinned only where it is not
  'none', so that checkpoints written before the field existed keep loading."""
  sig = ae_stage.signature_fix(spec, sig)
  if base_kind(spec.config) == 'none':
    sig.pop('invariance.base', None)
  return sig


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
    signature_fix=signature_fix,
    enabled=ae_stage.enabled,
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'invariance')),
    evaluators=(evaluate_invariance, _factor_sweep))
