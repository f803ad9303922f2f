"""The one training loop shared by every stage: resumable, checkpointed, guarded against NaN."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from lsei_jax.training import checkpoints, parallel
from lsei_jax import errors
from lsei_jax.training.metric_writer import MetricWriter


class NonFiniteError(errors.UserError, RuntimeError):
  """A loss or gradient norm became NaN or inf; the bad state was not saved."""


@dataclasses.dataclass
class Stage:
  """What the loop needs to train one stage.

  step: compiled data-parallel step(state, batch, rng, *extra) -> (state, metrics).
  batch_fn: step index → this process's local batch (a pure function of the index).
  upstream: identities {stage: {step, fingerprint}} of the checkpoints it is trained on.
  signature: architecture fields that must not change between runs on one workdir.
  """
  name: str
  num_steps: int
  state: Any
  step: Callable
  batch_fn: Callable[[int], dict]
  rng: jax.Array
  extra: Sequence[Any] = ()
  upstream: dict = dataclasses.field(default_factory=dict)
  signature: dict = dataclasses.field(default_factory=dict)


def _describe(step: int | None) -> str:
  return 'none' if step is None else f'step {step}'


def _restore_latest(ckpt: checkpoints.StageCheckpoints, template: Any,
                    check: Callable[[dict], None] = lambda meta: None):
  """Restores the newest readable checkpoint, falling back to older ones if it is corrupt.

  check(meta) runs on the JSON metadata before any array is read, so an incompatible
  checkpoint is reported by what changed rather than by a shape mismatch.
  """
  errors = []
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      check(ckpt.read_meta(step))
      state, meta = ckpt.restore(step, template)
    except checkpoints.CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('%s: checkpoint at step %d is unreadable (%s); trying an older one',
                      ckpt.stage, step, e)
      errors.append(f'step {step}: {type(e).__name__}: {str(e)[:200]}')
      if not ckpt.read_only:
        ckpt.set_aside(step)
      continue
    return state, meta
  if errors:
    raise checkpoints.CheckpointError(
        f'no readable {ckpt.stage} checkpoint in {ckpt.directory} ({"; ".join(errors)}); '
        f'move the directory away to retrain the stage')
  return None, None


# Step keys are folded in blocks of this many steps: one compiled shape for every stage,
# whatever its length (a shape per length compiled again for each stage, ≈ 0.2 s each).
KEY_BLOCK = 512


def step_keys(rng: jax.Array, start: int, stop: int) -> Callable[[int], jax.Array]:
  """step ↦ jax.random.fold_in(rng, step) for start ≤ step < stop, bitwise, computed in
  jitted calls of KEY_BLOCK steps; each lookup only wraps a row of host key data (≈ 0.1 ms)."""
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  num_blocks = max(-(-(stop - start) // KEY_BLOCK), 1)
  steps = np.arange(start, start + num_blocks * KEY_BLOCK, dtype=np.int32)
  blocks = [_fold_in_each(rng, b) for b in steps.reshape(num_blocks, KEY_BLOCK)]
  data = np.concatenate([np.asarray(jax.random.key_data(k) if typed else k) for k in blocks])
  impl = jax.random.key_impl(rng) if typed else None

  def key(step: int, count: int | None = None) -> jax.Array:
    """The key of `step`, or the keys [count] of steps step … step + count − 1."""
    rows = data[step - start] if count is None else data[step - start:step - start + count]
    # a raw uint32 key (jax.random.PRNGKey): its rows are keys already
    return rows if impl is None else jax.random.wrap_key_data(rows, impl=impl)
  return key


@jax.jit
def _fold_in_each(rng: jax.Array, steps: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, steps)


# The most steps whose metrics wait on the device unfetched, whatever log_every is.
MAX_WINDOW = 256
CHECKED = ('loss', 'grad_norm')


def fetch_window(window: list[tuple[int, dict]]) -> list[dict[str, float]]:
  """The metrics of a window of dispatches (steps, metrics) on the host, one per step, in
  one transfer wait for all of them; a dispatch of several steps has metrics stacked [steps]."""
  host = []
  for count, m in jax.device_get(window):
    if count == 1:
      host.append({k: float(v) for k, v in m.items()})
    else:
      host.extend({k: float(v[i]) for k, v in m.items()} for i in range(count))
  return host


def first_non_finite(host: list[dict[str, float]], first_step: int
                     ) -> tuple[int, str, float] | None:
  """(step, key, value) of the first non-finite loss or grad_norm in a window whose first
  entry is step `first_step` (counted from 1, as checkpoints are), or None."""
  for i, m in enumerate(host):
    for key in CHECKED:
      if key in m and not np.isfinite(m[key]):
        return first_step + i, key, m[key]
  return None


def dispatch_plan(start: int, stop: int, k: int, save_every: int, period: int = 1
                  ) -> list[tuple[int, int]]:
  """(first step, count) of each dispatch from step `start` to `stop`: windows of k steps
  [j·k, (j+1)·k) where one fits whole, single steps elsewhere. A window never holds a
  checkpoint but at its end (save_every not a multiple of k: single steps around the saves),
  never runs past `stop`, and starts at a multiple of k (so of `period`, which divides k:
  every_nth's groups line up); a resume off the grid runs single steps up to it."""
  if k < 1 or k % period:
    raise ValueError(f'steps per dispatch k={k} must be a positive multiple of {period}')
  plan, step = [], start
  while step < stop:
    fits = (k > 1 and step % k == 0 and step + k <= stop
            and (step + k - 1) // save_every == step // save_every)
    count = k if fits else 1
    plan.append((step, count))
    step += count
  return plan


def _host_batches(batch_fn: Callable[[int], dict], first: int, count: int) -> dict:
  """The local batch of step `first` (count 1), or those of `count` steps stacked [count, …]."""
  if count == 1:
    return batch_fn(first)
  batches = [batch_fn(s) for s in range(first, first + count)]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def _step_chooser(step: Callable, state: Any, start: int) -> Callable[[int], Callable]:
  """step index ↦ the compiled step to run. A step that alternates variants by state.step
  (parallel.every_nth) is asked by the loop's own index, never by reading state.step back
  from the device each step; the restored state's step is checked once to equal it."""
  choose = getattr(step, 'for_step', None)
  if choose is None:
    return lambda i: step
  if int(state.step) != start:
    raise checkpoints.CheckpointError(
        f'the restored state is at step {int(state.step)}, its checkpoint at {start}')
  return choose


def _check_resumable(stage: Stage, directory: str, meta: dict) -> None:
  """Refuses a stored checkpoint of `stage` made with other architecture fields, upstream
  checkpoints or number of steps."""
  checkpoints.check_config(stage.name, directory, meta.get('config', {}), stage.signature)
  checkpoints.check_upstream(stage.name, directory, meta.get('upstream', {}), stage.upstream)
  if meta.get('num_steps') != stage.num_steps:
    raise checkpoints.CheckpointError(
        f'{stage.name} in {directory} was trained for {meta.get("num_steps")} steps, '
        f'the config now asks for {stage.num_steps} (the schedules depend on it); use '
        f'the original value or a new workdir')


def adopt_stage(stage: Stage, workdir: str, trained: Any, source: str, *,
                hooks: Sequence[Callable] = ()) -> tuple[Any, dict]:
  """Stores `trained`, the final state that `run_stage(stage, …)` would reproduce (trained
  in `source` on the very same inputs, seed and config), as the stage's complete checkpoint
  in `workdir`, instead of training it again; returns (state, final meta).

  A complete checkpoint already there is checked and returned as run_stage would. stage.state
  is only the restore template. hooks run once, after the save.
  """
  ckpt = checkpoints.StageCheckpoints(workdir, stage.name)
  try:
    state, meta = _restore_latest(ckpt, stage.state,
                                  functools.partial(_check_resumable, stage, ckpt.directory))
    if meta is not None and meta.get('complete'):
      return state, meta
    ckpt.save(stage.num_steps, trained, {
        'num_steps': stage.num_steps, 'complete': True, 'upstream': stage.upstream,
        'fingerprint': checkpoints.fingerprint(trained.params), 'config': stage.signature,
        'adopted_from': source})
    logging.info('%s: adopted the identical %s of %s', stage.name, stage.name, source)
    meta = ckpt.read_meta(stage.num_steps)
    for hook in hooks:
      hook(stage.name, stage.num_steps, trained)
    return trained, meta
  finally:
    ckpt.close()


def run_stage(stage: Stage, workdir: str, mesh, *, save_every: int, max_to_keep: int,
              log_every: int, steps_per_dispatch: int = 1, hooks: Sequence[Callable] = ()
              ) -> tuple[Any, dict]:
  """Trains `stage` from its latest checkpoint to num_steps; returns (state, final meta).

  A complete stage is restored, checked against its upstream and returned untouched.
  steps_per_dispatch k > 1: windows of k steps run as one compiled call (parallel.multi_step,
  dispatch_plan) on the same batches, keys and order as k single steps; XLA may round the
  longer program differently in the last bits (docs/accelerators.md § Steps per dispatch).
  hooks: callables(stage_name, step, state) run after each checkpoint is written.
  """
  ckpt = checkpoints.StageCheckpoints(workdir, stage.name, max_to_keep=max_to_keep)
  try:
    check = functools.partial(_check_resumable, stage, ckpt.directory)
    state, meta = _restore_latest(ckpt, stage.state, check)
    start = 0
    if meta is not None:
      start = meta['step']
      if meta.get('complete'):
        logging.info('%s: complete at step %d, skipping', stage.name, start)
        return state, meta
      logging.info('%s: resuming from step %d', stage.name, start)
    else:
      state = stage.state

    writer = MetricWriter(ckpt.directory)
    meta, done = None, start
    # The next host batch is assembled on a thread while the device runs this step;
    # batch_fn is a pure function of the step index, so this cannot change results.
    # The step keys fold_in(rng, step) are made up front (step_keys): an eager fold_in per
    # step cost ≈ 2.5 ms of host time under load, on the cores the step runs on.
    prefetch = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='prefetch')
    step_key = step_keys(stage.rng, start, stage.num_steps)
    step_for = _step_chooser(stage.step, state, start)
    plan = dispatch_plan(start, stage.num_steps, steps_per_dispatch, save_every,
                         parallel.period(stage.step) if steps_per_dispatch > 1 else 1)
    many = parallel.multi_step(stage.step) if any(n > 1 for _, n in plan) else None
    # On several CPU devices, at most two dispatches in flight: with more queued, XLA:CPU's
    # all-reduce deadlocked (4 forced host devices, small steps: one device never joined
    # the rendezvous, aborted after 40 s) once the host loop ran ahead of the steps.
    bounded = mesh.devices.size > 1 and mesh.devices.flat[0].platform == 'cpu'
    in_flight = None
    # Each step's metrics stay on the device until the window is fetched (every log_every
    # steps, at checkpoints, or after MAX_WINDOW steps): the host never waits on a step
    # it does not have to, and every step of the window is still checked for NaN.
    # Entries: (steps, metrics), metrics stacked [steps] when a dispatch ran several.
    window: list[tuple[int, dict]] = []
    unfetched = 0
    bar = tqdm(desc=stage.name, initial=start, total=stage.num_steps,
               disable=jax.process_index() != 0)
    try:
      load = lambda item: _host_batches(stage.batch_fn, *item)
      pending = prefetch.submit(load, plan[0]) if plan else None
      for i, (first, count) in enumerate(plan):
        local = pending.result()
        if i + 1 < len(plan):
          pending = prefetch.submit(load, plan[i + 1])
        if count == 1:
          batch = parallel.shard_batch(local, mesh)
          state, metrics = step_for(first)(state, batch, step_key(first), *stage.extra)
        else:
          batch = parallel.shard_batches(local, mesh)
          state, metrics = many(state, batch, step_key(first, count), *stage.extra)
        if bounded:
          if in_flight is not None:
            jax.block_until_ready(in_flight)
          in_flight = metrics
        window.append((count, metrics))
        unfetched += count
        done = first + count
        bar.update(count)
        is_save = done % save_every == 0 or done == stage.num_steps
        logged = [s for s in range(first + 1, done + 1) if s % log_every == 0]
        if is_save and done not in logged:
          logged.append(done)
        if logged or unfetched >= MAX_WINDOW:
          host = fetch_window(window)
          window, unfetched = [], 0
          bad = first_non_finite(host, done - len(host) + 1)
          if bad is not None:
            bad_step, key, value = bad
            raise NonFiniteError(
                f'{stage.name}: {key} is {value} at step {bad_step} (the first non-finite one '
                f'of steps {done - len(host) + 1}–{done}); stopped without saving this state '
                f'(last good checkpoint: {_describe(ckpt.latest_step())}). '
                f'Lower the learning rate or check the data.')
          for s in logged:
            writer.write(s, host[len(host) - 1 - (done - s)])
          if logged:
            bar.set_postfix(loss=f'{host[-1]["loss"]:.4g}')
        if is_save:
          complete = done == stage.num_steps
          meta = {'num_steps': stage.num_steps, 'complete': complete,
                  'fingerprint': checkpoints.fingerprint(state.params),
                  'upstream': stage.upstream, 'config': stage.signature}
          ckpt.save(done, state, meta)
          meta = ckpt.read_meta(done)
          for hook in hooks:
            hook(stage.name, done, state)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM turned into one by the CLI
      raise errors.Interrupted(
          f'{stage.name} interrupted ({str(e) or "Ctrl-C"}) after step {done} of '
          f'{stage.num_steps} (last checkpoint: {_describe(ckpt.latest_step())} in '
          f'{ckpt.directory}); rerun `{errors.resume_command()}` to resume from it') from e
    finally:
      prefetch.shutdown(wait=True, cancel_futures=True)
      bar.close()
      writer.close()
    if meta is None:  # num_steps == start: nothing to do, but never left incomplete
      raise checkpoints.CheckpointError(f'{stage.name}: no steps to run')
    return state, meta
  finally:
    ckpt.close()


def _train_advice(workdir: str, stage: str) -> str:
  # The sanity check's stages live in WORKDIR/sanity and are made by training WORKDIR with
  # --stages=sanity (its classifier is random); training the subdirectory directly would
  # put a trained classifier there.
  parent, base = os.path.split(os.path.normpath(workdir))
  if base == 'sanity':
    return f'python train.py --config=… --workdir={parent} --stages=sanity'
  return f'python train.py --config=… --workdir={workdir} --stages={stage}'


def load_complete(workdir: str, stage: str, template: Any, signature: dict | None = None
                  ) -> tuple[Any, dict]:
  """The final state and meta of a finished stage, or an error naming what to train.

  With `signature`, a checkpoint whose architecture fields differ is refused by name.
  """
  missing = checkpoints.CheckpointError(
      f'stage {stage!r} has no checkpoint in {workdir}: train it first '
      f'({_train_advice(workdir, stage)})')
  if not os.path.isdir(os.path.join(workdir, stage)):
    raise missing
  ckpt = checkpoints.StageCheckpoints(workdir, stage, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise missing
    check = lambda meta: signature is None or checkpoints.check_config(
        stage, ckpt.directory, meta.get('config', {}), signature)
    state, meta = _restore_latest(ckpt, template, check)
    if not meta.get('complete'):
      raise checkpoints.CheckpointError(
          f'stage {stage!r} in {workdir} stopped at step {meta["step"]} of '
          f'{meta["num_steps"]}: rerun train.py to finish it')
    return state, meta
  finally:
    ckpt.close()


# Initialisers (truncated normal through erfinv, variance scaling) may round otherwise on
# another device, so a stored untrained state whose hash differs still counts as this one
# when every value agrees to this relative tolerance: one Adam step moves each weight by about
# the learning rate (1e-3 and up), 100× more.
UNTRAINED_RTOL = 1e-5


def same_values(stored: Any, fresh: Any, rtol: float = UNTRAINED_RTOL) -> bool:
  """Whether two pytrees have the same structure, shapes and values to `rtol` (atol rtol·10⁻¹
  for the zeros of biases)."""
  a, ta = jax.tree_util.tree_flatten(jax.device_get(stored))
  b, tb = jax.tree_util.tree_flatten(jax.device_get(fresh))
  return ta == tb and all(np.shape(x) == np.shape(y) and np.allclose(
      np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=rtol / 10)
      for x, y in zip(a, b))


def check_untrained(directory: str, stage: str, meta: dict, expected: str,
                    stored: Any = None, fresh: Any = None) -> None:
  """Refuses a checkpoint that is not the untrained state with fingerprint `expected` (or,
  given both, params `stored` equal to `fresh` to UNTRAINED_RTOL: made on another device)."""
  same = meta.get('fingerprint') == expected or (
      stored is not None and fresh is not None and same_values(stored, fresh))
  if not same or meta.get('num_steps') != 0:
    raise checkpoints.CheckpointError(
        f'{directory} holds a {stage} trained for {meta.get("num_steps")} steps '
        f'(fingerprint {meta.get("fingerprint")}), not the untrained one this config '
        f'makes (fingerprint {expected}); move {directory} away and rerun train.py on the '
        f'parent workdir with --stages=sanity to recreate it')


def save_untrained(workdir: str, stage: str, state: Any, signature: dict) -> tuple[Any, dict]:
  """Stores `state` as a complete 0-step checkpoint of `stage`, or loads the one stored.

  `state` is recreated deterministically by the caller, so a missing or unfinished one
  (a run killed during its first save) is simply written again; a stored one must be this
  very state (same fingerprint, or its values to UNTRAINED_RTOL when made on another
  device), never a trained one put in its place.
  """
  ckpt = checkpoints.StageCheckpoints(workdir, stage)
  try:
    expected = checkpoints.fingerprint(state.params)
    if ckpt.latest_step() is not None:
      stored, meta = _restore_latest(ckpt, state, lambda meta: checkpoints.check_config(
          stage, ckpt.directory, meta.get('config', {}), signature))
      if meta is not None:
        check_untrained(ckpt.directory, stage, meta, expected, stored.params, state.params)
        return stored, meta   # what later stages' links name (its fingerprint)
    ckpt.save(0, state, {'num_steps': 0, 'complete': True, 'upstream': {},
                         'config': signature, 'fingerprint': expected})
    return state, ckpt.read_meta(0)
  finally:
    ckpt.close()
