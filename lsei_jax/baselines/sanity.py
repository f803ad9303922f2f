"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): model randomisation.

Layers are re-initialised cumulatively from the top (output layer first, then downwards),
each with the module's own initialiser (one `model.init` with a new key supplies every
fresh subtree). A map that hardly changes when the weights it explains are destroyed
does not explain the model. Similarity of original vs randomised maps, per example:
Spearman rank correlation (of the signed maps and of their absolute values) and SSIM of the
absolute-value maps normalised to [0, 1].
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import compile_cache

Array = jax.Array
Params = Mapping[str, Any]
Path = tuple[str, ...]


# ----------------------------------------------------------------------------- layers
def layer_paths(params: Params) -> list[Path]:
  """Paths of the parameter subtrees that hold arrays directly (one per layer), in the
  order the module created them (input side first)."""
  paths: list[Path] = []

  def walk(tree, prefix):
    if any(not isinstance(v, Mapping) for v in tree.values()):
      paths.append(prefix)
    for k, v in tree.items():
      if isinstance(v, Mapping):
        walk(v, prefix + (k,))

  walk(params, ())
  return paths


def _get(tree: Params, path: Path) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _replace(tree: Params, path: Path, value: Any) -> dict:
  """A copy of tree with the subtree at path replaced (the input is left untouched)."""
  out = dict(tree)
  out[path[0]] = value if len(path) == 1 else _replace(tree[path[0]], path[1:], value)
  return out


def cascading_randomization(model: nn.Module, params: Params, key: Array, *init_args: Any,
                            order: Sequence[Path] | None = None, **init_kwargs: Any
                            ) -> list[tuple[str, dict]]:
  """[(layer name, params with that layer and every layer above it re-initialised)].

  `model.init(key, *init_args, **init_kwargs)['params']` supplies the fresh weights. The
  default order is the reverse of the module's creation order (taken from the fresh init,
  since restored checkpoints may have sorted keys): for `Classifier`, c2/Dense_0,
  c1/Dense_0, c1/Conv_5, …, c1/Conv_0. Entry i has i + 1 layers randomised.
  """
  fresh = _jitted_init(model, tuple(sorted(init_kwargs.items())))(key, *init_args)['params']
  order = list(reversed(layer_paths(fresh))) if order is None else [tuple(p) for p in order]
  out, current = [], params
  for path in order:
    # Fresh weights placed like the ones they replace: a jitted attribution function then
    # sees the same input shardings at every level and traces once, not once per level.
    new = jax.tree.map(lambda f, old: jax.device_put(f, old.sharding)
                       if isinstance(old, jax.Array) else f, _get(fresh, path), _get(params, path))
    current = _replace(current, path, new)
    out.append(('/'.join(path), current))
  return out


@functools.lru_cache(maxsize=16)
def _jitted_init(model: nn.Module, kwargs: tuple) -> Callable:
  """jit(model.init), built once per (module, keyword arguments): one compilation instead
  of an eager one per parameter shape and op (the values are the same, bitwise, also at
  compile_cache.init_compiler_options' quicker optimisation level)."""
  return jax.jit(lambda k, *a: model.init(k, *a, **dict(kwargs)),
                 compiler_options=compile_cache.init_compiler_options() or None)


# ----------------------------------------------------------------------------- similarity
def _ranks(x: Array) -> Array:
  """Ranks 0..n−1 along the last axis; ties are broken by position, not averaged."""
  return jnp.argsort(jnp.argsort(x, axis=-1), axis=-1).astype(jnp.float32)


def spearman(a: Array, b: Array, *, absolute: bool = False) -> Array:
  """Spearman rank correlation per example of maps a, b [B, ...] → [B].

  Pearson correlation of the ranks. Ties are not averaged (argsort order), which only
  matters for maps with many equal values (e.g. exact zeros). absolute=True ranks |a|, |b|.
  """
  a = a.reshape(a.shape[0], -1)
  b = b.reshape(b.shape[0], -1)
  if absolute:
    a, b = jnp.abs(a), jnp.abs(b)
  ra, rb = _ranks(a), _ranks(b)
  ra = ra - jnp.mean(ra, axis=1, keepdims=True)
  rb = rb - jnp.mean(rb, axis=1, keepdims=True)
  return jnp.sum(ra * rb, 1) / jnp.sqrt(jnp.sum(ra * ra, 1) * jnp.sum(rb * rb, 1))


