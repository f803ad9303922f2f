"""Cross-checks of the bias report with the baselines users know: TCAV concept scores on the
same hidden layer, input attributions, and the attribution model-randomisation test."""
from __future__ import annotations

import functools
import types
from typing import Callable, Sequence

import jax
import numpy as np

from lsei_jax import baselines


MIN_TCAV_EXAMPLES = 2   # baselines.tcav: a CAV needs ≥ 2 examples and ≥ 2 counterexamples


def _on_device(x) -> jax.Array:
  """An array-like (ndarray, list, jax.Array) placed on the default device by device_put:
  an eager jnp.asarray would compile an executable per shape (tests/test_compile_once.py)."""
  return jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x))


def tcav_skipped(attributes: np.ndarray, names: Sequence[str]) -> dict[str, str]:
  """{attribute: why} for the attributes TCAV cannot score on this split (attributes bool
  [N, A]): fewer than MIN_TCAV_EXAMPLES examples or counterexamples (e.g. constant)."""
  attributes = np.asarray(attributes, bool)
  pos, n = attributes.sum(0), len(attributes)
  out = {}
  for name, p in zip(names, pos.tolist()):
    if min(p, n - p) < MIN_TCAV_EXAMPLES or n // 2 < MIN_TCAV_EXAMPLES:
      out[name] = (f'not scored by TCAV: {p} of the {n} evaluation examples have it and '
                   f'{n - p} do not; a concept vector needs at least {MIN_TCAV_EXAMPLES} of '
                   f'each')
  return out


def tcav_entries(key: jax.Array, head: Callable, h: np.ndarray, attributes: np.ndarray,
                 labels: np.ndarray, names: Sequence[str], cfg, split=None) -> list[dict]:
  """TCAV of every attribute (as a concept) for every class, at the layer h = c1(x).

  split: the classifier (`head` is then its head at its params): its class gradients are
  computed by a jit built once per head function.
  Returns [{concept, class, score, p_value, significant}], concepts in `names` order;
  attributes too rare or too common on this split (`tcav_skipped`) are left out.
  """
  skipped = tcav_skipped(attributes, names)
  keep = [j for j, name in enumerate(names) if name not in skipped]
  if not keep:
    return []
  grads = None
  h = _on_device(h)
  if split is not None:
    grads = _class_gradients_fn(split.head, cfg.output)(split.params, h)
  result = baselines.tcav(key, head, h, _on_device(np.asarray(attributes)[:, keep]),
                          _on_device(labels), num_runs=cfg.num_runs,
                          num_per_side=cfg.num_per_side, output=cfg.output,
                          cav_method=cfg.cav_method, alpha=cfg.alpha, grads=grads)
  table = baselines.tcav_table(result, [names[j] for j in keep])
  return [{'concept': c, 'class': int(k), **v} for (c, k), v in table.items()]


@functools.lru_cache(maxsize=16)
def _class_gradients_fn(head: Callable, output: str) -> Callable:
  """jit of (params, h [N, d]) → baselines.class_gradients of h ↦ head(params, h)."""
  return jax.jit(lambda p, h: baselines.class_gradients(lambda e: head(p, e), h, output))


ATTRIBUTIONS = {
    'gradient': lambda fn, x, t, cfg: baselines.vanilla_gradient(fn, x, t),
    'gradient_x_input': lambda fn, x, t, cfg: baselines.gradient_x_input(fn, x, t),
    'integrated_gradients': lambda fn, x, t, cfg: baselines.integrated_gradients(
        fn, x, t, steps=cfg.ig_steps),
}


