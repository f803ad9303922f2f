"""Data parallelism: per-device step code mapped over a 1-D device mesh named 'data'.

Steps are written like pmap code (`lax.pmean(grads, 'data')`) and run under
`jax.shard_map` inside `jax.jit`; the same code covers one CPU, eight GPUs and a
multi-host pod (each host feeds its own slice of the global batch).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from lsei_jax.train_state import AXIS  # noqa: E402  (the mesh axis steps pmean over)


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (default: all, over every host)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f'asked for {n} devices, {len(devices)} available')
  return jax.sharding.Mesh(np.array(devices[:n]), (AXIS,))


def check_batch(global_batch: int, mesh: jax.sharding.Mesh, what: str = 'batch_size') -> None:
  n = mesh.devices.size
  if global_batch <= 0 or global_batch % n:
    raise ValueError(f'{what}={global_batch} must be a positive multiple of the {n} '
                     f'devices (data parallel): use e.g. {max(n, global_batch // n * n)}')


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree fully replicated on the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(local_batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Assembles each process's local batch ([B/P, …] arrays) into global arrays split on 'data'."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


# XLA:CPU hands convolutions to YNNPACK by default (jaxlib 0.10). For this project's training
# steps Eigen's convolutions are faster on the 2-core CPU (benchmarks, batch 64, 64×64:
# classifier step 301 → 396 images/s, c1 forward about ×2, explainer step with the Fisher
# regularizer 33 → 40), while first-order Fisher estimates of g alone are faster with
# YNNPACK (211 vs 174 images/s), so the choice is per jit rather than a global XLA_FLAGS.
_EIGEN_CONVS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.lru_cache(maxsize=None)
def _eigen_convs_available() -> bool:
  if jax.default_backend() != 'cpu':
    return False
  try:
    jax.jit(jnp.negative, compiler_options=_EIGEN_CONVS).lower(1.0).compile()
  except Exception:  # an unknown or renamed option in this jaxlib: keep XLA's defaults
    return False
  return True


def convnet_compiler_options() -> dict[str, Any]:
  """XLA options for jitting conv-net training steps and c1 forward passes (classifier,
  explainer, probes): `data_parallel_step(…, compiler_options=convnet_compiler_options())`.

  Empty off CPU and where this jaxlib does not know the option (checked once, by compiling
  a one-op function with it). Speed only: the maths does not depend on it.
  """
  return dict(_EIGEN_CONVS) if _eigen_convs_available() else {}


def data_parallel_step(step_fn: Callable, mesh: jax.sharding.Mesh, num_replicated: int = 0,
                       donate_state: bool = True,
                       compiler_options: dict[str, Any] | None = None) -> Callable:
  """jit(shard_map(step_fn)) for `step_fn(state, batch, rng, *replicated) -> (state, metrics)`.

  state, rng and the extra arguments are replicated; batch is split over devices. The step
  must average what it returns across devices (lax.pmean over AXIS) so that outputs are
  replicated. compiler_options go to jax.jit (e.g. `convnet_compiler_options()`).
  """
  in_specs = (P(), P(AXIS), P()) + (P(),) * num_replicated
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()),
                         check_vma=False)
  jitted = jax.jit(mapped, donate_argnums=(0,) if donate_state else (),
                   compiler_options=compiler_options or None)
  # What multi_step needs to run the per-device step k times in one shard_map, with the same
  # compiler options (a jit nested in another jit compiles with the outer one's).
  jitted.per_device = _PerDevice(step_fn, mesh, num_replicated, donate_state,
                                 tuple(sorted((compiler_options or {}).items())))
  return jitted


@dataclasses.dataclass(frozen=True)
class _PerDevice:
  step_fn: Callable
  mesh: jax.sharding.Mesh
  num_replicated: int
  donate_state: bool
  compiler_options: tuple


def shard_batches(local_batches: Any, mesh: jax.sharding.Mesh) -> Any:
  """shard_batch for k stacked local batches ([k, B/P, …]): global [k, B, …] split on axis 1."""
  sharding = NamedSharding(mesh, P(None, AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batches)


@functools.lru_cache(maxsize=32)
def multi_step(step: Callable) -> Callable:
  """Several training steps in one dispatch: `many(state, batches, keys, *extra) -> (state,
  metrics)` runs `step` on batches [k, B, …] (shard_batches) with keys [k] in turn, bitwise
  as k calls would, and returns each step's metrics stacked [k]. One compilation per k.

  A data_parallel_step's per-device step runs k times inside one shard_map, with its own
  compiler options; an every_nth step runs on_step on every `every`-th of the k steps
  (k must be a multiple of `every`, and a window start at a multiple of it: `period`); any
  other jitted step is called k times inside an outer jit.
  """
  if isinstance(step, _EveryNth):
    first, rest, period = step.on_step, step.off_step, step.every
  else:
    first, rest, period = step, step, 1
  pd = getattr(first, 'per_device', None)
  if pd is None or getattr(rest, 'per_device', None) is None:
    return jax.jit(_unrolled_steps(first, rest, period), donate_argnums=(0,))
  other = rest.per_device
  if (other.mesh, other.num_replicated, other.compiler_options) != (
      pd.mesh, pd.num_replicated, pd.compiler_options):
    raise ValueError('every_nth: on_step and off_step differ in mesh, replicated arguments '
                     'or compiler options; they cannot share one multi-step program')
  in_specs = (P(), P(None, AXIS), P()) + (P(),) * pd.num_replicated
  mapped = jax.shard_map(_unrolled_steps(pd.step_fn, other.step_fn, period), mesh=pd.mesh,
                         in_specs=in_specs, out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if pd.donate_state else (),
                 compiler_options=dict(pd.compiler_options) or None)


def period(step: Callable) -> int:
  """The steps a multi_step window must be a multiple of, and start at a multiple of."""
  return step.every if isinstance(step, _EveryNth) else 1


def _unrolled_steps(first: Callable, rest: Callable, period_: int) -> Callable:
  """k steps in one program, written out one after another (k from the batches' shape):
  `first` on steps i with i % period_ == 0, `rest` on the others.

  Not a lax.scan: XLA:CPU compiles the convolution gradients inside a loop body as naive
  loops (the classifier step at 32×32, batch 128: 25× slower), with results that differ in
  the last bits from the step compiled alone. Written out, the classifier's and the
  concept learner's steps come out bitwise as alone on one device (tests/test_dispatch.py),
  but that is not guaranteed: XLA may compile the same ops differently in a longer program
  (the regularized explainer, a toy Adam step, the DVAE on 4 devices: 1-2 ulp off in some
  weights; an optimization_barrier around each step changed none of it). Compile time
  grows with k.
  """
  def many(state, batches, keys, *extra):
    metrics = []
    for i in range(keys.shape[0]):
      fn = first if i % period_ == 0 else rest
      state, m = fn(state, jax.tree.map(lambda x: x[i], batches), keys[i], *extra)
      metrics.append(m)
    if any(jax.tree.structure(m) != jax.tree.structure(metrics[0]) for m in metrics):
      raise ValueError(f'every_nth: on_step and off_step return different metrics '
                       f'({jax.tree.structure(metrics[0])} vs '
                       f'{jax.tree.structure(metrics[-1])}); they cannot be stacked per step')
    return state, jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)
  return many


def every_nth(every: int, on_step: Callable, off_step: Callable) -> Callable:
  """A step that runs on_step when state.step % every == 0 and off_step otherwise.

  Chosen on the host rather than with lax.cond: XLA:CPU runs the convolutions inside a
  conditional's branches far slower than at top level. Called directly it reads state.step
  (one device sync); the training loop asks `.for_step(step)` with its own step index
  instead, so that it never waits on the device to pick the next step.
  """
  if every <= 1:
    return on_step
  return _EveryNth(every, on_step, off_step)


@dataclasses.dataclass(frozen=True)
class _EveryNth:
  every: int
  on_step: Callable
  off_step: Callable

  def for_step(self, step: int) -> Callable:
    return self.on_step if step % self.every == 0 else self.off_step

  def __call__(self, state, *args):
    return self.for_step(int(state.step))(state, *args)


def data_parallel_apply(fn: Callable, mesh: jax.sharding.Mesh,
                        compiler_options: dict[str, Any] | None = None) -> Callable:
  """jit(shard_map(fn)) for a per-example `fn(params, batch) -> outputs`, batch-split."""
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                         check_vma=False)
  return jax.jit(mapped, compiler_options=compiler_options or None)


def to_host(tree: Any) -> Any:
  """Global arrays → NumPy on every host (all-gathers across processes when needed)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def map_in_batches(apply: Callable, params: Any, arrays: dict[str, np.ndarray],
                   batch_size: int, mesh: jax.sharding.Mesh, desc: str | None = None
                   ) -> Any:
  """Runs a data-parallel `apply(params, batch)` over whole arrays [N, …] → outputs [N, …].

  Every process passes the same full arrays; the last batch is padded to the batch size
  (one compilation) and the padding dropped. Process p feeds its slice of each batch.
  """
  outs = list(map_batches(apply, params, arrays, batch_size, mesh, desc))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def map_batches(apply: Callable, params: Any, arrays: dict[str, np.ndarray],
                batch_size: int, mesh: jax.sharding.Mesh, desc: str | None = None):
  """map_in_batches one batch at a time: yields the outputs of consecutive rows (NumPy, the
  padding of the last batch dropped), so that a caller can write them out instead of
  holding them. `arrays` may be anything indexable by an index array (data.rows.Rows)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  check_batch(batch_size, mesh, 'eval batch size')
  n = len(next(iter(arrays.values())))
  pc, pi = jax.process_count(), jax.process_index()
  local = batch_size // pc
  for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, leave=False):
    idx = np.arange(start, start + batch_size) % max(n, 1)
    idx = idx[pi * local:(pi + 1) * local]
    batch = shard_batch({k: v[idx] for k, v in arrays.items()}, mesh)
    keep = min(batch_size, n - start)
    yield jax.tree.map(lambda x: x[:keep], to_host(apply(params, batch)))
