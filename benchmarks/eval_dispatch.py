"""Evaluation's passes: map_in_batches at the eval batch (256) against batches 8× larger
(the most 8 batches per dispatch could give: one dispatch and one transfer per 8), and the
apply alone on a device-resident batch (no host work at all). Medians of 7."""
import time
import jax, numpy as np
from configs import shapes
from lsei_jax import pipeline
from lsei_jax.pipeline import frozen
from lsei_jax.training import parallel
c = shapes.get_config()
mesh = parallel.make_mesh()
spec = pipeline.make_spec(c, mesh)
d = c.model.classifier.hidden_dim
g = pipeline.template_state(spec, 'explainer', jax.random.key(0)).params
dv = pipeline.template_state(spec, 'concepts', jax.random.key(0)).params
rng = np.random.default_rng(0)
cases = [('render g(e)', frozen.render_fn(spec.mods.explainer, mesh), g, 2048),
         ('reconstruct (DVAE)', frozen.reconstruct_fn(spec.mods.learner, mesh), dv, 16384)]
for name, fn, params, n in cases:
  key = 'e' if 'render' in name else 'h'
  arrays = {key: rng.normal(size=(n, d)).astype(np.float32)}
  row = {}
  for bs in (256, 2048):
    parallel.map_in_batches(fn, params, arrays, bs, mesh)   # compile
    ts = []
    for _ in range(7):
      t = time.perf_counter(); parallel.map_in_batches(fn, params, arrays, bs, mesh)
      ts.append(time.perf_counter() - t)
    row[bs] = n / np.median(ts)
  b = parallel.shard_batch({key: arrays[key][:256]}, mesh)
  jax.block_until_ready(fn(params, b))
  ts = []
  for _ in range(7):
    t = time.perf_counter()
    for _ in range(8):
      out = fn(params, b)
    jax.block_until_ready(out); ts.append(time.perf_counter() - t)
  resident = 8 * 256 / np.median(ts)
  print(f'| {name} | {n} | {row[256]:,.0f} | {row[2048]:,.0f} | {resident:,.0f} | '
        f'{row[2048] / row[256]:.2f} | {row[256] / resident:.0%} |', flush=True)
