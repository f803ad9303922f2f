"""CelebA-shaped shapes: 13 visible binary attributes, 11 of them correlated as CelebA's.

One object on a background, as lsei_jax/data/shapes.py (whose six attributes and rendering
are untouched), with more marks. Each attribute carries a CelebA name (its statistics come
from lsei_jax/data/celeba_stats.py) and one visible feature, 1 = the second:
  Male                square | circle
  Smiling             object red | blue
  Wearing_Lipstick    no dot | a white dot on the object
  Heavy_Makeup        object plain | striped
  No_Beard            a bar under the object | none
  Young               background dark | light
  Attractive          object small | large
  Eyeglasses          no frame | a green frame around the image
  Blond_Hair          top band grey | yellow
  Mouth_Slightly_Open no outline | a white outline around the object
  High_Cheekbones     object low | high
  control_position    object left | right      (independent fair coin: the benchmark's
  control_notch       no notch | a dark notch in the top band      floor of reliance)

Attributes are sampled by a Gaussian copula (`latent_correlation`): a normal vector with a
latent correlation matrix, thresholded so that each attribute has its marginal, the latent
correlation of each pair solved so that the binary pair's phi coefficient is the target.

Ground truth of reliance: `render` draws its nuisance from the generator with shapes fixed
by N alone, so the same generator state with one attribute column flipped renders the same
images but for that attribute.
"""
from __future__ import annotations

import numpy as np

from lsei_jax.data import celeba_stats

CONTROLS = ('control_position', 'control_notch')
ATTRIBUTES = celeba_stats.NAMES + CONTROLS

# Gauss–Legendre nodes on [0, 1] for ∫₀^ρ φ₂(h, k; r) dr (the integrand is smooth for
# |ρ| ≤ 0.999; 96 nodes give P(both) to ~1e-10 there).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(96)


def _both_above(t_i: np.ndarray, t_j: np.ndarray, rho: np.ndarray) -> np.ndarray:
  """P(Z_i > t_i, Z_j > t_j) for standard normals with correlation rho (arrays, broadcast):
  Φ(−t_i)Φ(−t_j) + ∫₀^ρ φ₂(t_i, t_j; r) dr (Plackett's identity ∂Φ₂/∂ρ = φ₂)."""
  from scipy import special  # pylint: disable=g-import-not-at-top  (a dependency of jax)
  h, k = t_i[..., None], t_j[..., None]
  r = rho[..., None] * (_GL_X + 1) / 2
  dens = np.exp(-(h * h - 2 * r * h * k + k * k) / (2 * (1 - r * r))) / (
      2 * np.pi * np.sqrt(1 - r * r))
  return special.ndtr(-t_i) * special.ndtr(-t_j) + rho / 2 * (dens @ _GL_W)


def latent_correlation(marginals, phi, iters: int = 60) -> tuple[np.ndarray, np.ndarray, bool]:
  """(latent correlation [A, A], thresholds [A], repaired) for binary attributes with
  P(a = 1) = marginals [A] and phi coefficients phi [A, A].

  Each pair's latent correlation is found by bisection (P(both = 1) grows with it). If the
  pairwise solution is not positive definite (CelebA's: its smallest eigenvalue is −0.04,
  Male / Wearing_Lipstick / Heavy_Makeup at latent |r| ≥ 0.96), it is replaced by the
  nearest correlation matrix (`nearest_correlation`) and `repaired` is True.
  """
  from scipy import special  # pylint: disable=g-import-not-at-top
  p, phi = np.asarray(marginals, np.float64), np.asarray(phi, np.float64)
  if p.ndim != 1 or phi.shape != (len(p), len(p)) or not np.all((p > 0) & (p < 1)):
    raise ValueError(f'marginals must be [A] in (0, 1) and phi [A, A]; got {p.shape}, '
                     f'{phi.shape}')
  t = special.ndtri(1 - p)
  sd = np.sqrt(p * (1 - p))
  target = p[:, None] * p[None, :] + phi * sd[:, None] * sd[None, :]   # P(both = 1)
  i, j = np.triu_indices(len(p), 1)
  lo, hi = np.full(len(i), -0.999), np.full(len(i), 0.999)
  for _ in range(iters):
    mid = (lo + hi) / 2
    below = _both_above(t[i], t[j], mid) < target[i, j]
    lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
  latent = np.eye(len(p))
  latent[i, j] = latent[j, i] = (lo + hi) / 2
  repaired = bool(np.linalg.eigvalsh(latent)[0] < 1e-6)
  if repaired:
    latent = nearest_correlation(latent)
  return latent, t, repaired


def nearest_correlation(a: np.ndarray, floor: float = 1e-3, iters: int = 200) -> np.ndarray:
  """The correlation matrix [A, A] nearest to symmetric a [A, A] in Frobenius norm with
  eigenvalues ≥ floor (Higham 2002: alternating projections with Dykstra's correction)."""
  y, ds = a.copy(), np.zeros_like(a)
  for _ in range(iters):
    r = y - ds
    w, v = np.linalg.eigh(r)
    x = (v * np.maximum(w, floor)) @ v.T
    ds = x - r
    y = x.copy()
    np.fill_diagonal(y, 1.0)
  w, v = np.linalg.eigh(y)        # the unit diagonal may have pushed an eigenvalue under
  y = (v * np.maximum(w, floor)) @ v.T
  d = np.sqrt(np.diag(y))
  return y / d[:, None] / d[None, :]


