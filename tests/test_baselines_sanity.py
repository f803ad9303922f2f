"""Model-randomisation sanity check: similarity measures, cascade order, and that gradient
maps of a real Classifier change while a model-blind "method" is flagged."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import baselines
from lsei_jax.models import Classifier
from lsei_jax.training import parallel


def test_spearman_known_values():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(2, 5, 5)))
  np.testing.assert_allclose(baselines.spearman(a, a), 1.0, rtol=1e-6)
  np.testing.assert_allclose(baselines.spearman(a, -a), -1.0, rtol=1e-6)
  np.testing.assert_allclose(baselines.spearman(a, jnp.exp(3 * a)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(baselines.spearman(a, -a, absolute=True), 1.0, rtol=1e-6)
  # Ranks 0..4 vs 0,1,2,4,3: 1 − 6·Σd²/(n(n²−1)) = 1 − 12/120.
  x = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
  y = jnp.array([[10.0, 20.0, 30.0, 50.0, 40.0]])
  np.testing.assert_allclose(baselines.spearman(x, y), [0.9], rtol=1e-6)


def test_ssim_known_values():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.uniform(size=(2, 16, 16)).astype(np.float32))
  np.testing.assert_allclose(baselines.ssim(a, a), 1.0, rtol=1e-5)
  noisy = jnp.clip(a + 0.3 * rng.normal(size=a.shape), 0, 1)
  other = jnp.asarray(rng.uniform(size=(2, 16, 16)).astype(np.float32))
  s_noisy, s_other = baselines.ssim(a, noisy), baselines.ssim(a, other)
  assert np.all(s_other < s_noisy) and np.all(s_noisy < 0.9) and np.all(np.abs(s_other) < 0.2)
  n = baselines.normalize_abs(jnp.asarray(rng.normal(size=(2, 4, 4, 3))))
  assert n.shape == (2, 4, 4) and float(n.min()) >= 0 and np.allclose(n.max((1, 2)), 1.0)


@pytest.fixture(scope='module')
def small_classifier():
  model = Classifier(channels=(4, 8), strides=(2, 2), hidden_dim=16)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  params = model.init(jax.random.key(1), x[:1])['params']
  return model, params, x, jnp.array([0, 1, 0, 1])


def test_cascade_draws_the_eager_initial_weights_bitwise(small_classifier):
  # Its init is jitted at a quicker LLVM level (compile_cache.init_compiler_options): the
  # fresh weights must still be model.init's own, every bit.
  model, params, x, _ = small_classifier
  levels = baselines.cascading_randomization(model, params, jax.random.key(2), x[:1])
  eager = model.init(jax.random.key(2), x[:1])['params']
  _, every = levels[-1]  # every layer re-initialised
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               eager, every)


def test_cascade_goes_top_down_cumulatively(small_classifier):
  model, params, x, _ = small_classifier
  levels = baselines.cascading_randomization(model, params, jax.random.key(2), x[:1])
  names = [n for n, _ in levels]
  assert names == ['c2/Dense_0', 'c1/Dense_0', 'c1/Conv_1', 'c1/Conv_0']
  for i, (_, p) in enumerate(levels):
    for j, path in enumerate(n.split('/') for n in names):
      changed = not np.array_equal(p[path[0]][path[1]]['kernel'],
                                   params[path[0]][path[1]]['kernel'])
      assert changed == (j <= i), (i, j)
  # The input tree is not modified.
  fresh = model.init(jax.random.key(1), x[:1])['params']
  jax.tree.map(np.testing.assert_array_equal, params, fresh)


def test_randomisation_changes_gradient_maps_and_flags_blind_method(small_classifier):
  model, params, x, t = small_classifier

  @jax.jit
  def grad_fn(p, images, target):
    return baselines.vanilla_gradient(lambda im: model.apply({'params': p}, im), images,
                                      target)

  blind = jax.jit(lambda p, images, target: images)     # edge-detector-like: no model
  key = jax.random.key(3)
  results = {name: baselines.model_randomization(fn, model, params, x, t, key)
             for name, fn in (('gradient', grad_fn), ('input', blind))}
  g = results['gradient']
  assert g['spearman'].shape == (4, 4) and g['ssim'].shape == (4, 4)
  # Gradient maps decorrelate once the layers are re-initialised.
  assert float(g['spearman_abs'][-1].mean()) < 0.5
  assert float(g['spearman'][-1].mean()) < 0.5
  assert float(g['ssim'][-1].mean()) < float(results['input']['ssim'][-1].mean())
  np.testing.assert_allclose(results['input']['spearman_abs'], 1.0, rtol=1e-6)
  assert baselines.flag_insensitive(results) == {'gradient': False, 'input': True}


def test_randomisation_traces_the_attribution_once_for_placed_params(small_classifier):
  # Restored checkpoints are committed to a mesh sharding, fresh weights are not: the
  # fresh ones are placed like the ones they replace, so every level reuses one trace.
  model, params, x, t = small_classifier
  mesh = parallel.make_mesh()
  placed = parallel.replicate(params, mesh)

  @chex.assert_max_traces(n=1)
  def grad_fn(p, images, target):
    return baselines.vanilla_gradient(lambda im: model.apply({'params': p}, im), images,
                                      target)

  r = baselines.model_randomization(jax.jit(grad_fn), model, placed, x, t, jax.random.key(3))
  assert len(r['layers']) == 4
  # The same values as with unplaced params (placement is speed only).
  grad_plain = jax.jit(lambda p, images, target: baselines.vanilla_gradient(
      lambda im: model.apply({'params': p}, im), images, target))
  plain = baselines.model_randomization(grad_plain, model, params, x, t, jax.random.key(3))
  np.testing.assert_allclose(r['spearman'], plain['spearman'], rtol=1e-6)
  np.testing.assert_allclose(r['ssim'], plain['ssim'], rtol=1e-6)
