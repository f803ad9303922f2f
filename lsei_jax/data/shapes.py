"""Biased shapes: a procedural image dataset with known binary attributes (no download).

Each RGB image shows one object on a background. Attributes (all binary, 1 = second name):
  shape      square | circle
  color      red | blue
  size       small | large
  position   left | right
  background dark | light
  texture    plain | striped
The task label is one attribute; a spurious attribute agrees with it in a fraction `rho`
of the images; every other attribute is an independent fair coin. Jitter in hue, position,
size, brightness and pixel noise keeps it from being solved by one pixel; `object_scale`
(< 1: a smaller object) and `noise` make the shape harder to read.

Ground truth of reliance: `render` draws its nuisance (jitter, noise) from the generator
independently of the attribute values, so `counterfactual` — the same split rendered again
with one attribute column flipped — differs from `generate`'s images in that attribute only.
"""
from __future__ import annotations

import zlib

import numpy as np

ATTRIBUTES = ('shape', 'color', 'size', 'position', 'background', 'texture')


def sample_attributes(rng: np.random.Generator, n: int, task: str, spurious: str | None,
                      rho: float) -> np.ndarray:
  """bool [n, A]: label fair; `spurious` equals the label with probability rho."""
  attrs = rng.random((n, len(ATTRIBUTES))) < 0.5
  if spurious is not None:
    t, s = ATTRIBUTES.index(task), ATTRIBUTES.index(spurious)
    agree = rng.random(n) < rho
    attrs[:, s] = np.where(agree, attrs[:, t], ~attrs[:, t])
  return attrs


def render(rng: np.random.Generator, attrs: np.ndarray, image_size: int,
           noise: float = 0.04, object_scale: float = 1.0) -> np.ndarray:
  """uint8 images [n, S, S, 3] for attributes bool [n, A] (vectorised over the batch).

  Every draw from rng has a shape fixed by n alone (never by an attribute value): the same
  generator state renders the same nuisance whatever the attributes are.
  """
  n, S = attrs.shape[0], image_size
  a = {name: attrs[:, i] for i, name in enumerate(ATTRIBUTES)}
  u = lambda lo, hi: rng.uniform(lo, hi, n)[:, None, None]
  yy, xx = np.meshgrid((np.arange(S) + 0.5) / S, (np.arange(S) + 0.5) / S, indexing='ij')
  radius = np.where(a['size'], 0.21, 0.13)[:, None, None] * u(0.9, 1.1) * object_scale
  cx = np.where(a['position'], 0.70, 0.30)[:, None, None] + u(-0.06, 0.06)
  cy = 0.5 + u(-0.15, 0.15)
  dx, dy = xx - cx, yy - cy
  circle = dx**2 + dy**2 <= radius**2
  half = radius * 0.886  # the square of equal area
  square = np.maximum(np.abs(dx), np.abs(dy)) <= half
  inside = np.where(a['shape'][:, None, None], circle, square)

  red = np.array([0.85, 0.15, 0.12])
  blue = np.array([0.15, 0.30, 0.88])
  color = np.where(a['color'][:, None], blue, red) + rng.uniform(-0.08, 0.08, (n, 3))
  stripes = (np.sin(2 * np.pi * (xx + yy) * 4.0 / (radius * 8) + u(0, 2 * np.pi)) > 0)
  shade = np.where(a['texture'][:, None, None] & stripes, 0.45, 1.0)
  bg_level = np.where(a['background'], 0.78, 0.18)[:, None] + rng.uniform(-0.06, 0.06, (n, 1))
  bg = bg_level + rng.uniform(-0.03, 0.03, (n, 3))

  img = np.where(inside[..., None], color[:, None, None, :] * shade[..., None],
                 bg[:, None, None, :])
  img = img + rng.normal(0, noise, img.shape)
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _check(task: str, spurious: str | None, rho: float) -> None:
  for name in (task, spurious):
    if name is not None and name not in ATTRIBUTES:
      raise ValueError(f'unknown shapes attribute {name!r}; known: {", ".join(ATTRIBUTES)}')
  if spurious == task:
    raise ValueError(f'spurious attribute must differ from the task attribute ({task!r})')
  if not 0.0 <= rho <= 1.0:
    raise ValueError(f'rho must be in [0, 1], got {rho}')


def generate(num: int, *, image_size: int = 32, task: str = 'shape',
             spurious: str | None = 'color', rho: float = 0.9, seed: int = 0,
             split: str = 'train', chunk: int = 4096, noise: float = 0.04,
             object_scale: float = 1.0, flip: str | None = None,
             images: bool = True) -> dict[str, np.ndarray]:
  """Deterministic from (seed, split). Returns {'image' uint8 [N,S,S,3], 'attributes' bool [N,A]}.

  flip: an attribute name; its column is negated after sampling and before rendering, so
  the images are the counterfactuals of flip=None's (same nuisance, that attribute changed).
  images=False: the same attributes without rendering ({'attributes'} only; the attributes
  are drawn before any image).
  """
  _check(task, spurious, rho)
  if flip is not None and flip not in ATTRIBUTES:
    raise ValueError(f'cannot flip unknown shapes attribute {flip!r}; known: '
                     f'{", ".join(ATTRIBUTES)}')
  split_id = zlib.crc32(split.encode())  # stable across runs, unlike hash()
  rng = np.random.default_rng([seed, split_id])
  attrs = sample_attributes(rng, num, task, spurious, rho)
  if flip is not None:
    attrs[:, ATTRIBUTES.index(flip)] ^= True
  if not images:
    return {'attributes': attrs}
  rendered = np.concatenate([render(rng, attrs[i:i + chunk], image_size, noise, object_scale)
                             for i in range(0, num, chunk)]) if num else \
      np.zeros((0, image_size, image_size, 3), np.uint8)
  return {'image': rendered, 'attributes': attrs}
