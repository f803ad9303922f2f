"""An attribute editor on images (issue 25 item 3, the image estimator): an autoencoder whose
decoder is told the attributes, x̂ = decode(encode(x), a), trained on an annotated training
split; an edit re-decodes a test image with one attribute flipped. Its reliance estimate is
the classifier's change on edited images, trusted only where probes confirm the edit and see
no leakage into the other attributes (`edit_trust`).

encode: image [B, H, W, 3] in [0, 1] → z [B, latent_dim] (small, so that what the attributes
say is cheaper to take from them than to squeeze through z); decode: (z, attributes as ±1)
→ image logits (models.Explainer's upsampling stack). Gaussian noise on z in training makes
z a worse carrier still.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lsei_jax import models, streams

Array = jax.Array


class AttributeAutoencoder(nn.Module):
  """x̂ = decode(encode(x), a): encode [B, H, W, 3] → [B, latent_dim]; decode
  ([B, latent_dim], attributes [B, A] in {0, 1}) → logits [B, H, W, 3]."""
  image_size: int = 32
  latent_dim: int = 4
  channels: Sequence[int] = (16, 32, 32)
  up_channels: Sequence[int] = (128, 64, 32)

  def setup(self):
    self.enc = models.C1(channels=tuple(self.channels), strides=(2,) * len(self.channels),
                         hidden_dim=64)
    self.to_z = nn.Dense(self.latent_dim)
    self.dec = models.Explainer(image_size=self.image_size, channels=tuple(self.up_channels))

  def encode(self, x: Array) -> Array:
    # Bounded, so that training's noise on z limits what z carries (an unbounded z would
    # outgrow the noise and carry the attributes too, and then an edit would change nothing).
    return jnp.tanh(self.to_z(self.enc(x)))

  def decode(self, z: Array, attributes: Array) -> Array:
    return self.dec(jnp.concatenate([z, 2.0 * attributes.astype(jnp.float32) - 1.0], -1))

  def __call__(self, x: Array, attributes: Array) -> Array:
    return self.decode(self.encode(x), attributes)


def train_editor(images: np.ndarray, attributes: np.ndarray, *, seed: int = 0,
                 steps: int = 1500, batch_size: int = 64, learning_rate: float = 2e-3,
                 latent_dim: int = 4, z_noise: float = 0.3,
                 log: Callable[[int, float], None] | None = None
                 ) -> tuple[AttributeAutoencoder, dict]:
  """Fits the editor to uint8 images [N, H, W, 3] and their attributes [N, A] (per-pixel
  binary cross-entropy of the reconstruction). Returns (module, params)."""
  images, attributes = np.asarray(images), np.asarray(attributes, np.float32)
  if images.ndim != 4 or len(images) != len(attributes) or attributes.ndim != 2:
    raise ValueError(f'train_editor: images {images.shape} and attributes {attributes.shape} '
                     'must be [N, H, W, 3] and [N, A]')
  module = AttributeAutoencoder(image_size=images.shape[1], latent_dim=latent_dim)
  x0 = jnp.zeros((1,) + images.shape[1:])
  params = module.init(streams.stream(seed, 'editor/init'), x0,
                       jnp.zeros((1, attributes.shape[1])))['params']
  opt = optax.adam(learning_rate)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, a, key):
    xf = x.astype(jnp.float32) / 255.0

    def loss_fn(p):
      z = module.apply({'params': p}, xf, method=AttributeAutoencoder.encode)
      z = z + z_noise * jax.random.normal(key, z.shape)
      logits = module.apply({'params': p}, z, a, method=AttributeAutoencoder.decode)
      return optax.sigmoid_binary_cross_entropy(logits, xf).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(streams.stream_seed(seed, 'editor/batches'))
  key = streams.stream(seed, 'editor/noise')
  for i in range(steps):
    idx = rng.integers(0, len(images), batch_size)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(images[idx]),
                                   jnp.asarray(attributes[idx]), jax.random.fold_in(key, i))
    if log is not None and (i % 250 == 0 or i == steps - 1):
      log(i, float(loss))
  return module, params


def edit_images(module: AttributeAutoencoder, params, images: np.ndarray,
                attributes: np.ndarray, flip: int | None, batch_size: int = 256) -> np.ndarray:
  """uint8 [N, H, W, 3]: decode(encode(x), a) with attribute column `flip` negated (None:
  the plain reconstruction, the edit's reference)."""
  attributes = np.asarray(attributes, np.float32).copy()
  if flip is not None:
    attributes[:, flip] = 1.0 - attributes[:, flip]
  fn = _edit_fn(module)
  out = [np.asarray(fn(params, jnp.asarray(images[s:s + batch_size]),
                       jnp.asarray(attributes[s:s + batch_size])))
         for s in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros_like(images)


class AttributeProbe(nn.Module):
  """image [B, H, W, 3] in [0, 1] → attribute logits [B, A] (the editor's own probe)."""
  num_attributes: int
  channels: Sequence[int] = (16, 32, 32)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = models.C1(channels=tuple(self.channels), strides=(1, 2, 2), hidden_dim=64)(x)
    return nn.Dense(self.num_attributes)(h)


def train_probe(images: np.ndarray, attributes: np.ndarray, weights: np.ndarray | None = None,
                *, seed: int = 0, steps: int = 800, batch_size: int = 64,
                learning_rate: float = 2e-3) -> Callable[[np.ndarray], np.ndarray]:
  """Attribute probes fitted on uint8 images [N, H, W, 3] and attributes [N, A], batches
  drawn with `weights` [N] (e.g. training.balance's: no attribute tied to the label), so that
  a probe reads its attribute, not one that goes with it. Returns images → probabilities
  [N, A]."""
  attributes = np.asarray(attributes, np.float32)
  module = AttributeProbe(attributes.shape[1])
  params = module.init(streams.stream(seed, 'editor/probe_init'),
                       jnp.zeros((1,) + images.shape[1:]))['params']
  opt = optax.adam(learning_rate)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, a):
    loss_fn = lambda p: optax.sigmoid_binary_cross_entropy(
        module.apply({'params': p}, x.astype(jnp.float32) / 255.0), a).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(streams.stream_seed(seed, 'editor/probe_batches'))
  p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
  for _ in range(steps):
    idx = rng.choice(len(images), batch_size, p=p)
    params, opt_state, _ = step(params, opt_state, jnp.asarray(images[idx]),
                                jnp.asarray(attributes[idx]))
  read = jax.jit(lambda p, x: jax.nn.sigmoid(module.apply({'params': p},
                                                          x.astype(jnp.float32) / 255.0)))
  return lambda imgs: np.concatenate([np.asarray(read(params, jnp.asarray(imgs[s:s + 256])))
                                      for s in range(0, len(imgs), 256)])


@functools.lru_cache(maxsize=8)
def _edit_fn(module: AttributeAutoencoder):
  """(params, uint8 [b, H, W, 3], attributes [b, A]) → uint8 edits [b, H, W, 3], one
  executable per module (a Flax module is a hashable dataclass), not a dict kept forever."""
  return jax.jit(lambda p, x, a: jnp.round(255 * jax.nn.sigmoid(module.apply(
      {'params': p}, x.astype(jnp.float32) / 255.0, a))).astype(jnp.uint8))


def edit_trust(p_reference: np.ndarray, p_edit: np.ndarray, attributes: np.ndarray, a: int,
               *, min_confirm: float = 0.9, max_leakage: float = 0.05) -> dict:
  """Whether an edit of attribute column `a` can be trusted, from probe probabilities [N, A]
  on the reference reconstructions and on the edited images; attributes [N, A] the images'
  true attributes.

  confirm: share of edited images on which the probe reads the flipped value of `a`;
  leakage {attribute: share of images whose reading of that other attribute differs between
  reference and edit}; trusted: confirm ≥ min_confirm and every leakage ≤ max_leakage.
  """
  attributes = np.asarray(attributes).astype(bool)
  read_ref, read_edit = np.asarray(p_reference) > 0.5, np.asarray(p_edit) > 0.5
  confirm = float(np.mean(read_edit[:, a] == ~attributes[:, a]))
  leak = {int(b): float(np.mean(read_edit[:, b] != read_ref[:, b]))
          for b in range(attributes.shape[1]) if b != a}
  worst = max(leak.values()) if leak else 0.0
  return {'confirm': confirm, 'leakage': leak, 'max_leakage': worst,
          'trusted': bool(confirm >= min_confirm and worst <= max_leakage)}
