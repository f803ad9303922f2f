"""A linear image autoencoder: the top principal components of the train images, in closed
form (docs/method.md § "The invariances as stages"; config.autoencoder.kind = 'pca').

With x ∈ [0, 1]^D the flattened image (D = S·S·3), μ the train mean and W [D, m] the
orthonormal eigenvectors of the train covariance C = (1/N) Σ (x − μ)(x − μ)ᵀ with the m
largest eigenvalues:

  E(x) = Wᵀ (x − μ) [m],    D(v) = clip(μ + W v, 0, 1).

D ∘ E is the orthogonal projection onto μ + span(W) (then clipped): the rank-m linear map
of least mean squared reconstruction error on the train split (Eckart–Young). W is found by
randomised subspace iteration (Halko, Martinsson & Tropp, SIAM Review 2011, Alg. 4.4 and
§ 5.5) on C: l = m + oversample random directions, 1 + `iterations` products
Q ← orth(C Q), then the Rayleigh–Ritz eigenvectors of Qᵀ C Q (the products with the images in
float32 by default, jitted on the default device: an accelerator where there is one; the
rest in float64 on the host).
Each product is one pass over the images in row chunks (never all of them as floats at
once). Where l ≥ rank(C) the result is exact (the span of C Q is C's range), to float32
rounding (float64 with dtype=np.float64).
"""
from __future__ import annotations

import functools
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

Array = jax.Array


def _chunks(images, chunk: int, dtype=np.float64, mean=None) -> Iterator[np.ndarray]:
  """Rows [b, D] of `dtype` in [0, 1] of uint8 (or float in [0, 1]) images [N, …], chunked,
  less `mean` [D] where given (scaled and centred in place: one array per chunk)."""
  scale = 255.0 if np.asarray(images[:1]).dtype == np.uint8 else 1.0
  for i in range(0, len(images), chunk):
    x = np.asarray(images[i:i + chunk])
    x = x.reshape(len(x), -1).astype(dtype)
    x *= dtype(1.0 / scale)
    if mean is not None:
      x -= mean
    yield x


@functools.partial(jax.jit, static_argnames=('gram',))
def _chunk_product(x: Array, mask: Array, q: Array, mean: Array, scale: float,
                   gram: bool) -> Array:
  """One chunk's X_cᵀ(X_c Q) [D, l] (gram: (X_c Q)ᵀ(X_c Q) [l, l]) in float32 on the device,
  X_c = (x · scale − mean) ⊙ mask: x [b, …] uint8 or float, the rows with mask 0 (the last
  chunk's padding, so that one executable serves every chunk) contribute nothing.
  HIGHEST: a GPU's default float32 matmul rounds its operands to TF32 (10 bits)."""
  xc = (x.reshape(x.shape[0], -1).astype(jnp.float32) * scale - mean) * mask[:, None]
  b = jnp.matmul(xc, q, precision=jax.lax.Precision.HIGHEST)
  return jnp.matmul((b if gram else xc).T, b, precision=jax.lax.Precision.HIGHEST)


def _passes(images, mean: np.ndarray, q: np.ndarray, chunk: int, dtype, gram: bool
            ) -> np.ndarray:
  """Σ over chunks of X_cᵀ(X_c Q) [D, l] (gram: (X_c Q)ᵀ(X_c Q) [l, l]) / N, X_c the rows
  less `mean`, each chunk's products in `dtype` (float32: jitted, on the default device,
  e.g. an accelerator; float64: NumPy), their sum over chunks in float64 on the host."""
  n = len(images)
  out = np.zeros((q.shape[1],) * 2 if gram else q.shape, np.float64)
  if dtype != np.float32:
    qd = q.astype(dtype)
    for xc in _chunks(images, chunk, dtype, mean.astype(dtype)):
      b = xc @ qd
      out += b.T @ b if gram else xc.T @ b
    return out / n
  chunk = min(chunk, n)
  scale = 1.0 / 255.0 if np.asarray(images[:1]).dtype == np.uint8 else 1.0
  q32, mean32 = jnp.asarray(q, jnp.float32), jnp.asarray(mean, jnp.float32)
  for i in range(0, n, chunk):
    x = np.asarray(images[i:i + chunk])
    mask = np.arange(chunk) < len(x)
    if len(x) < chunk:   # padded to one shape: one executable for every chunk
      x = np.concatenate([x, np.zeros((chunk - len(x),) + x.shape[1:], x.dtype)])
    out += np.asarray(_chunk_product(x, mask.astype(np.float32), q32, mean32, scale, gram))
  return out / n


