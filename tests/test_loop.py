"""The training loop off the host's critical path (issue 27): metrics fetched per window,
every step of a window checked for NaN, alternating steps chosen by the loop's own index,
uint8 images converted on the device bitwise as on the host."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from lsei_jax import errors
from lsei_jax.pipeline.stages import float_images, on_float_images
from lsei_jax.training import parallel, trainer


def test_device_conversion_of_uint8_is_bitwise_the_hosts():
  # Every uint8 value, in a batch shaped like images, on 1 and on 4 devices.
  x = np.arange(256, dtype=np.uint8).repeat(3 * 4).reshape(64, 4, 4, 3)
  want = x.astype(np.float32) / 255.0
  got = jax.jit(float_images)({'image': x, 'label': np.zeros(64, np.int32)})
  np.testing.assert_array_equal(np.asarray(got['image']).view(np.uint32), want.view(np.uint32))
  assert got['label'].dtype == jnp.int32
  mesh = parallel.make_mesh()
  apply = parallel.data_parallel_apply(lambda p, b: float_images(b)['image'] * p, mesh,
                                       parallel.convnet_compiler_options())
  out = parallel.map_in_batches(apply, jnp.float32(1.0), {'image': x}, 16, mesh)
  np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_float_images_pass_unchanged_through_a_wrapped_step():
  seen = {}
  def step(state, batch, rng):
    seen['dtype'] = batch['image'].dtype
    return state, {'loss': jnp.sum(batch['image'])}
  x = np.full((2, 2, 2, 3), 0.5, np.float32)
  _, m = jax.jit(on_float_images(step))(0, {'image': x}, None)
  assert seen['dtype'] == jnp.float32 and float(m['loss']) == 12.0


def _state():
  return train_state.TrainState.create(apply_fn=None, params={'w': jnp.zeros(3)},
                                       tx=optax.sgd(0.1))


@jax.jit
def _sgd_step(state, batch, rng):
  del rng
  loss_fn = lambda p: jnp.mean((p['w'][None] - batch['x']) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), {'loss': loss, 'grad_norm': optax.tree.norm(grads)}


def _batch(step, bad=None):
  x = np.random.default_rng(step).normal(size=(4, 3)).astype(np.float32)
  if step == bad:
    x[1, 2] = np.nan
  return {'x': x}


def _run(tmp_path, num_steps, log_every, save_every, step=_sgd_step, bad=None):
  stage = trainer.Stage('toy', num_steps, _state(), step, lambda s: _batch(s, bad),
                        jax.random.key(0))
  return trainer.run_stage(stage, str(tmp_path), parallel.make_mesh(1), save_every=save_every,
                           max_to_keep=2, log_every=log_every)


def _logged(tmp_path):
  with open(os.path.join(tmp_path, 'toy', 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_logged_metrics_are_those_of_the_logged_steps(tmp_path):
  # An independent run of the same steps, one fetch per step.
  state, losses = _state(), []
  for s in range(12):
    state, m = _sgd_step(state, _batch(s), None)
    losses.append(float(m['loss']))
  final, meta = _run(tmp_path, 12, log_every=5, save_every=8)
  rows = _logged(tmp_path)
  assert [r['step'] for r in rows] == [5, 8, 10, 12]
  assert [r['loss'] for r in rows] == [losses[4], losses[7], losses[9], losses[11]]
  np.testing.assert_array_equal(final.params['w'], state.params['w'])
  assert meta['complete'] and meta['step'] == 12


def test_nan_inside_a_window_is_reported_at_its_own_step(tmp_path):
  # Batch 6 (the 7th step) is NaN; the window is fetched at step 10. The old loop saw only
  # step 10's metrics and named step 10.
  with pytest.raises(trainer.NonFiniteError, match=r'toy: loss is nan at step 7 \(the first '
                     r'non-finite one of steps 1–10\)'):
    _run(tmp_path, 20, log_every=10, save_every=20, bad=6)
  assert not os.path.exists(os.path.join(tmp_path, 'toy', '20'))


def test_long_windows_are_fetched_every_max_window_steps(tmp_path, monkeypatch):
  monkeypatch.setattr(trainer, 'MAX_WINDOW', 4)
  with pytest.raises(trainer.NonFiniteError, match=r'at step 3 \(the first non-finite one '
                     r'of steps 1–4\)'):
    _run(tmp_path, 20, log_every=10, save_every=10, bad=2)


def test_alternating_steps_are_chosen_by_the_loops_index_and_resume(tmp_path):
  on = jax.jit(lambda s, b, r: (_sgd_step(s, b, r)[0], {'loss': jnp.float32(1.0)}))
  off = jax.jit(lambda s, b, r: (_sgd_step(s, b, r)[0], {'loss': jnp.float32(0.0)}))
  alternating = parallel.every_nth(3, on, off)
  def stop_at_4(step):
    if step == 4:
      raise KeyboardInterrupt('test')
    return _batch(step)
  mesh = parallel.make_mesh(1)
  run = lambda batch_fn: trainer.run_stage(
      trainer.Stage('toy', 9, _state(), alternating, batch_fn, jax.random.key(0)),
      str(tmp_path), mesh, save_every=4, max_to_keep=2, log_every=1)
  with pytest.raises(errors.Interrupted, match='after step 4 of 9'):
    run(stop_at_4)
  _, meta = run(_batch)   # resumed from the checkpoint at step 4
  assert meta['step'] == 9
  assert [r['step'] for r in _logged(tmp_path)] == list(range(1, 10))
  # on_step where state.step % 3 == 0, before and after the restore.
  assert [r['loss'] for r in _logged(tmp_path)] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_first_non_finite_names_the_first_bad_entry():
  host = [{'loss': 1.0}, {'loss': 2.0, 'grad_norm': np.inf}, {'loss': np.nan}]
  assert trainer.first_non_finite(host, 41) == (42, 'grad_norm', np.inf)
  assert trainer.first_non_finite(host[:1], 41) is None


# ------------------------------------------------ an untrained state made on another device
def test_untrained_state_from_another_device_is_accepted_a_trained_one_is_not():
  """The sanity check's random classifier is recomputed and compared with the stored one.
  Another device's initialisers may round in the last bits (the hash differs); values within
  UNTRAINED_RTOL are the same state, a state one optimiser step away is not."""
  from lsei_jax.training import checkpoints, trainer
  fresh = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32),
           'b': jnp.zeros(8)}
  ulp = jax.tree.map(lambda x: np.nextafter(np.asarray(x), np.float32(np.inf)), fresh)
  stepped = jax.tree.map(lambda x: np.asarray(x) - 1e-3 * np.sign(np.asarray(x) + 0.5), fresh)
  expected = checkpoints.fingerprint(fresh)
  meta = lambda params, steps=0: {'fingerprint': checkpoints.fingerprint(params),
                                  'num_steps': steps}
  assert checkpoints.fingerprint(ulp) != expected   # a hash alone would refuse it
  trainer.check_untrained('d', 'classifier', meta(ulp), expected, ulp, fresh)
  with pytest.raises(checkpoints.CheckpointError, match='not the untrained one'):
    trainer.check_untrained('d', 'classifier', meta(stepped), expected, stepped, fresh)
  with pytest.raises(checkpoints.CheckpointError, match='trained for 1 steps'):
    trainer.check_untrained('d', 'classifier', meta(fresh, 1), expected, fresh, fresh)
  with pytest.raises(checkpoints.CheckpointError):   # no values to compare: the hash decides
    trainer.check_untrained('d', 'classifier', meta(ulp), expected)
