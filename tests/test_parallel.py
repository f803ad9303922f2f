"""The same step on 1 and on 4 devices gives the same parameters (gradients are averaged)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lsei_jax.concepts import dvae as dvae_lib
from lsei_jax.training import parallel, steps
from lsei_jax import pipeline
from lsei_jax.pipeline.stages import explainer as explainer_stage


def _config():
  c = tiny.get_config()
  c.model.classifier.dropout = 0.0  # dropout draws per device, as under pmap
  c.model.dvae.dropout = 0.0
  return c


def _run(stage, mesh, n_steps=3):
  c = _config()
  mods = pipeline.make_spec(c, mesh).mods
  state = pipeline.template_state(pipeline.make_spec(c, mesh), stage, jax.random.key(0))
  rng = np.random.default_rng(0)
  d, s = c.model.classifier.hidden_dim, c.data.image_size
  extra = ()
  if stage == 'classifier':
    fn = steps.classifier_step
    make = lambda: {'image': rng.random((32, s, s, 3), np.float32),
                    'label': rng.integers(0, 2, 32).astype(np.int32)}
  elif stage == 'concepts':
    fn = dvae_lib.make_dvae_step(mods.concepts, c.concepts)
    make = lambda: {'h': rng.normal(size=(32, d)).astype(np.float32)}
  else:
    fn = steps.make_explainer_step(mods.explainer, c.explainer)
    make = lambda: {'image': rng.random((16, s, s, 3), np.float32),
                    'hhat': rng.normal(size=(16, d)).astype(np.float32)}
    extra = parallel.replicate((jnp.linspace(0.1, 1.0, d), jnp.full((d,), 0.5)), mesh)
  step = parallel.data_parallel_step(fn, mesh, num_replicated=len(extra))
  for i in range(n_steps):
    state, metrics = step(state, parallel.shard_batch(make(), mesh), jax.random.key(i), *extra)
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize('stage', ['classifier', 'concepts', 'explainer'])
def test_one_device_equals_four(stage):
  assert jax.device_count() >= 4, 'conftest should give 4 CPU devices'
  p1, m1 = _run(stage, parallel.make_mesh(1))
  p4, m4 = _run(stage, parallel.make_mesh(4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), p1, p4)
  for k in m1:
    np.testing.assert_allclose(m1[k], m4[k], rtol=2e-4, atol=1e-6, err_msg=k)
  if stage == 'explainer':
    assert m1['reg'] > 0  # the regularizer was part of the compared step


def test_batch_must_divide_device_count():
  mesh = parallel.make_mesh(4)
  with pytest.raises(ValueError, match='multiple of the 4 devices'):
    parallel.check_batch(30, mesh, 'config.classifier.batch_size')
  c = tiny.get_config()
  c.classifier.batch_size = 30
  with pytest.raises(ValueError, match='config.classifier.batch_size=30'):
    pipeline.validate_config(c, mesh)


def test_map_in_batches_pads_and_trims():
  mesh = parallel.make_mesh(4)
  fn = parallel.data_parallel_apply(lambda p, b: b['x'] * p, mesh)
  x = np.arange(10, dtype=np.float32)
  np.testing.assert_array_equal(parallel.map_in_batches(fn, 2.0, {'x': x}, 8, mesh), 2 * x)


def test_train_step_compiles_once():
  # A loop that retraced (e.g. a Python scalar changing type) would recompile each step.
  mesh = parallel.make_mesh(4)
  c = _config()
  mods = pipeline.make_spec(c, mesh).mods
  state = pipeline.template_state(pipeline.make_spec(c, mesh), 'concepts', jax.random.key(0))
  step = parallel.data_parallel_step(dvae_lib.make_dvae_step(mods.concepts, c.concepts), mesh)
  rng = np.random.default_rng(0)
  for i in range(4):
    batch = parallel.shard_batch({'h': rng.normal(size=(32, 16)).astype(np.float32)}, mesh)
    state, _ = step(state, batch, jax.random.key(i))
  assert step._cache_size() == 1


def test_fisher_every_alternates_regularized_and_plain_steps():
  """fisher_every=k: the regularizer term is non-zero exactly on steps 0, k, 2k, …"""
  mesh = parallel.make_mesh(1)
  c = _config()
  c.explainer.fisher_every = 3
  mods = pipeline.make_spec(c, mesh).mods
  state = pipeline.template_state(pipeline.make_spec(c, mesh), 'explainer', jax.random.key(0))
  step = explainer_stage.explainer_step(mods.explainer, c.explainer, mesh)
  d, s = c.model.classifier.hidden_dim, c.data.image_size
  extra = parallel.replicate((jnp.linspace(0.1, 1.0, d), jnp.full((d,), 0.5)), mesh)
  rng = np.random.default_rng(0)
  regs = []
  for i in range(7):
    batch = {'image': rng.random((16, s, s, 3), np.float32),
             'hhat': rng.normal(size=(16, d)).astype(np.float32)}
    state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.key(i), *extra)
    regs.append(float(jax.device_get(metrics)['reg']))
  assert [r != 0.0 for r in regs] == [True, False, False, True, False, False, True]
  assert int(state.step) == 7


def test_convnet_compiler_options_change_speed_not_results():
  opts = parallel.convnet_compiler_options()
  if jax.default_backend() == 'cpu':
    assert opts == {'xla_cpu_experimental_ynn_fusion_type': ''}
  c = _config()
  mods = pipeline.make_spec(c).mods
  s = c.data.image_size
  x = jax.random.uniform(jax.random.key(1), (4, s, s, 3))
  params = mods.classifier.init(jax.random.key(0), x)
  embed = lambda p, x: mods.classifier.apply(p, x, method='embed')
  np.testing.assert_allclose(jax.jit(embed, compiler_options=opts)(params, x),
                             jax.jit(embed)(params, x), rtol=1e-5, atol=1e-6)