def _cov_times(images, mean: np.ndarray, q: np.ndarray, chunk: int, dtype) -> np.ndarray:
  """C Q [D, l] (float64) for Q [D, l], C the covariance of the images about `mean`, in one
  pass: each chunk's products in `dtype`, their sum over chunks in float64."""
  return _passes(images, mean, q, chunk, dtype, gram=False)


def _projected_cov(images, mean: np.ndarray, q: np.ndarray, chunk: int,
                   dtype) -> np.ndarray:
  """Qᵀ C Q [l, l] = Σ (X_c Q)ᵀ(X_c Q) / N, each chunk's products in `dtype`, their sum in
  float64: one product of the images per chunk (half the work of Qᵀ (C Q))."""
  return _passes(images, mean, q, chunk, dtype, gram=True)


def _orthonormal(y: np.ndarray) -> np.ndarray:
  """An orthonormal basis [D, l] of the columns of y [D, l]: Cholesky QR twice (Fukaya et
  al., 2014), matrix products and an l × l factorisation, stable for cond(y) ≤ 1e6 here.
  Householder QR (the fallback where y is nearer rank-deficient, e.g. l > rank C) does
  the same work in many small synchronised steps, which took 3-10× as long where the BLAS
  threads share busy cores (measured on 3072 × 272)."""
  q = y
  for _ in range(2):
    try:
      r = np.linalg.cholesky(q.T @ q)                      # lower, q = z rᵀ
    except np.linalg.LinAlgError:
      return np.linalg.qr(y)[0]
    d = np.diag(r)
    if d.min() <= 1e-6 * d.max():
      return np.linalg.qr(y)[0]
    q = scipy.linalg.solve_triangular(r, q.T, lower=True).T
  return q


def fit(images, latent_dim: int, *, iterations: int = 3, oversample: int = 16, seed: int = 0,
        chunk: int = 2048, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean μ [D], components W [D, m] orthonormal, variances [m] descending) of images
  [N, S, S, C] (uint8, or float in [0, 1]); float64. The products with the images are in
  `dtype` (float32, jitted: a third of float64's time on the host, W is stored as float32
  anyway; on a 2-core CPU XLA's pass took 0.64× NumPy's at l = 784), the mean,
  the sums over chunks and the l × l algebra in float64. Each component's entry of largest
  magnitude is made positive, so the result does not depend on the eigensolver's signs."""
  n = len(images)
  mean = sum(x.sum(0) for x in _chunks(images, chunk)) / n
  dim = mean.shape[0]
  if not 0 < latent_dim <= min(dim, n):
    raise ValueError(f'autoencoder.latent_dim={latent_dim} must be in [1, {min(dim, n)}] '
                     f'(the images have {dim} values, the split {n} images)')
  width = min(latent_dim + oversample, dim)
  q = _orthonormal(np.random.default_rng(seed).standard_normal((dim, width)))
  for _ in range(iterations + 1):   # the first product spans C's range where l ≥ rank(C)
    q = _orthonormal(_cov_times(images, mean, q, chunk, dtype))
  small = _projected_cov(images, mean, q, chunk, dtype)
  theta, u = np.linalg.eigh((small + small.T) / 2)       # ascending
  order = np.argsort(theta)[::-1][:latent_dim]
  w = q @ u[:, order]
  w = w * np.sign(w[np.argmax(np.abs(w), 0), np.arange(latent_dim)])
  return mean, w, theta[order]


class LinearAutoencoder(nn.Module):
  """images [B, S, S, 3] in [0, 1] ↔ v [B, latent_dim] by the principal components:
  params 'mean' [D] and 'components' [D, m], set by `fit` (zeros at init)."""
  image_size: int = 32
  latent_dim: int = 32
  channels: int = 3

  def setup(self):
    dim = self.image_size * self.image_size * self.channels
    self.mean = self.param('mean', nn.initializers.zeros, (dim,))
    self.components = self.param('components', nn.initializers.zeros, (dim, self.latent_dim))

  def encode(self, images: Array) -> Array:
    """v = Wᵀ(x − μ) [B, m]."""
    return (images.reshape(images.shape[0], -1) - self.mean) @ self.components

  def decode_image(self, v: Array) -> Array:
    """D(v) = clip(μ + W v, 0, 1) [B, S, S, C]."""
    x = self.mean + v @ self.components.T
    return jnp.clip(x, 0.0, 1.0).reshape(
        (v.shape[0], self.image_size, self.image_size, self.channels))

  def __call__(self, images: Array) -> Array:
    return self.decode_image(self.encode(images))


def params_of(mean: np.ndarray, components: np.ndarray) -> dict:
  """`LinearAutoencoder` params (float32) of `fit`'s output."""
  return {'mean': jnp.asarray(mean, jnp.float32),
          'components': jnp.asarray(components, jnp.float32)}

