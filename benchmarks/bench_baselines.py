"""Times each attribution method on the paper's classifier (Classifier defaults, 64×64,
batch 64): one JSON line per method.

  python benchmarks/bench_baselines.py            # short default run (< 2 min on 2 CPU cores)
  python benchmarks/bench_baselines.py --repeats=10 --ig_steps=64 --sg_samples=50

median_step_s is the median wall time of one call over --repeats calls after a warm-up
call whose time (tracing + compilation + first run) is reported as compile_s; every call
blocks on its result.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lsei_jax import baselines  # noqa: E402
from lsei_jax.models import Classifier  # noqa: E402


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--image', type=int, default=64)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--ig_steps', type=int, default=16)
  ap.add_argument('--sg_samples', type=int, default=16)
  ap.add_argument('--patch', type=int, default=16)
  ap.add_argument('--stride', type=int, default=16)
  # 0 = the whole inner loop vmapped. On XLA:CPU a lax.map over chunks was 2-3x slower
  # per image than one vmap (convs inside the loop body), so chunk only to bound memory.
  ap.add_argument('--chunk_size', type=int, default=0,
                  help='inner-loop iterations at once (IG steps, noise samples, patches); '
                       '0 = all')
  ap.add_argument('--methods', default='gradient,gradient_x_input,integrated_gradients,'
                                       'smoothgrad,occlusion')
  args = ap.parse_args(argv)

  model = Classifier()
  key = jax.random.key(0)
  images = jax.random.uniform(key, (args.batch, args.image, args.image, 3))
  target = jnp.arange(args.batch) % model.num_classes
  params = model.init(jax.random.key(1), images[:1])['params']
  chunk = args.chunk_size or None

  def logit_fn(p, x):
    return model.apply({'params': p}, x)

  methods = {
      'gradient': lambda p, x, t: baselines.vanilla_gradient(
          functools.partial(logit_fn, p), x, t),
      'gradient_x_input': lambda p, x, t: baselines.gradient_x_input(
          functools.partial(logit_fn, p), x, t),
      'integrated_gradients': lambda p, x, t: baselines.integrated_gradients(
          functools.partial(logit_fn, p), x, t, steps=args.ig_steps, chunk_size=chunk),
      'smoothgrad': lambda p, x, t: baselines.smoothgrad(
          functools.partial(logit_fn, p), x, t, jax.random.key(2),
          num_samples=args.sg_samples, chunk_size=chunk),
      'occlusion': lambda p, x, t: baselines.occlusion(
          functools.partial(logit_fn, p), x, t, patch_size=args.patch, stride=args.stride,
          chunk_size=chunk),
  }
  for name in args.methods.split(','):
    fn = jax.jit(methods[name])
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, images, target))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, images, target))
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps(dict(impl='lsei_jax', stage=name, batch=args.batch, image=args.image,
                          median_step_s=round(med, 5),
                          images_per_s=round(args.batch / med, 2),
                          compile_s=round(compile_s, 3), repeats=args.repeats,
                          device=jax.devices()[0].platform)), flush=True)


if __name__ == '__main__':
  main()