def attribution_sanity(model, params, images: np.ndarray, target: np.ndarray,
                       key: jax.Array, cfg) -> dict:
  """Cascading randomisation of the classifier (top layer first) for each method of
  cfg.methods: mean Spearman |map| correlation and SSIM per layer, and a flag for methods
  whose maps barely change once every layer is random."""
  out = {}
  for name in cfg.methods:
    fn = _attribution_fn(name, model, cfg.ig_steps)
    r = baselines.model_randomization(fn, model, params, _on_device(images),
                                      _on_device(target), key)
    out[name] = {'layers': list(r['layers']),
                 'spearman_abs': np.asarray(r['spearman_abs']).mean(1).tolist(),
                 'ssim': np.asarray(r['ssim']).mean(1).tolist(), 'raw': r}
  flags = baselines.flag_insensitive({k: v['raw'] for k, v in out.items()},
                                     threshold=cfg.flag_threshold)
  for k, v in out.items():
    v.pop('raw')
    v['flagged'] = flags[k]
  return out


def head_randomization(split, rand, images: np.ndarray, target: np.ndarray, cfg) -> dict:
  """The top-layer step of cascading randomisation for a classifier given as functions:
  each method's maps of the classifier vs `rand` (the same embedding with the sanity
  check's random head, pipeline.sanity_classifier), same images and target classes.
  Same format as `attribution_sanity`, with one level, 'head'."""
  x, t = _on_device(images), _on_device(target)
  out = {}
  for name in cfg.methods:
    original = _split_attribution_fn(name, split.embed, split.head, cfg.ig_steps)(
        split.params, x, t)
    maps = _split_attribution_fn(name, rand.embed, rand.head, cfg.ig_steps)(rand.params, x, t)
    out[name] = {'layers': ['head'],
                 'spearman_abs': [float(np.mean(baselines.spearman(original, maps,
                                                                   absolute=True)))],
                 'ssim': [float(np.mean(baselines.ssim(baselines.normalize_abs(original),
                                                      baselines.normalize_abs(maps))))]}
  for name, v in out.items():
    v['flagged'] = bool(v['spearman_abs'][-1] > cfg.flag_threshold)  # as flag_insensitive
  return out


_normalize_abs = jax.jit(baselines.normalize_abs)


@functools.lru_cache(maxsize=16)
def _split_attribution_fn(name: str, embed: Callable, head: Callable, ig_steps: int
                          ) -> Callable:
  """jit of one attribution method of x ↦ head(p, embed(p, x)), built once per functions."""
  method, cfg = ATTRIBUTIONS[name], types.SimpleNamespace(ig_steps=ig_steps)
  return jax.jit(lambda p, x, t: method(lambda y: head(p, embed(p, y)), x, t, cfg))


@functools.lru_cache(maxsize=16)
def _attribution_fn(name: str, model, ig_steps: int) -> Callable:
  """jit of one attribution method, built once per (method, model): evaluation passes and
  every randomised layer reuse its compilations."""
  method, cfg = ATTRIBUTIONS[name], types.SimpleNamespace(ig_steps=ig_steps)
  return jax.jit(lambda p, x, t: method(lambda y: model.apply({'params': p}, y), x, t, cfg))


def ig_heatmaps(split, images: np.ndarray, target: np.ndarray, steps: int, model=None
                ) -> np.ndarray:
  """|integrated gradients| of the classifier `split` (images → logits [B, C]) summed over
  channels, scaled to [0, 1], as RGB [B, H, W, 3].

  Jitted (eagerly, every op of the forward and backward passes compiles on its own: ≈ 9 s
  of a warm evaluation). model: the split's Flax module when it is the config's own
  classifier (split.params = {'params': …}): the attribution check's compiled IG is reused."""
  x, t = _on_device(images), _on_device(target)
  if model is not None:
    maps = _attribution_fn('integrated_gradients', model, steps)(split.params['params'], x, t)
  else:
    maps = _split_attribution_fn('integrated_gradients', split.embed, split.head, steps)(
        split.params, x, t)
  heat = np.asarray(_normalize_abs(maps))
  return np.stack([heat, heat * 0.35, 1.0 - heat], -1)  # red where attribution is high
