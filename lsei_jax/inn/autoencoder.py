"""A small convolutional image autoencoder: the image model whose latent v the conditional
INN relates to h (docs/method.md § "The INN (issue 26)"; Rombach et al., ECCV 2020, use a
pretrained autoencoder in this role).

Encoder: one stride-2 3×3 convolution (ReLU) per entry of `channels`, flatten, Dense(m) = v.
Decoder: `models.Explainer`'s architecture on v (Dense to a small feature map, stride-2
4×4 transposed convolutions back up to the image), image = sigmoid(logits).
Loss: mean binary cross-entropy against the image in [0, 1], as the explainer's.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsei_jax import layers, losses, models
from lsei_jax import train_state

Array = jax.Array


class ImageAutoencoder(nn.Module):
  """images [B, S, S, 3] in [0, 1] ↔ v [B, latent_dim]; `__call__` gives image logits."""
  image_size: int = 64
  channels: Sequence[int] = (32, 64, 128)
  latent_dim: int = 64

  def setup(self):
    n = len(self.channels)
    if self.image_size % 2 ** n:
      raise ValueError(f'autoencoder: image_size {self.image_size} is not a multiple of '
                       f'2^{n} (one halving per entry of channels={tuple(self.channels)})')
    self.convs = [layers.Conv(ch, (3, 3), strides=2) for ch in self.channels]
    self.to_latent = nn.Dense(self.latent_dim)
    self.decoder = models.Explainer(image_size=self.image_size,
                                    channels=tuple(reversed(self.channels)))

  def encode(self, images: Array) -> Array:
    """v [B, latent_dim]."""
    x = images
    for conv in self.convs:
      x = nn.relu(conv(x))
    return self.to_latent(x.reshape(x.shape[0], -1))

  def decode(self, v: Array) -> Array:
    """Image logits [B, S, S, 3]; the image is sigmoid(logits)."""
    return self.decoder(v)

  def decode_image(self, v: Array) -> Array:
    """The image sigmoid(decode(v)) [B, S, S, 3] in [0, 1]."""
    return jax.nn.sigmoid(self.decode(v))

  def __call__(self, images: Array) -> Array:
    return self.decode(self.encode(images))


def make_step() -> Callable:
  """Data-parallel train step (state, batch, rng) -> (state, metrics), state from
  `train_state.create_train_state(ImageAutoencoder(...), rng, images[:1], tx)`.
  batch: image float [b, S, S, 3] in [0, 1]."""
  def step(state: train_state.TrainState, batch: dict, rng: Array) -> tuple[train_state.TrainState, dict]:
    del rng  # no noise in this model
    images = batch['image']

    def loss_fn(params):
      logits = state.apply_fn({'params': params}, images)
      return losses.bce_with_logits(logits, images), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    mse = jnp.mean((jax.nn.sigmoid(logits) - images) ** 2)
    return train_state.apply_gradients(state, grads, {'loss': loss, 'mse': mse})
  return step
