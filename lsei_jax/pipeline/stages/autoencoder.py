"""The image autoencoder x ≈ D(E(x)) whose latent v the conditional INN relates to h
(issue 26; docs/method.md § "The invariances as stages"): trained on the train images
alone, so it is the same for any classifier and links to no upstream stage; the
`invariance` node downstream of it and the classifier is linked to both. On with
config.invariance.enabled; its training is config.autoencoder. config.autoencoder.kind:
'conv' (inn.autoencoder, trained by the loop) or 'pca' (inn.linear_ae, the principal
components in closed form, stored as a complete 0-step checkpoint)."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import errors
from lsei_jax.inn import autoencoder, linear_ae
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import host_batch, image0, init_state, on_float_images
from lsei_jax.training import checkpoints, parallel, trainer

KINDS = ('conv', 'pca')


def enabled(config) -> bool:
  """Both invariance stages run when config.invariance.enabled (off by default)."""
  return bool(config.get('invariance', None) and config.invariance.get('enabled', False))


def kind(config) -> str:
  k = config.autoencoder.get('kind', 'conv')
  if k not in KINDS:
    raise errors.UserError(f'config.autoencoder.kind={k!r} is not one of {", ".join(KINDS)}')
  return k


def model(spec):
  """The autoencoder of the spec: `ImageAutoencoder` ('conv') or `LinearAutoencoder` ('pca');
  both have encode(images) → v and decode_image(v) → images in [0, 1]."""
  cfg = spec.config.autoencoder
  if kind(spec.config) == 'pca':
    return linear_ae.LinearAutoencoder(image_size=spec.image_size, latent_dim=cfg.latent_dim)
  return autoencoder.ImageAutoencoder(image_size=spec.image_size,
                                      channels=tuple(cfg.channels), latent_dim=cfg.latent_dim)


def signature_fix(spec, sig: dict) -> dict:
  """The 'pca' fields (kind, iterations, oversample) are pinned only where kind is 'pca', so
  that 'conv' checkpoints written before the fields existed keep loading (this node's and
  the invariance node's, which pins the autoencoder section too)."""
  if kind(spec.config) == 'conv':
    for field in ('kind', 'iterations', 'oversample'):
      sig.pop(f'autoencoder.{field}', None)
  return sig


@functools.lru_cache(maxsize=16)
def encode_fn(ae, mesh):
  """(AE params, {'image': uint8 [b, S, S, 3]}) → v = E(x) [b, m], data-parallel."""
  return parallel.data_parallel_apply(
      lambda p, b: ae.apply({'params': p}, b['image'].astype(jnp.float32) / 255.0,
                            method='encode'),
      mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def decode_fn(ae):
  """(AE params, v [b, m]) → images D(v) [b, S, S, 3] in [0, 1]."""
  return jax.jit(lambda p, v: ae.apply({'params': p}, v, method='decode_image'))


def latents(ctx: Context, images: np.ndarray, key: str) -> np.ndarray:
  """v = E(x) [N, m] of uint8 images [N, S, S, 3], computed once per key."""
  return ctx.derived(key, lambda: ctx.map(encode_fn(model(ctx.spec), ctx.mesh),
                                          ctx.params('autoencoder'), {'image': images},
                                          f'encode {key}'))


def pca_state(ctx: Context):
  """The 'pca' autoencoder's state: the template (optimizer state unused) holding the
  principal components of the train images (inn.linear_ae.fit, float64 on the host; its
  random start from the stream 'autoencoder/pca')."""
  from lsei_jax.pipeline import templates  # pylint: disable=g-import-not-at-top  (graph → here)
  cfg = ctx.spec.config.autoencoder
  n, dim = len(ctx.data.images), int(np.prod(ctx.data.images.shape[1:]))
  if not 0 < int(cfg.latent_dim) <= min(n, dim):
    raise errors.UserError(
        f'config.autoencoder.latent_dim={cfg.latent_dim}: the \'pca\' autoencoder keeps at '
        f'most {min(n, dim)} components ({n} train images of {dim} values); lower it')
  mean, w, _ = linear_ae.fit(ctx.data.images, int(cfg.latent_dim),
                             iterations=int(cfg.get('iterations', 3)),
                             oversample=int(cfg.get('oversample', 16)),
                             seed=ctx.spec.stream_seed('autoencoder/pca'))
  state = templates.initial_state(ctx.spec, 'autoencoder', NODE.rngs(ctx.spec)[0])
  return state.replace(params=parallel.replicate(linear_ae.params_of(mean, w), ctx.mesh))


@dataclasses.dataclass(frozen=True)
class AutoencoderNode(Node):
  """Trained by the loop ('conv'), or fitted in closed form ('pca'): stored once as a
  complete 0-step checkpoint and loaded as it is from then on (not refitted, so a stored
  fit is never compared with one made by another machine's BLAS)."""

  def fit(self, ctx: Context, link: dict):
    if kind(ctx.spec.config) != 'pca':
      return super().fit(ctx, link)
    ck = checkpoints.StageCheckpoints(ctx.workdir, self.name, read_only=True) \
        if os.path.isdir(os.path.join(ctx.workdir, self.name)) else None
    try:
      stored = ck is not None and ck.latest_step() is not None
    finally:
      if ck is not None:
        ck.close()
    if stored:   # complete (or refused by name: another config, an unfinished 'conv' run)
      return self.load(ctx, link)
    return trainer.save_untrained(ctx.workdir, self.name, pca_state(ctx), self.signature(ctx.spec))


NODE = AutoencoderNode(
    'autoencoder', (), 'autoencoder', ('data', 'autoencoder'),
    template=lambda spec, rng: init_state(model(spec), rng, image0(spec),
                                          spec.config.autoencoder),
    step=lambda ctx: parallel.data_parallel_step(
        on_float_images(autoencoder.make_step()), ctx.mesh,
        compiler_options=parallel.convnet_compiler_options()),
    inputs=lambda ctx: ({'image': ctx.data.images}, host_batch),
    signature_fix=signature_fix,
    enabled=enabled,
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'autoencoder')))
