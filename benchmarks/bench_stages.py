"""Step time of every stage and of the Fisher estimator, as the PyTorch reference measures them.

  python benchmarks/bench_stages.py --stage classifier --batch 64 --image 64 --steps 20

Prints one JSON line per stage with the reference's fields (impl, stage, batch, image,
samples, threads, median_step_s, images_per_s, steps, warmup, min_step_s, max_step_s) plus
compile_s. Stages mirror ../shared/bench/torch_ref.py exactly (paper architecture, Adam
1e-3, random data):
  classifier       forward, cross-entropy, backward, Adam
  dvae             frozen c1 forward + DVAE step (τ 0.5, β 1)
  explainer        frozen c1 + DVAE → ĥ, BCE + 1/cos(I(g), I(c2)) with I(g) on every row and
                   `samples` perturbations, I(c2) re-estimated each step; backward, Adam
  explainer_noreg  the same with λ = 0
  fisher           I(g) alone at a fixed ĥ (target forward + perturbed rows + input grads)
and, what lsei_jax's pipeline actually runs (frozen outputs precomputed once per stage):
  dvae_pipeline, explainer_pipeline (steps.make_*_step on a 1-device mesh; the demo's
  regularizer settings are --fisher_batch/--samples).
Timing excludes compilation, blocks on results, and reports the median over --steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lsei_jax.concepts import dvae as dvae_lib
from lsei_jax import fisher, losses, models, relaxed_bernoulli  # noqa: E402
from lsei_jax.training import parallel, steps  # noqa: E402
from lsei_jax.relaxed_bernoulli import hard_code  # noqa: E402

STAGES = ('classifier', 'dvae', 'explainer', 'explainer_noreg', 'fisher', 'dvae_pipeline',
          'explainer_pipeline')


def build(stage: str, batch: int, image: int, samples: int, fisher_batch: int,
          chunk: int | None = None, group: int | None = None, compute_dtype: str = 'float32'):
  """Returns (step(carry, data) -> carry, carry, data): one jitted step, its state, and
  the frozen arrays it reads. Arrays are arguments, never closed over: XLA would fold a
  frozen forward pass over constant inputs at compile time."""
  key = jax.random.key(0)
  x = jax.random.uniform(key, (batch, image, image, 3))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 2)
  # compute_dtype: c1's and the DVAE's dense matmuls (config.model.compute_dtype).
  clf = models.Classifier(compute_dtype=compute_dtype)
  dvae = models.DVAE(compute_dtype=compute_dtype)
  g = models.Explainer(image_size=image)
  cp = clf.init(key, x)['params']
  tx = optax.adam(1e-3)
  dp = dvae.init({'params': key}, jnp.zeros((1, 256)))['params']
  gp = g.init(key, jnp.zeros((1, 256)))['params']
  data = {'x': x, 'y': y, 'cp': cp, 'dp': dp}
  embed = lambda d: clf.apply({'params': d['cp']}, d['x'], method='embed')
  head = lambda d: (lambda e: clf.apply({'params': d['cp']}, e, method='head'))
  reconstruct = lambda d, h: dvae_lib.encode_decode(dvae, d['dp'], h)[1]
  conv = parallel.convnet_compiler_options()

  if stage == 'classifier':
    def step(carry, d):
      params, opt, rng = carry
      rng, drop = jax.random.split(rng)
      def loss_fn(p):
        logits = clf.apply({'params': p}, d['x'], train=True, rngs={'dropout': drop})
        return losses.classifier_loss(logits, d['y'])
      grads = jax.grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, rng
    return jax.jit(step, donate_argnums=0, compiler_options=conv), (cp, tx.init(cp), key), data

  if stage == 'dvae':
    def step(carry, d):
      params, opt, rng = carry
      rng, k1, k2 = jax.random.split(rng, 3)
      h = jax.lax.stop_gradient(embed(d))
      def loss_fn(p):
        v = {'params': p}
        logits = dvae.apply(v, h, True, method='encode', rngs={'dropout': k1})
        z = relaxed_bernoulli(k2, logits, 0.5)
        h_hat = dvae.apply(v, z, True, method='decode', rngs={'dropout': k1})
        return losses.dvae_loss(h, h_hat, logits, 1.0)[0]
      grads = jax.grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, rng
    return jax.jit(step, donate_argnums=0, compiler_options=conv), (dp, tx.init(dp), key), data

  if stage in ('explainer', 'explainer_noreg'):
    lam = 1.0 if stage == 'explainer' else 0.0
    # The frozen c1 + DVAE forward is its own jit, compiled for convolutions like the
    # pipeline's precompute; the same work per step as the reference.
    frozen = jax.jit(lambda d: reconstruct(d, embed(d)), compiler_options=conv)
    def step(carry, d, hhat):
      params, opt, rng = carry
      rng, kg, kc = jax.random.split(rng, 3)
      def loss_fn(p):
        gf = lambda e: g.apply({'params': p}, e)
        logits = gf(hhat)
        reg = 0.0
        if lam:
          info_g = fisher.fisher_information(gf, hhat, kg, num_samples=samples, loss='bce',
                                             chunk_size=chunk, group_size=group)
          info_c = jax.lax.stop_gradient(fisher.fisher_information(
              head(d), hhat, kc, num_samples=samples, loss='ce'))
          reg = fisher.fisher_regularizer(info_g, info_c)
        return losses.explainer_loss(logits, d['x'], reg, lam)[0]
      grads = jax.grad(loss_fn)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt, rng
    step = jax.jit(step, donate_argnums=0, compiler_options=conv)
    return (lambda carry, d: step(carry, d, frozen(d))), (gp, tx.init(gp), key), data

  if stage == 'fisher':
    hhat = jax.jit(lambda d: reconstruct(d, embed(d)))(data)
    def step(carry, d):
      info, rng = carry
      rng, k = jax.random.split(rng)
      gf = lambda e: g.apply({'params': d['gp']}, e)
      return fisher.fisher_information(gf, d['hhat'], k, num_samples=samples, loss='bce',
                                       chunk_size=chunk, group_size=group), rng
    return jax.jit(step), (jnp.zeros(256), key), {'gp': gp, 'hhat': hhat}

  # What the pipeline runs: the library's per-device steps, on a 1-device mesh.
  mesh = parallel.make_mesh(1)
  if stage == 'dvae_pipeline':
    cfg = ml_collections.ConfigDict(dict(temperature_start=1.0, temperature_end=0.5,
                                         anneal_steps=1000, hard=False, beta=1.0))
    fn = parallel.data_parallel_step(dvae_lib.make_dvae_step(dvae, cfg), mesh)
    h = parallel.shard_batch({'h': np.asarray(jax.jit(embed)(data))}, mesh)
    state = parallel.replicate(steps.create_train_state(dvae, key, jnp.zeros((1, 256)), tx), mesh)
    return (lambda c, b: (fn(c[0], b, c[1])[0], jax.random.fold_in(c[1], 1))), (state, key), h
  if stage == 'explainer_pipeline':
    cfg = ml_collections.ConfigDict(dict(fisher_weight=1.0, fisher_samples=samples,
                                         fisher_batch=fisher_batch, fisher_every=1,
                                         fisher_chunk=0, fisher_group=2, similarity='cosine',
                                         batch_size=batch))
    fn = parallel.data_parallel_step(steps.make_explainer_step(g, cfg), mesh, num_replicated=2,
                                     compiler_options=conv)
    hhat = np.asarray(jax.jit(lambda d: reconstruct(d, embed(d)))(data))
    b = parallel.shard_batch({'image': np.asarray(x), 'hhat': hhat}, mesh)
    extra = parallel.replicate((jnp.ones(256), jnp.asarray(hhat.std(0))), mesh)
    state = parallel.replicate(steps.create_train_state(g, key, jnp.zeros((1, 256)), tx), mesh)
    return ((lambda c, b: (fn(c[0], b, c[1], *extra)[0], jax.random.fold_in(c[1], 1))),
            (state, key), b)
  raise ValueError(f'unknown stage {stage!r}; known: {", ".join(STAGES)}')


def _machine_busy_s() -> float:
  """CPU seconds used by every process on the machine (/proc/stat), to report how much
  of the timed window other jobs took (the machine is shared)."""
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return (sum(v[:8]) - v[3] - v[4]) / os.sysconf('SC_CLK_TCK')


def _peak_device_mb() -> float | None:
  """Peak memory the accelerator's allocator handed out (None where it does not say, e.g.
  XLA:CPU, whose memory is in peak_rss_mb)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else round(peak / 2**20, 1)


