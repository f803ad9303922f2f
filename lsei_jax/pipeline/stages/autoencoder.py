"""The image autoencoder x ≈ D(E(x)) whose latent v the conditional INN relates to h
(issue 26; docs/method.md § "The invariances as stages"): trained on the train images
alone, so it is the same for any classifier and links to no upstream stage; the
`invariance` node downstream of it and the classifier is linked to both. On with
config.invariance.enabled; its training is config.autoencoder."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.inn import autoencoder
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import host_batch, image0, init_state, on_float_images
from lsei_jax.training import parallel


def enabled(config) -> bool:
  """Both invariance stages run when config.invariance.enabled (off by default)."""
  return bool(config.get('invariance', None) and config.invariance.get('enabled', False))


def model(spec) -> autoencoder.ImageAutoencoder:
  cfg = spec.config.autoencoder
  return autoencoder.ImageAutoencoder(image_size=spec.image_size,
                                      channels=tuple(cfg.channels), latent_dim=cfg.latent_dim)


@functools.lru_cache(maxsize=16)
def encode_fn(ae: autoencoder.ImageAutoencoder, mesh):
  """(AE params, {'image': uint8 [b, S, S, 3]}) → v = E(x) [b, m], data-parallel."""
  return parallel.data_parallel_apply(
      lambda p, b: ae.apply({'params': p}, b['image'].astype(jnp.float32) / 255.0,
                            method='encode'),
      mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def decode_fn(ae: autoencoder.ImageAutoencoder):
  """(AE params, v [b, m]) → images D(v) = sigmoid(logits) [b, S, S, 3] in [0, 1]."""
  return jax.jit(lambda p, v: jax.nn.sigmoid(ae.apply({'params': p}, v, method='decode')))


def latents(ctx: Context, images: np.ndarray, key: str) -> np.ndarray:
  """v = E(x) [N, m] of uint8 images [N, S, S, 3], computed once per key."""
  return ctx.derived(key, lambda: ctx.map(encode_fn(model(ctx.spec), ctx.mesh),
                                          ctx.params('autoencoder'), {'image': images},
                                          f'encode {key}'))


NODE = Node(
    'autoencoder', (), 'autoencoder', ('data', 'autoencoder'),
    template=lambda spec, rng: init_state(model(spec), rng, image0(spec),
                                          spec.config.autoencoder),
    step=lambda ctx: parallel.data_parallel_step(
        on_float_images(autoencoder.make_step()), ctx.mesh,
        compiler_options=parallel.convnet_compiler_options()),
    inputs=lambda ctx: ({'image': ctx.data.images}, host_batch),
    enabled=enabled,
    optional=True,
    present=lambda ctx: os.path.isdir(os.path.join(ctx.workdir, 'autoencoder')))
