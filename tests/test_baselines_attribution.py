"""Attribution maps against closed forms: a linear model's gradient is its weights."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import baselines

B, H, W, C, K = 3, 8, 8, 3, 2


@pytest.fixture(scope='module')
def linear():
  """logits[b, k] = Σ x[b] ⊙ w[k] + c[k], blind to the top-left 4×4 quadrant."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(K, H, W, C)).astype(np.float32)
  w[:, :4, :4] = 0.0
  c = rng.normal(size=K).astype(np.float32)
  x = rng.uniform(size=(B, H, W, C)).astype(np.float32)
  target = np.array([0, 1, 1], np.int32)
  fn = lambda im: jnp.einsum('bhwc,khwc->bk', im, w) + c
  return fn, w, jnp.asarray(x), jnp.asarray(target)


@pytest.fixture(scope='module')
def smooth():
  """A smooth nonlinear two-layer net (tanh), where IG is not exact at few steps."""
  rng = np.random.default_rng(1)
  w1 = rng.normal(size=(H * W * C, 16)).astype(np.float32) / 8
  w2 = rng.normal(size=(16, K)).astype(np.float32)
  fn = lambda im: jnp.tanh(im.reshape(im.shape[0], -1) @ w1) @ w2
  x = jnp.asarray(rng.uniform(size=(B, H, W, C)).astype(np.float32))
  return fn, x, jnp.array([1, 0, 1], jnp.int32)


def test_gradient_of_linear_model_is_its_weights(linear):
  fn, w, x, t = linear
  g = jax.jit(functools.partial(baselines.vanilla_gradient, fn))(x, t)
  chex.assert_shape(g, (B, H, W, C))
  np.testing.assert_allclose(g, w[np.asarray(t)], rtol=1e-6)


def test_gradient_x_input_of_linear_model_is_w_times_x(linear):
  fn, w, x, t = linear
  gx = baselines.gradient_x_input(fn, x, t)
  np.testing.assert_allclose(gx, w[np.asarray(t)] * np.asarray(x), rtol=1e-6)


def test_integrated_gradients_of_linear_model_is_exact_for_any_steps(linear):
  fn, w, x, t = linear
  ig = baselines.integrated_gradients(fn, x, t, baseline=0.25, steps=1)
  np.testing.assert_allclose(ig, w[np.asarray(t)] * (np.asarray(x) - 0.25), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('rule', ['trapezoid', 'midpoint'])
def test_integrated_gradients_completeness(smooth, rule):
  fn, x, t = smooth
  ig = jax.jit(functools.partial(baselines.integrated_gradients, fn, steps=64, rule=rule,
                                 baseline=0.5))(x, t)
  total, diff = baselines.completeness_gap(fn, x, t, ig, baseline=0.5)
  assert np.all(np.abs(np.asarray(diff)) > 0.05)           # the check is not vacuous
  np.testing.assert_allclose(total, diff, rtol=2e-3, atol=1e-4)
  assert bool(jnp.all(baselines.check_completeness(fn, x, t, ig, baseline=0.5, rtol=2e-3)))
  # With one step the Riemann sum is far off, and the helper says so.
  ig1 = baselines.integrated_gradients(fn, x, t, steps=1, rule=rule, baseline=0.5)
  assert not bool(jnp.all(baselines.check_completeness(fn, x, t, ig1, baseline=0.5,
                                                       rtol=1e-3, atol=1e-5)))


def test_integrated_gradients_chunking_does_not_change_the_result(smooth):
  fn, x, t = smooth
  full = baselines.integrated_gradients(fn, x, t, steps=8)
  chunked = baselines.integrated_gradients(fn, x, t, steps=8, chunk_size=3)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)


def test_smoothgrad_of_linear_model_is_its_gradient(linear):
  fn, w, x, t = linear
  sg = baselines.smoothgrad(fn, x, t, jax.random.key(0), num_samples=5, noise_level=0.2)
  np.testing.assert_allclose(sg, w[np.asarray(t)], rtol=1e-5, atol=1e-6)


def test_smoothgrad_is_deterministic_and_chunk_invariant(smooth):
  fn, x, t = smooth
  key = jax.random.key(3)
  a = baselines.smoothgrad(fn, x, t, key, num_samples=6, value_range=(0.0, 1.0))
  b = baselines.smoothgrad(fn, x, t, key, num_samples=6, value_range=(0.0, 1.0),
                           chunk_size=4)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  plain = baselines.vanilla_gradient(fn, x, t)
  assert not np.allclose(a, plain)                             # noise did something
  c = baselines.smoothgrad(fn, x, t, jax.random.key(4), num_samples=6,
                           value_range=(0.0, 1.0))
  assert not np.allclose(a, c)


def test_occlusion_of_ignored_patch_is_exactly_zero(linear):
  fn, w, x, t = linear
  occ = baselines.occlusion(fn, x, t, patch_size=4, fill_value=0.3)
  chex.assert_shape(occ, (B, H, W))
  occ = np.asarray(occ)
  assert np.all(occ[:, :4, :4] == 0.0)
  # Elsewhere each pixel holds its patch's drop Σ_patch w ⊙ (x − fill).
  wt, xn = w[np.asarray(t)], np.asarray(x)
  expected = np.sum((wt * (xn - 0.3))[:, 4:, 4:], axis=(1, 2, 3))
  np.testing.assert_allclose(occ[:, 6, 5], expected, rtol=1e-4, atol=1e-5)


def test_occlusion_overlapping_patches_and_chunking(linear):
  fn, _, x, t = linear
  masks = baselines.occlusion_masks(H, W, patch_size=3, stride=2)
  # Offsets 0, 2, 4 and the edge-flush 5: every pixel is covered.
  assert masks.shape == (16, H, W) and masks.any(0).all()
  a = baselines.occlusion(fn, x, t, patch_size=3, stride=2)
  b = baselines.occlusion(fn, x, t, patch_size=3, stride=2, chunk_size=5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