def add_step_args(ap: argparse.ArgumentParser) -> None:
  """The flags that pick the step `build_from_args` builds (shared with profile_step.py)."""
  ap.add_argument('--stage', choices=STAGES, required=True)
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--image', type=int, default=64)
  ap.add_argument('--samples', type=int, default=8)
  ap.add_argument('--fisher_batch', type=int, default=64)
  ap.add_argument('--fisher_chunk', type=int, default=0,
                  help='perturbations per chunk in the Fisher estimator (0: all at once)')
  ap.add_argument('--fisher_group', type=int, default=2,
                  help='perturbations per unrolled group in the Fisher estimator (0: all)')
  ap.add_argument('--compute_dtype', choices=('float32', 'bfloat16'), default='float32',
                  help="matmul operands of c1's and the DVAE's dense layers")


def build_from_args(args: argparse.Namespace):
  return build(args.stage, args.batch, args.image, args.samples, args.fisher_batch,
               args.fisher_chunk or None, args.fisher_group or None, args.compute_dtype)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_step_args(ap)
  ap.add_argument('--steps', type=int, default=20)
  ap.add_argument('--warmup', type=int, default=3)
  args = ap.parse_args()
  step, carry, data = build_from_args(args)
  t0 = time.perf_counter()
  carry = jax.block_until_ready(step(carry, data))
  compile_s = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    carry = jax.block_until_ready(step(carry, data))
  times = []
  busy0, own0, wall0 = _machine_busy_s(), time.process_time(), time.perf_counter()
  for _ in range(args.steps):
    t0 = time.perf_counter()
    carry = jax.block_until_ready(step(carry, data))
    times.append(time.perf_counter() - t0)
  wall = time.perf_counter() - wall0
  other = ((_machine_busy_s() - busy0) - (time.process_time() - own0)) / (wall * os.cpu_count())
  med = statistics.median(times)
  print(json.dumps({
      'impl': 'lsei_jax', 'stage': args.stage, 'batch': args.batch, 'image': args.image,
      'samples': args.samples, 'threads': os.cpu_count(), 'median_step_s': round(med, 5),
      'images_per_s': round(args.batch / med, 2), 'steps': args.steps, 'warmup': args.warmup,
      'min_step_s': round(min(times), 5), 'max_step_s': round(max(times), 5),
      'compile_s': round(compile_s, 3), 'other_cpu_frac': round(max(other, 0.0), 3),
      'fisher_chunk': args.fisher_chunk, 'fisher_group': args.fisher_group,
      'compute_dtype': args.compute_dtype,
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'peak_device_mb': _peak_device_mb(),
      'jax_version': jax.__version__,
      'device': jax.devices()[0].device_kind}))


if __name__ == '__main__':
  main()
