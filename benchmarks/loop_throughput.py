"""Each training stage's loop throughput against its own step's throughput (issue 27: the
loop should reach ≥ 70% of the step on an accelerator).

  python benchmarks/loop_throughput.py                          # the demo, configs/shapes.py
  python benchmarks/loop_throughput.py --image_size 64 --steps 100
  python benchmarks/loop_throughput.py --steps 20 --log_every 5 --bench_steps 5   # quick
  python benchmarks/loop_throughput.py --k 1,2,4,8 --train classifier,concepts

Trains every stage of configs/shapes.py (optionally with other sizes) in one pipeline.train
call, as train.py does, timing each metrics write (every --log_every steps, after the loop
has fetched that window's metrics from the device, so the steps before it are done): the
loop's images/s is the median over the windows between writes of steps × batch / seconds,
so the compilation and the first steps are left out, and the checkpoints written between count
(the config's cadence, or --every, as in a run). Then the same compiled step, on the trained
state and one batch of the stage's own data already on the device, is called --bench_steps
times back to back (timed to the last result): the step's images/s. One JSON line per stage
with both and their ratio; the sanity run's stages are left out (the same steps again).

--k 1,2,4,8 trains the stages once per steps per dispatch k (config.steps_per_dispatch: k
steps in one compiled call, parallel.multi_step), each in a fresh workdir, in that order in
one process; the step column is measured once (k = 1). Each row also gives the stage's wall
seconds with its compilations (stage_s) and its loop against k = 1's (over_k1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def step_throughput(stage, state, mesh, num_steps: int) -> float:
  """Images/s of stage.step called back to back on one device-resident batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import parallel, trainer  # pylint: disable=g-import-not-at-top
  local = stage.batch_fn(0)
  batch = jax.block_until_ready(parallel.shard_batch(local, mesh))
  size = len(next(iter(local.values()))) * jax.process_count()
  keys = trainer.step_keys(stage.rng, 0, 1)
  key = jax.block_until_ready(jax.device_put(keys(0)))
  choose = getattr(stage.step, 'for_step', lambda i: stage.step)
  state = jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x,
                       state)   # the step donates its state; the pipeline keeps the trained one
  for i in range(2):            # compiled already; warm the allocator
    state, m = choose(i)(state, batch, key, *stage.extra)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for i in range(num_steps):
    state, m = choose(i)(state, batch, key, *stage.extra)
  jax.block_until_ready((state, m))
  return num_steps * size / (time.perf_counter() - start)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--steps', type=int, default=0, help='steps per stage (default: the config)')
  ap.add_argument('--every', type=int, default=0,
                  help='checkpoint every this many steps (default: the config, 200)')
  ap.add_argument('--log_every', type=int, default=0, help='default: the config, 50')
  ap.add_argument('--image_size', type=int, default=0, help='default: the config (32)')
  ap.add_argument('--bench_steps', type=int, default=50)
  ap.add_argument('--stages', default='classifier,concepts,explainer,explainer_noreg,probe')
  ap.add_argument('--k', default='1', help='steps per dispatch to compare, e.g. 1,2,4,8')
  ap.add_argument('--train', default='',
                  help='train only these stages (and nothing else), e.g. classifier,concepts')
  args = ap.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import shapes  # pylint: disable=g-import-not-at-top
  from lsei_jax import compile_cache, pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import node as node_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.training import metric_writer  # pylint: disable=g-import-not-at-top

  compile_cache.enable()
  config = shapes.get_config()
  stages = args.stages.split(',')
  for s in ('classifier', 'concepts', 'explainer', 'probe'):
    if args.steps:
      config[s].steps = args.steps
    if 'warmup_steps' in config[s]:
      config[s].warmup_steps = min(config[s].warmup_steps, config[s].steps - 1)
  if 'anneal_steps' in config.concepts:
    config.concepts.anneal_steps = min(config.concepts.anneal_steps, config.concepts.steps)
  if args.image_size:
    config.data.image_size = args.image_size
  if args.every:
    config.checkpoint.every_steps = args.every
  if args.log_every:
    config.log_every = args.log_every
  config.sanity.enabled = False

  marks: dict[str, list] = {}
  real_write = metric_writer.MetricWriter.write

  def write(self, step, metrics):   # the stage's directory is named after it
    marks.setdefault(os.path.basename(self._directory), []).append((step, time.perf_counter()))
    return real_write(self, step, metrics)
  metric_writer.MetricWriter.write = write
  rows = []
  real_run = node_lib.run_stage
  step_rate: dict[str, float] = {}   # measured once, on the k = 1 run (or the first)
  loop_k1: dict[str, float] = {}

  def measured(stage, workdir, mesh, **kw):
    t0 = time.perf_counter()
    state, meta = real_run(stage, workdir, mesh, **kw)
    stage_s = time.perf_counter() - t0
    if stage.name in stages:
      k = kw.get('steps_per_dispatch', 1)
      m = marks.pop(stage.name, [])
      (s0, _), (s1, _) = m[0], m[-1]
      batch = len(next(iter(stage.batch_fn(0).values()))) * jax.process_count()
      # The median over the windows between metric writes: a burst of other load on a
      # shared machine moves one window, not the figure.
      rates = [(b - a) * batch / (tb - ta) for (a, ta), (b, tb) in zip(m, m[1:]) if b > a]
      loop = float(np.median(rates)) if rates else float('nan')
      if stage.name not in step_rate:
        step_rate[stage.name] = step_throughput(stage, state, mesh, args.bench_steps)
      step = step_rate[stage.name]
      loop_k1.setdefault(stage.name, loop)
      rows.append(dict(stage=stage.name, k=k, batch=batch, image=config.data.image_size,
                       steps=stage.num_steps, timed_steps=s1 - s0,
                       log_every=config.log_every, every=config.checkpoint.every_steps,
                       loop_images_per_s=round(loop, 1), step_images_per_s=round(step, 1),
                       loop_over_step=round(loop / step, 3),
                       over_k1=round(loop / loop_k1[stage.name], 3),
                       stage_s=round(stage_s, 1), backend=jax.default_backend(),
                       devices=mesh.devices.size))
      print(json.dumps(rows[-1]), flush=True)
    return state, meta
  node_lib.run_stage = measured
  for k in [int(v) for v in args.k.split(',')]:
    config.steps_per_dispatch = k
    with tempfile.TemporaryDirectory() as workdir:
      pipeline.train(config, workdir, args.train.split(',') if args.train else None)
  print('| stage | k | batch | loop img/s | step img/s | loop / step | loop / k=1 | stage s |')
  print('|---|---|---|---|---|---|---|---|')
  for r in sorted(rows, key=lambda r: (stages.index(r['stage']), r['k'])):
    print(f'| {r["stage"]} | {r["k"]} | {r["batch"]} | {r["loop_images_per_s"]:,.0f} | '
          f'{r["step_images_per_s"]:,.0f} | {r["loop_over_step"]:.0%} | '
          f'{r["over_k1"]:.2f} | {r["stage_s"]} |')


if __name__ == '__main__':
  main()
