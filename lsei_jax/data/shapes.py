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
from typing import Iterator

import numpy as np

ATTRIBUTES = ('shape', 'color', 'size', 'position', 'background', 'texture')
# Images rendered per call of render (its draws are shaped by it: part of the data's identity).
CHUNK = 4096


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
           noise: float = 0.04, object_scale: float = 1.0,
           piece: int | None = None) -> np.ndarray:
  """uint8 images [n, S, S, 3] for attributes bool [n, A] (vectorised over the batch).

  Every draw from rng has a shape fixed by n alone (never by an attribute value): the same
  generator state renders the same nuisance whatever the attributes are.
  """
  return _stack(render_pieces(rng, attrs, image_size, noise, object_scale, piece),
                (attrs.shape[0], image_size, image_size, 3))


def _stack(pieces: Iterator[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
  """uint8 `shape`: the pieces one after the other (never two copies of the whole)."""
  out = np.empty(shape, np.uint8)
  start = 0
  for images in pieces:
    out[start:start + len(images)] = images
    start += len(images)
  return out


def render_pieces(rng: np.random.Generator, attrs: np.ndarray, image_size: int,
                  noise: float = 0.04, object_scale: float = 1.0,
                  piece: int | None = None) -> Iterator[np.ndarray]:
  """render's images in order, `piece` at a time (uint8 [≤ piece, S, S, 3]; default
  PIECE_VALUES float64 values a piece), drawing from rng as render does.

  The per-image draws are made for all n first, then each piece's pixel noise in turn:
  the noise is the last draw and a normal draw of n·k values is the same values as
  consecutive draws of its parts, so the bytes do not depend on `piece`, while the float64
  intermediates hold a piece, not all n images (over 1 GB for 4,096 at 64×64). Consume it
  whole before drawing from rng again.
  """
  if piece is not None and piece < 1:
    raise ValueError(f'render: piece={piece} must be a positive number of images')
  n, S = attrs.shape[0], image_size
  a = {name: attrs[:, i] for i, name in enumerate(ATTRIBUTES)}
  u = lambda lo, hi: rng.uniform(lo, hi, n)[:, None, None]
  yy, xx = np.meshgrid((np.arange(S) + 0.5) / S, (np.arange(S) + 0.5) / S, indexing='ij')
  radius = np.where(a['size'], 0.21, 0.13)[:, None, None] * u(0.9, 1.1) * object_scale
  cx = np.where(a['position'], 0.70, 0.30)[:, None, None] + u(-0.06, 0.06)
  cy = 0.5 + u(-0.15, 0.15)
  red = np.array([0.85, 0.15, 0.12])
  blue = np.array([0.15, 0.30, 0.88])
  color = np.where(a['color'][:, None], blue, red) + rng.uniform(-0.08, 0.08, (n, 3))
  phase = u(0, 2 * np.pi)
  bg_level = np.where(a['background'], 0.78, 0.18)[:, None] + rng.uniform(-0.06, 0.06, (n, 1))
  bg = bg_level + rng.uniform(-0.03, 0.03, (n, 3))

  if piece is None:
    piece = max(1, PIECE_VALUES // max(S * S * 3, 1))   # at least one image
  for s in range(0, n, piece):   # elementwise below: a piece's values are the whole's rows
    p = slice(s, s + piece)
    dx, dy = xx - cx[p], yy - cy[p]
    circle = dx**2 + dy**2 <= radius[p]**2
    half = radius[p] * 0.886  # the square of equal area
    square = np.maximum(np.abs(dx), np.abs(dy)) <= half
    inside = np.where(a['shape'][p][:, None, None], circle, square)
    stripes = (np.sin(2 * np.pi * (xx + yy) * 4.0 / (radius[p] * 8) + phase[p]) > 0)
    shade = np.where(a['texture'][p][:, None, None] & stripes, 0.45, 1.0)
    img = np.where(inside[..., None], color[p][:, None, None, :] * shade[..., None],
                   bg[p][:, None, None, :])
    img = img + rng.normal(0, noise, img.shape)
    yield (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# float64 values per [k, S, S, 3] intermediate of a render piece (32 MB: 341 images at 64×64).
PIECE_VALUES = 1 << 22


def _check(task: str, spurious: str | None, rho: float) -> None:
  for name in (task, spurious):
    if name is not None and name not in ATTRIBUTES:
      raise ValueError(f'unknown shapes attribute {name!r}; known: {", ".join(ATTRIBUTES)}')
  if spurious == task:
    raise ValueError(f'spurious attribute must differ from the task attribute ({task!r})')
  if not 0.0 <= rho <= 1.0:
    raise ValueError(f'rho must be in [0, 1], got {rho}')


def draw(num: int, *, task: str = 'shape', spurious: str | None = 'color', rho: float = 0.9,
         seed: int = 0, split: str = 'train', flip: str | None = None
         ) -> tuple[np.random.Generator, np.ndarray]:
  """(the generator, ready for the first image's draws; attributes bool [num, A]) of
  (seed, split): generate's attributes; image_chunks(rng, attrs, …) renders its images."""
  _check(task, spurious, rho)
  if flip is not None and flip not in ATTRIBUTES:
    raise ValueError(f'cannot flip unknown shapes attribute {flip!r}; known: '
                     f'{", ".join(ATTRIBUTES)}')
  split_id = zlib.crc32(split.encode())  # stable across runs, unlike hash()
  rng = np.random.default_rng([seed, split_id])
  attrs = sample_attributes(rng, num, task, spurious, rho)
  if flip is not None:
    attrs[:, ATTRIBUTES.index(flip)] ^= True
  return rng, attrs


def image_chunks(rng: np.random.Generator, attrs: np.ndarray, image_size: int,
                 chunk: int = CHUNK, noise: float = 0.04, object_scale: float = 1.0
                 ) -> Iterator[np.ndarray]:
  """The images of attrs [N, A] in order, generate's bytes, as uint8 [≤ piece, S, S, 3]
  arrays: the draws of one render of `chunk` attributes at a time (the chunk shapes them:
  another chunk, other images), its pixels a piece at a time (render_pieces)."""
  for i in range(0, len(attrs), chunk):
    yield from render_pieces(rng, attrs[i:i + chunk], image_size, noise, object_scale)


def generate(num: int, *, image_size: int = 32, task: str = 'shape',
             spurious: str | None = 'color', rho: float = 0.9, seed: int = 0,
             split: str = 'train', chunk: int = CHUNK, noise: float = 0.04,
             object_scale: float = 1.0, flip: str | None = None,
             images: bool = True) -> dict[str, np.ndarray]:
  """Deterministic from (seed, split). Returns {'image' uint8 [N,S,S,3], 'attributes' bool [N,A]}.

  flip: an attribute name; its column is negated after sampling and before rendering, so
  the images are the counterfactuals of flip=None's (same nuisance, that attribute changed).
  images=False: the same attributes without rendering ({'attributes'} only; the attributes
  are drawn before any image). In memory: data.load writes the chunks to disk instead.
  """
  rng, attrs = draw(num, task=task, spurious=spurious, rho=rho, seed=seed, split=split,
                    flip=flip)
  if not images:
    return {'attributes': attrs}
  return {'image': _stack(image_chunks(rng, attrs, image_size, chunk, noise, object_scale),
                         (num, image_size, image_size, 3)),
          'attributes': attrs}
