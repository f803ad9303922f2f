"""Several training steps per dispatch (issue 27): k steps in one compiled call give bitwise
the states, metrics and checkpoints of k single steps, across a resume off the window grid,
a step count k does not divide and checkpoints k does not divide."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from lsei_jax import errors
from lsei_jax.training import checkpoints, parallel, trainer


# ------------------------------------------------------------------------- the plan
def test_dispatch_plan_known_answers():
  # 14 steps, k = 3, a checkpoint every 6: windows [0,3) [3,6) [6,9) [9,12), then singles.
  assert trainer.dispatch_plan(0, 14, 3, 6) == [(0, 3), (3, 3), (6, 3), (9, 3), (12, 1),
                                                (13, 1)]
  # Resumed at 5 (off the grid): single steps up to 6.
  assert trainer.dispatch_plan(5, 14, 3, 6)[:2] == [(5, 1), (6, 3)]
  # A checkpoint every 4 with k = 3: no window may hold step 4 or 8 but at its end.
  assert trainer.dispatch_plan(0, 10, 3, 4) == [(0, 3), (3, 1), (4, 1), (5, 1), (6, 1),
                                                (7, 1), (8, 1), (9, 1)]
  assert trainer.dispatch_plan(0, 5, 1, 2) == [(i, 1) for i in range(5)]
  with pytest.raises(ValueError, match='multiple of 2'):
    trainer.dispatch_plan(0, 8, 3, 4, period=2)


@pytest.mark.parametrize('start,stop,k,save', [(0, 37, 4, 10), (3, 50, 8, 16), (7, 20, 2, 3),
                                               (0, 9, 16, 4)])
def test_dispatch_plan_invariants(start, stop, k, save):
  plan = trainer.dispatch_plan(start, stop, k, save)
  firsts = [f for f, _ in plan]
  assert firsts[0] == start and sum(n for _, n in plan) == stop - start
  assert all(a + n == b for (a, n), (b, _) in zip(plan, plan[1:]))   # contiguous, in order
  for first, n in plan:
    assert n in (1, k)
    if n > 1:   # on the grid, and no checkpoint strictly inside
      assert first % k == 0
      assert not any(done % save == 0 for done in range(first + 1, first + n))


# ------------------------------------------------------------------------- a toy loop
# An exact step: small integers in float32 (every sum and product below 2^24 is exact), so
# any XLA program computes it bitwise alike, and equality tests the loop itself: the same
# batches and keys, in the same order (w ↦ 3w + … mod 1009 does not commute).
def _state():
  return train_state.TrainState.create(apply_fn=None, params={'w': jnp.zeros(3)},
                                       tx=optax.identity())


def _per_device_step(state, batch, rng):
  r = jax.random.randint(rng, (3,), 0, 100).astype(jnp.float32)   # the step key matters
  x = jax.lax.psum(jnp.sum(batch['x'], 0), parallel.AXIS)
  w = jnp.mod(3.0 * state.params['w'] + x + r, 1009.0)
  loss = jnp.sum(w) + jnp.sum(batch['x']) * 0.0   # NaN when the batch is
  return state.replace(step=state.step + 1, params={'w': w}), {
      'loss': loss, 'grad_norm': jax.lax.pmean(jnp.max(r), parallel.AXIS)}


def _batch(step):
  rng = np.random.default_rng(step)
  return {'x': rng.integers(0, 50, size=(8, 3)).astype(np.float32)}


def _run(workdir, step, mesh, k, num_steps=14, save_every=6, batch_fn=_batch):
  stage = trainer.Stage('toy', num_steps, parallel.replicate(_state(), mesh), step, batch_fn,
                        jax.random.key(0))
  return trainer.run_stage(stage, str(workdir), mesh, save_every=save_every, max_to_keep=10,
                           log_every=1, steps_per_dispatch=k)


def _logged(workdir):
  with open(os.path.join(workdir, 'toy', 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _saved(workdir):
  ckpt = checkpoints.StageCheckpoints(str(workdir), 'toy', read_only=True)
  try:
    return {s: ckpt.read_meta(s)['fingerprint'] for s in ckpt.all_steps()}
  finally:
    ckpt.close()


def _bits(tree):
  return [np.asarray(x).view(np.uint32).tolist() for x in jax.tree.leaves(jax.device_get(tree))]


def _stop_at(step_to_stop):
  def batch_fn(step):
    if step == step_to_stop:
      raise KeyboardInterrupt('test')
    return _batch(step)
  return batch_fn


@pytest.mark.parametrize('kind', ['jit', 'data_parallel'])
def test_k_steps_per_dispatch_are_bitwise_k_single_steps(tmp_path, kind):
  mesh = parallel.make_mesh(1)
  step = (parallel.data_parallel_step(_per_device_step, mesh) if kind == 'data_parallel'
          else jax.jit(jax.shard_map(_per_device_step, mesh=mesh,
                                     in_specs=(jax.P(), jax.P(parallel.AXIS), jax.P()),
                                     out_specs=(jax.P(), jax.P()), check_vma=False)))
  ref, _ = _run(tmp_path / 'k1', step, mesh, 1)
  want_rows, want_saved = _logged(tmp_path / 'k1'), _saved(tmp_path / 'k1')
  assert sorted(want_saved) == [6, 12, 14]

  # k = 3, 14 steps (3 ∤ 14), checkpoints every 6; stopped while the window [6, 9) is
  # being assembled, resumed from step 6.
  with pytest.raises(errors.Interrupted, match='after step 6 of 14'):
    _run(tmp_path / 'k3', step, mesh, 3, batch_fn=_stop_at(7))
  got, meta = _run(tmp_path / 'k3', step, mesh, 3)
  assert meta['step'] == 14 and meta['complete']
  assert _bits(got.params) == _bits(ref.params)
  assert _logged(tmp_path / 'k3') == want_rows   # every step's metrics, as floats
  assert _saved(tmp_path / 'k3') == want_saved

  # k = 4 with checkpoints every 5 (4 ∤ 5), resumed off the grid at 5 by a k = 4 run that
  # started as k = 1: saves at 5, 10, 14, the same states.
  with pytest.raises(errors.Interrupted, match='after step 5 of 14'):
    _run(tmp_path / 'k4', step, mesh, 1, save_every=5, batch_fn=_stop_at(5))
  got, _ = _run(tmp_path / 'k4', step, mesh, 4, save_every=5)
  assert _bits(got.params) == _bits(ref.params)
  assert sorted(_saved(tmp_path / 'k4')) == [5, 10, 14]
  assert _logged(tmp_path / 'k4') == want_rows


def test_alternating_steps_keep_their_order_inside_a_window(tmp_path):
  # on_step on every 3rd step (state.step % 3 == 0), k = 6: two on-steps per window.
  mesh = parallel.make_mesh(1)
  def variant(flag):
    def step_fn(state, batch, rng):
      state, m = _per_device_step(state, batch, rng)
      w = state.params['w'] + flag   # the variants differ in what they compute, too
      return state.replace(params={'w': w}), dict(m, on=jnp.float32(flag))
    return parallel.data_parallel_step(step_fn, mesh)
  alternating = parallel.every_nth(3, variant(1.0), variant(0.0))
  ref, _ = _run(tmp_path / 'k1', alternating, mesh, 1, num_steps=15)
  got, _ = _run(tmp_path / 'k6', alternating, mesh, 6, num_steps=15)
  rows = _logged(tmp_path / 'k6')
  assert [r['on'] for r in rows] == [1.0, 0.0, 0.0] * 5
  assert rows == _logged(tmp_path / 'k1') and _bits(got.params) == _bits(ref.params)


def test_nan_inside_a_window_is_named_by_its_step(tmp_path):
  mesh = parallel.make_mesh(1)
  step = parallel.data_parallel_step(_per_device_step, mesh)
  def batch_fn(step):
    b = _batch(step)
    if step == 4:
      b['x'][0, 0] = np.nan
    return b
  # Batch 4 is NaN: step 5, inside the window of steps 4–6 (log_every 1: one fetch a window).
  with pytest.raises(trainer.NonFiniteError, match=r'loss is nan at step 5 \(the first '
                     r'non-finite one of steps 4–6\)'):
    _run(tmp_path, step, mesh, 3, batch_fn=batch_fn)


def test_several_devices_dispatch_k_steps(tmp_path):
  # 4 devices: batches split over them, the sum all-reduced; the same windows and saves.
  assert jax.device_count() >= 4, 'conftest should give 4 CPU devices'
  mesh = parallel.make_mesh(4)
  step = parallel.data_parallel_step(_per_device_step, mesh)
  ref, _ = _run(tmp_path / 'k1', step, mesh, 1)
  got, meta = _run(tmp_path / 'k3', step, mesh, 3)
  assert meta['step'] == 14 and sorted(_saved(tmp_path / 'k3')) == [6, 12, 14]
  assert _bits(got.params) == _bits(ref.params)
  assert _logged(tmp_path / 'k3') == _logged(tmp_path / 'k1')
  assert _saved(tmp_path / 'k3') == _saved(tmp_path / 'k1')


# ------------------------------------------------------------------------- the real steps
def _real_step(stage, mesh):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline.stages import explainer as explainer_stage, on_float_images
  from lsei_jax.training import steps  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  spec = pipeline.make_spec(c, mesh)
  rng = np.random.default_rng(0)
  d, s = c.model.classifier.hidden_dim, c.data.image_size
  if stage == 'classifier':
    step = parallel.data_parallel_step(on_float_images(steps.classifier_step), mesh,
                                       compiler_options=parallel.convnet_compiler_options())
    make = lambda: {'image': rng.integers(0, 256, (32, s, s, 3), np.uint8),
                    'label': rng.integers(0, 2, 32).astype(np.int32)}
    extra = ()
  else:   # the regularized explainer on every 2nd step, the plain one between
    c.explainer.fisher_every = 2
    step = explainer_stage.explainer_step(spec.mods.explainer, c.explainer, mesh)
    make = lambda: {'image': rng.integers(0, 256, (16, s, s, 3), np.uint8),
                    'hhat': rng.normal(size=(16, d)).astype(np.float32)}
    extra = parallel.replicate((jnp.linspace(0.1, 1.0, d), jnp.full((d,), 0.5)), mesh)
  fresh = lambda: parallel.replicate(pipeline.template_state(spec, stage, jax.random.key(0)),
                                     mesh)
  return step, make, extra, fresh


# Another XLA program may round differently: over these few Adam steps the explainer's
# weights came out up to a few ulp off (float32 ulp ≈ 1.2e-7 relative); a wrong batch, key
# or variant moves them by the learning rate (≥ 1e-3 relative).
REAL_RTOL = 1e-5


@pytest.mark.parametrize('stage', ['classifier', pytest.param('explainer',
                                                              marks=pytest.mark.slow)])
def test_real_steps_in_one_dispatch(stage):
  # k = 4 steps in one program against 4 calls of the step, on one device: the classifier
  # (Eigen's convolutions, dropout) bitwise, as parallel._unrolled_steps is written for; the
  # explainer (phase convolutions, the Fisher regularizer on every 2nd step) to REAL_RTOL.
  mesh = parallel.make_mesh(1)
  step, make, extra, fresh = _real_step(stage, mesh)
  batches = [make() for _ in range(4)]
  keys = jax.random.split(jax.random.key(1), 4)
  state, want = fresh(), []
  choose = getattr(step, 'for_step', lambda i: step)
  for i, b in enumerate(batches):
    state, m = choose(i)(state, parallel.shard_batch(b, mesh), keys[i], *extra)
    want.append(jax.device_get(m))
  stacked = jax.tree.map(lambda *x: np.stack(x), *batches)
  got, ms = parallel.multi_step(step)(fresh(), parallel.shard_batches(stacked, mesh), keys,
                                      *extra)
  ms = jax.device_get(ms)
  if stage == 'classifier':
    assert _bits(got.params) == _bits(state.params)
    assert _bits(got.opt_state) == _bits(state.opt_state)
    for i in range(4):
      assert {k: float(v[i]) for k, v in ms.items()} == {k: float(v) for k, v in
                                                          want[i].items()}
  else:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=REAL_RTOL, atol=1e-7),
                 jax.device_get(got.params), jax.device_get(state.params))
    for i in range(4):
      for k, v in ms.items():
        np.testing.assert_allclose(v[i], want[i][k], rtol=REAL_RTOL, atol=1e-7, err_msg=k)
    assert [float(v) > 0 for v in ms['reg']] == [True, False, True, False]


# ------------------------------------------------------------------------- the config
def test_steps_per_dispatch_is_checked(tiny_config):
  from lsei_jax.training import validate  # pylint: disable=g-import-not-at-top
  sections = ('classifier', 'concepts', 'explainer', 'probe')
  c = tiny_config.copy_and_resolve_references()
  c.steps_per_dispatch = 0
  with pytest.raises(errors.UserError, match='steps_per_dispatch must be a positive integer'):
    validate.check_config(c, sections)
  c.steps_per_dispatch, c.explainer.fisher_every = 4, 3
  with pytest.raises(errors.UserError, match=r'steps_per_dispatch=4 must be a multiple of '
                     r'config.explainer.fisher_every=3 \(or 1\): use e.g. 3'):
    validate.check_config(c, sections)
  c.steps_per_dispatch = 6
  validate.check_config(c, sections)


@pytest.mark.slow
def test_pipeline_trains_with_steps_per_dispatch(tmp_path, tiny_config):
  # Every stage of the tiny config on one device, k = 1 against k = 3 (12 steps, 8 for the
  # probe; checkpoints every 4: windows and single steps mixed). The classifier and the
  # concept learner come out bitwise. The regularized explainer does not: its Fisher
  # regularizer (gradient norm ≈ 1e5 on this tiny config) turns last-bit differences of
  # another XLA program into 0.5% of `reg` by step 4 and more later, and the probe trains
  # on its renders; their losses at the first log agree to 1e-3.
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  stages = ['classifier', 'concepts', 'explainer', 'explainer_noreg', 'probe']
  metas, logs = [], []
  for k in (1, 3):
    c = tiny_config.copy_and_resolve_references()
    c.steps_per_dispatch = k
    workdir = tmp_path / f'k{k}'
    metas.append(pipeline.train(c, str(workdir), stages, mesh=parallel.make_mesh(1)))
    logs.append({s: [json.loads(l) for l in open(workdir / s / 'metrics.jsonl')]
                 for s in stages})
  for s in ('classifier', 'concepts'):
    assert metas[0][s]['fingerprint'] == metas[1][s]['fingerprint'], s
    assert logs[0][s] == logs[1][s], s
  for s in stages:
    assert metas[1][s]['complete'] and metas[1][s]['step'] == metas[0][s]['step']
    assert [r['step'] for r in logs[0][s]] == [r['step'] for r in logs[1][s]]
    np.testing.assert_allclose(logs[1][s][0]['loss'], logs[0][s][0]['loss'], rtol=1e-3,
                               err_msg=s)
