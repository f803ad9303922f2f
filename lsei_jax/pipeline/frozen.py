"""The frozen functions stages and evaluators apply to whole splits, jitted once per
(functions, mesh): h = c1(x), ĥ = decode(encode(h)), g(e) as images, and the per-example
Fisher information (docs/method.md §2, §6)."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax.training import parallel, steps


@functools.lru_cache(maxsize=16)
def embed_fn(embed: Callable, mesh) -> Callable:
  """(classifier params, {'image': uint8 [b,H,W,3]}) → h [b, d] = embed(params, image)."""
  def f(params, batch):
    return embed(params, batch['image'].astype(jnp.float32) / 255.0)
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def reconstruct_fn(learner, mesh) -> Callable:
  """(concept learner params, {'h': [b, d]}) → ĥ [b, d] (eval-mode code)."""
  return parallel.data_parallel_apply(
      lambda p, b: learner.decode(p, learner.encode(p, b['h'])), mesh)


@functools.lru_cache(maxsize=16)
def info_fn(apply: Callable, loss: str, num_samples: int, mesh) -> Callable:
  """((params, σ [d], key), {'e': [b, d], 'index': [b]}) → information per example [b, d].

  Each example's perturbations come from fold_in(key, index): the mean over examples is
  the same however the data is batched or split across devices.
  """
  def f(args, batch):
    params, sigma, key = args
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch['index'])
    return steps.per_example_fisher(lambda e: apply(params, e), batch['e'], keys, sigma,
                                    num_samples=num_samples, loss=loss, per_example=True)
  return parallel.data_parallel_apply(f, mesh)


@functools.lru_cache(maxsize=16)
def render_fn(explainer, mesh) -> Callable:
  """(explainer params, {'e': [b, d]}) → images uint8 [b, H, W, 3] = 255·sigmoid(g(e))."""
  def f(params, batch):
    img = jax.nn.sigmoid(explainer.apply({'params': params}, batch['e']))
    return jnp.round(img * 255).astype(jnp.uint8)
  return parallel.data_parallel_apply(f, mesh)


@functools.lru_cache(maxsize=16)
def generator_apply(explainer) -> Callable:
  """(g params, e [b, d]) → g(e) logits [b, H, W, 3]: one function object per explainer."""
  return lambda p, e: explainer.apply({'params': p}, e)


def mean_information(apply, loss, params, e: np.ndarray, sigma, key, num_samples, batch_size,
                     mesh, desc=None) -> np.ndarray:
  """Information vector [d] averaged over the rows of e [N, d]."""
  fn = info_fn(apply, loss, num_samples, mesh)
  per = parallel.map_in_batches(fn, (params, sigma, key),
                                {'e': e, 'index': np.arange(len(e), dtype=np.int32)},
                                batch_size, mesh, desc)
  return per.mean(0)