def implied_phi(latent: np.ndarray, t: np.ndarray) -> np.ndarray:
  """phi [A, A] of the binary attributes 1[Z > t] for Z ~ N(0, latent) (exact, no sampling)."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  p = special.ndtr(-t)
  both = _both_above(t[:, None] + 0 * t[None, :], t[None, :] + 0 * t[:, None],
                     np.clip(latent, -0.999, 0.999))
  sd = np.sqrt(p * (1 - p))
  out = (both - p[:, None] * p[None, :]) / sd[:, None] / sd[None, :]
  np.fill_diagonal(out, 1.0)
  return out


def sample_attributes(rng: np.random.Generator, n: int, marginals=None, phi=None
                      ) -> np.ndarray:
  """bool [n, 13]: the CelebA attributes by the copula (celeba_stats' figures unless given),
  then the two controls as independent fair coins."""
  marginals = celeba_stats.MARGINALS if marginals is None else marginals
  phi = celeba_stats.PHI if phi is None else phi
  latent, t, _ = latent_correlation(marginals, phi)
  z = rng.standard_normal((n, len(t))) @ np.linalg.cholesky(latent).T
  return np.concatenate([z > t, rng.random((n, len(CONTROLS))) < 0.5], axis=1)


def render(rng: np.random.Generator, attrs: np.ndarray, image_size: int,
           noise: float = 0.04, object_scale: float = 1.0) -> np.ndarray:
  """uint8 images [n, S, S, 3] for attributes bool [n, 13] (see the module docstring).

  Every draw from rng has a shape fixed by n alone (never by an attribute value).
  """
  if attrs.ndim != 2 or attrs.shape[1] != len(ATTRIBUTES):
    raise ValueError(f'attributes must be [N, {len(ATTRIBUTES)}], got {attrs.shape}')
  n, S = attrs.shape[0], image_size
  a = {name: attrs[:, i][:, None, None] for i, name in enumerate(ATTRIBUTES)}
  u = lambda lo, hi: rng.uniform(lo, hi, n)[:, None, None]
  yy, xx = np.meshgrid((np.arange(S) + 0.5) / S, (np.arange(S) + 0.5) / S, indexing='ij')
  radius = np.where(a['Attractive'], 0.18, 0.12) * u(0.9, 1.1) * object_scale
  cx = np.where(a['control_position'], 0.68, 0.32) + u(-0.05, 0.05)
  cy = np.where(a['High_Cheekbones'], 0.40, 0.58) + u(-0.04, 0.04)
  dx, dy = xx - cx, yy - cy
  half = radius * 0.886  # the square of equal area
  dist = np.where(a['Male'], np.sqrt(dx**2 + dy**2) / radius, np.maximum(abs(dx), abs(dy)) / half)
  inside = dist <= 1
  ring = (dist > 1) & (dist <= 1 + 0.05 / radius) & a['Mouth_Slightly_Open']

  red, blue = np.array([0.85, 0.15, 0.12]), np.array([0.15, 0.30, 0.88])
  color = np.where(a['Smiling'][:, 0], blue, red) + rng.uniform(-0.08, 0.08, (n, 3))
  stripes = np.sin(2 * np.pi * (xx + yy) / radius + u(0, 2 * np.pi)) > 0
  shade = np.where(a['Heavy_Makeup'] & stripes, 0.45, 1.0)
  bg = (np.where(a['Young'], 0.78, 0.18)[:, 0] + rng.uniform(-0.06, 0.06, (n, 1))
        + rng.uniform(-0.03, 0.03, (n, 3)))
  band = yy < 0.12
  band_color = np.where(a['Blond_Hair'][:, 0], [0.95, 0.85, 0.10], [0.50, 0.50, 0.50])
  notch = band & (abs(xx - (0.86 + u(-0.03, 0.03))) < 0.06) & a['control_notch']
  dot = ((xx - cx - u(-0.25, 0.25) * radius)**2 + (yy - cy)**2 <= (0.35 * radius)**2) & \
      a['Wearing_Lipstick']
  bar_top = cy + radius + 0.06
  bar = (yy >= bar_top) & (yy < bar_top + 0.05) & (abs(dx) < 0.8 * radius) & ~a['No_Beard']
  edge = np.minimum(np.minimum(xx, yy), np.minimum(1 - xx, 1 - yy))
  frame = (edge < 0.06 + u(-0.01, 0.01)) & a['Eyeglasses']

  px = lambda c: c[:, None, None, :]
  img = np.broadcast_to(px(bg), (n, S, S, 3))
  img = np.where(band[None, ..., None], px(band_color), img)
  img = np.where(notch[..., None], 0.05, img)
  img = np.where(inside[..., None], px(color) * shade[..., None], img)
  img = np.where((ring | dot)[..., None], 0.97, img)
  img = np.where(bar[..., None], px(np.array([[0.10, 0.85, 0.90]])), img)   # cyan: seen on both backgrounds
  img = np.where(frame[..., None], px(np.array([[0.10, 0.80, 0.20]])), img)
  img = img + rng.normal(0, noise, img.shape)
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
