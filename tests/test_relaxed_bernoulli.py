import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import bernoulli_kl, hard_code, relaxed_bernoulli


@pytest.mark.parametrize('temperature', [0.1, 0.5, 1.0, 2.0])
def test_hard_sample_frequency_is_sigmoid_of_logit(temperature):
  # Binary concrete: P(σ((l + L)/τ) > ½) = σ(l), whatever the temperature.
  logits = jnp.array([-2.0, -0.5, 0.0, 1.0, 3.0])
  n = 40_000
  samples = relaxed_bernoulli(jax.random.key(1), jnp.broadcast_to(logits, (n, 5)),
                              temperature, hard=True)
  freq = np.asarray(samples.mean(0))
  np.testing.assert_allclose(freq, np.asarray(jax.nn.sigmoid(logits)), atol=0.012)
  assert set(np.unique(np.asarray(samples))) <= {0.0, 1.0}


def test_soft_sample_shape_range_and_temperature():
  logits = jax.random.normal(jax.random.key(0), (64, 8)) * 3
  soft = relaxed_bernoulli(jax.random.key(2), logits, 1.0)
  chex.assert_shape(soft, (64, 8))
  assert float(soft.min()) >= 0 and float(soft.max()) <= 1
  # Lower temperature pushes samples towards {0, 1}.
  cold = relaxed_bernoulli(jax.random.key(2), logits, 0.05)
  dist = lambda s: float(jnp.mean(jnp.minimum(s, 1 - s)))
  assert dist(cold) < dist(soft) / 3


def test_straight_through_gradient_is_relaxed_gradient():
  logits = jnp.array([[-1.0, 0.3, 2.0]])
  key = jax.random.key(3)
  w = jnp.array([1.0, 2.0, 3.0])
  g_hard = jax.grad(lambda l: jnp.sum(relaxed_bernoulli(key, l, 0.7, hard=True) * w))(logits)
  g_soft = jax.grad(lambda l: jnp.sum(relaxed_bernoulli(key, l, 0.7) * w))(logits)
  np.testing.assert_allclose(g_hard, g_soft, rtol=1e-6)
  assert np.all(np.abs(np.asarray(g_soft)) > 0)


def test_saturated_logits_are_finite():
  logits = jnp.array([-100.0, -30.0, 30.0, 100.0])
  for hard in (False, True):
    f = lambda l: jnp.sum(relaxed_bernoulli(jax.random.key(4), l, 0.5, hard=hard))
    val, grad = jax.value_and_grad(f)(logits)
    assert np.isfinite(val) and np.all(np.isfinite(grad))


def test_kl_known_values_and_gradients():
  assert float(bernoulli_kl(jnp.array(0.0))) == pytest.approx(0.0, abs=1e-7)
  big = jnp.array([-100.0, 100.0])
  np.testing.assert_allclose(bernoulli_kl(big), np.log(2), rtol=1e-6)
  grads = jax.grad(lambda l: jnp.sum(bernoulli_kl(l)))(jnp.array([-100.0, -30.0, 0.0, 30.0, 100.0]))
  assert np.all(np.isfinite(grads))
  assert float(grads[2]) == pytest.approx(0.0, abs=1e-7)  # minimum at l = 0


def test_kl_matches_direct_formula():
  l = np.linspace(-6, 6, 25)
  p = 1 / (1 + np.exp(-l))
  direct = p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p))
  np.testing.assert_allclose(bernoulli_kl(jnp.asarray(l, jnp.float32)), direct, atol=1e-6)
  assert np.all(direct >= 0)


def test_hard_code():
  np.testing.assert_array_equal(hard_code(jnp.array([-1.0, 0.0, 0.1, 5.0])), [0, 0, 1, 1])


def test_jit_with_static_hard_matches_eager():
  key, logits = jax.random.key(3), jnp.linspace(-4.0, 4.0, 12).reshape(3, 4)
  jitted = jax.jit(relaxed_bernoulli, static_argnames='hard')
  # Soft samples: jit fuses log/sigmoid into one kernel and eager runs them op by op, so
  # the last bits may differ by CPU (vector width, FMA); float32 → a few ulps of tolerance.
  np.testing.assert_allclose(jitted(key, logits, 0.7, hard=False),
                             relaxed_bernoulli(key, logits, 0.7, hard=False), rtol=1e-6,
                             atol=1e-7)
  # Hard samples are 0/1: they differ only where logit + noise lies within ulps of 0.
  np.testing.assert_array_equal(jitted(key, logits, 0.7, hard=True),
                                relaxed_bernoulli(key, logits, 0.7, hard=True))
  # Temperature may be traced; hard may not, and says how to fix it.
  np.testing.assert_array_equal(jitted(key, logits, jnp.float32(0.7), hard=True),
                                relaxed_bernoulli(key, logits, 0.7, hard=True))
  with pytest.raises(TypeError, match="hard must be a Python bool.*static_argnames='hard'"):
    jax.jit(relaxed_bernoulli)(key, logits, 0.7, True)