def normalize_abs(maps: Array) -> Array:
  """|maps| summed over channels ([B, H, W, C] → [B, H, W]; [B, H, W] kept), then divided
  by each map's maximum, so values lie in [0, 1]."""
  m = jnp.abs(maps)
  if m.ndim == 4:
    m = jnp.sum(m, axis=-1)
  peak = jnp.max(m.reshape(m.shape[0], -1), axis=1)[:, None, None]
  return m / jnp.maximum(peak, 1e-12)


def _gaussian_window(size: int, sigma: float) -> Array:
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-0.5 * (x / sigma) ** 2)
  return g / jnp.sum(g)


def ssim(a: Array, b: Array, *, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> Array:
  """Mean SSIM (Wang et al. 2004) per example of maps a, b [B, H, W] → [B].

  Gaussian-weighted local statistics over the valid positions of a window × window
  window (shrunk to the image when smaller), K1 = 0.01, K2 = 0.03. For attribution maps,
  pass `normalize_abs(maps)`.
  """
  size = min(window, a.shape[1], a.shape[2])
  g = _gaussian_window(size, sigma)
  kernel = (g[:, None] * g[None, :])[:, :, None, None]                  # [k, k, 1, 1] HWIO

  def blur(x):
    return jax.lax.conv_general_dilated(x[..., None], kernel, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[..., 0]

  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a**2
  var_b = blur(b * b) - mu_b**2
  cov = blur(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return jnp.mean(s.reshape(s.shape[0], -1), axis=1)


# ----------------------------------------------------------------------------- the test
def model_randomization(attribution_fn: Callable[[Params, Array, Array], Array],
                        model: nn.Module, params: Params, images: Array, target: Array,
                        key: Array, *, order: Sequence[Path] | None = None
                        ) -> dict[str, Any]:
  """Cascading model-randomisation test of one attribution method.

  attribution_fn(params, images [B, H, W, 3], target [B]) → maps [B, H, W(, C)]; jit it
  once outside, the layers then reuse one compilation. model.init is called on images[:1].
  Returns layers (names, top first) and, per randomisation level and example [L, B]:
  spearman (signed maps), spearman_abs (|maps|), ssim (normalize_abs maps).
  """
  original = attribution_fn(params, images, target)
  names, sims = [], []
  for name, p in cascading_randomization(model, params, key, images[:1], order=order):
    names.append(name)
    sims.append(_similarities(original, attribution_fn(p, images, target)))
  rho, rho_abs, sim = (jnp.stack(s) for s in zip(*sims))
  return dict(layers=names, spearman=rho, spearman_abs=rho_abs, ssim=sim)


@jax.jit
def _similarities(original: Array, maps: Array) -> tuple[Array, Array, Array]:
  """(spearman, spearman of |maps|, ssim of normalize_abs) of original vs maps, each [B];
  jitted: one compilation serves every layer and method (eagerly, one per op)."""
  return (spearman(original, maps), spearman(original, maps, absolute=True),
          ssim(normalize_abs(original), normalize_abs(maps)))


def flag_insensitive(results: Mapping[str, Mapping[str, Any]], *, threshold: float = 0.5,
                     metric: str = 'spearman_abs') -> dict[str, bool]:
  """{method: True} where maps barely change under full randomisation.

  results: {method: `model_randomization` output}. A method is flagged when the mean over
  examples of `metric` at the last level (every layer re-initialised) exceeds threshold.
  """
  return {name: bool(np.mean(np.asarray(r[metric])[-1]) > threshold)
          for name, r in results.items()}
