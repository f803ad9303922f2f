"""Flax linen models (docs/method.md §3): the classifier split as c2∘c1, the DVAE, the explainer g.

No training logic here. Every size is a module attribute; defaults follow the paper.
Images are NHWC float32 in [0, 1]. `compute_dtype` ('float32' or 'bfloat16',
config.model.compute_dtype) is the dtype of the matmul operands of c1's and the DVAE's dense
layers (layers.Dense: float32 parameters, accumulation and outputs). Always float32: the
convolutions (on XLA:CPU a bfloat16 convolution is no faster) and the two functions whose
Fisher information is measured, c2 and g: f(e + ε) is a small difference of their outputs,
which bfloat16 rounding of e + ε and of the logits would blur.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsei_jax.layers import Conv, Dense, Upsample2x  # noqa: F401  (Upsample2x: public here too)
from lsei_jax.relaxed_bernoulli import hard_code, relaxed_bernoulli

Array = jax.Array


class C1(nn.Module):
  """Image [B, H, W, 3] → embedding h [B, d]: 3×3 convs + ReLU, flatten, Dense(d) + ReLU."""
  channels: Sequence[int] = (32, 32, 64, 64, 128, 128)
  strides: Sequence[int] = (1, 2, 1, 2, 1, 2)
  hidden_dim: int = 256
  compute_dtype: str = 'float32'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i, (ch, s) in enumerate(zip(self.channels, self.strides, strict=True)):
      # layers.Conv == nn.Conv(ch, (3, 3), strides=s, padding='SAME'), same names and
      # parameters, with a faster input gradient when strided.
      x = nn.relu(Conv(ch, (3, 3), strides=s, name=f'Conv_{i}')(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(Dense(self.hidden_dim, self.compute_dtype)(x))


class C2(nn.Module):
  """Embedding h [B, d] → logits [B, C]: Dropout, Dense(C)."""
  num_classes: int = 2
  dropout: float = 0.5

  @nn.compact
  def __call__(self, h: Array, train: bool = False) -> Array:
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_classes)(h)


class Classifier(nn.Module):
  """c = c2 ∘ c1, with parameters {'c1': …, 'c2': …} so each half can be applied alone."""
  channels: Sequence[int] = (32, 32, 64, 64, 128, 128)
  strides: Sequence[int] = (1, 2, 1, 2, 1, 2)
  hidden_dim: int = 256
  num_classes: int = 2
  dropout: float = 0.5
  compute_dtype: str = 'float32'

  def setup(self):
    self.c1 = C1(self.channels, self.strides, self.hidden_dim, self.compute_dtype)
    self.c2 = C2(self.num_classes, self.dropout)  # float32: its Fisher information is read

  def __call__(self, x: Array, train: bool = False) -> Array:
    """Logits [B, C]."""
    return self.c2(self.c1(x), train)

  def embed(self, x: Array) -> Array:
    """h = c1(x) [B, d]."""
    return self.c1(x)

  def head(self, h: Array, train: bool = False) -> Array:
    """c2(h) [B, C]."""
    return self.c2(h, train)


class MLP(nn.Module):
  """Dense stack with ReLU + Dropout between layers and a linear last layer."""
  features: Sequence[int]
  dropout: float = 0.0
  compute_dtype: str = 'float32'

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    for i, f in enumerate(self.features):
      x = Dense(f, self.compute_dtype)(x)
      if i < len(self.features) - 1:
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    return x


class DVAE(nn.Module):
  """Discrete VAE on embeddings: encoder h [B, d] → K Bernoulli logits, decoder z [B, K] → ĥ [B, d]."""
  hidden_dim: int = 256
  latent_dim: int = 32
  hidden: Sequence[int] = (512, 256, 128)
  dropout: float = 0.1
  compute_dtype: str = 'float32'

  def setup(self):
    self.encoder = MLP(tuple(self.hidden) + (self.latent_dim,), self.dropout,
                       self.compute_dtype)
    self.decoder = MLP(tuple(reversed(self.hidden)) + (self.hidden_dim,), self.dropout,
                       self.compute_dtype)

  def encode(self, h: Array, train: bool = False) -> Array:
    """Bernoulli logits l [B, K]."""
    return self.encoder(h, train)

  def decode(self, z: Array, train: bool = False) -> Array:
    """ĥ [B, d] from codes z [B, K] (relaxed or boolean)."""
    return self.decoder(z, train)

  def __call__(self, h: Array, *, temperature: float | Array = 1.0, hard: bool = False,
               train: bool = False) -> tuple[Array, Array, Array]:
    """Returns (ĥ [B, d], logits [B, K], z [B, K]).

    train=True samples a relaxed Bernoulli code (uses the 'latent' rng); otherwise the
    deterministic code z = 1[l > 0].
    """
    logits = self.encode(h, train)
    if train:
      z = relaxed_bernoulli(self.make_rng('latent'), logits, temperature, hard)
    else:
      z = hard_code(logits)
    return self.decode(z, train), logits, z


class Explainer(nn.Module):
  """g: embedding [B, d] → image logits [B, H, W, out_channels]; the image is sigmoid(logits).

  Dense(channels[0]·s0²) + ReLU with s0 = image_size / 2^len(channels), then one stride-2
  4×4 transposed conv per entry of channels (ReLU between), the last to out_channels.
  """
  image_size: int = 64
  channels: Sequence[int] = (256, 128, 64, 32)
  out_channels: int = 3

  @nn.compact
  def __call__(self, e: Array) -> Array:
    n_up = len(self.channels)
    s0 = self.image_size // 2**n_up
    if s0 < 1 or s0 * 2**n_up != self.image_size:
      raise ValueError(f'explainer: image_size {self.image_size} is not a multiple of '
                       f'2^{n_up} (one doubling per entry of channels={tuple(self.channels)})')
    x = nn.relu(nn.Dense(self.channels[0] * s0 * s0)(e))  # float32: see the module doc
    x = x.reshape(e.shape[0], s0, s0, self.channels[0])
    outs = tuple(self.channels[1:]) + (self.out_channels,)
    for i, ch in enumerate(outs):
      # Named as nn.ConvTranspose would be: the parameter tree is the transposed conv's.
      x = Upsample2x(ch, name=f'ConvTranspose_{i}')(x)
      if i < len(outs) - 1:
        x = nn.relu(x)
    return x
