import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import fisher_information, fisher_regularizer, similarity
from lsei_jax.fisher import batch_sigma


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _numpy_fisher_linear(W, b, e, noise, loss):
  """Independent estimate for F(e) = e W + b, with closed-form input gradients."""
  e = e.astype(np.float64)
  W = W.astype(np.float64)
  target_logits = e @ W + b
  total = np.zeros(e.shape[1])
  for eps in noise:  # [S] perturbation draws of shape [B, d]
    x = (e + eps) @ W + b
    if loss == 'ce':
      t = _softmax(target_logits)
      logq = x - x.max(-1, keepdims=True)
      logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
      f = -(t * logq).sum(-1)
      grad = (_softmax(x) - t) @ W.T
    else:
      t = _sigmoid(target_logits)
      f = (np.logaddexp(0, x) - t * x).sum(-1)
      grad = (_sigmoid(x) - t) @ W.T
    total += (grad**2 / np.maximum(f, 1e-8)[:, None]).mean(0)
  return total / len(noise)


@pytest.mark.parametrize('loss', ['ce', 'bce'])
def test_matches_numpy_for_linear_fn_and_ignored_coordinates_are_zero(loss):
  rng = np.random.default_rng(0)
  d, m, B, S = 6, 3, 16, 32
  W = rng.normal(size=(d, m)).astype(np.float32)
  W[[1, 4]] = 0.0                      # fn ignores coordinates 1 and 4
  b = rng.normal(size=m).astype(np.float32)
  e = rng.normal(size=(B, d)).astype(np.float32)
  fn = lambda x: x @ W + b
  key = jax.random.key(7)
  info = fisher_information(fn, jnp.asarray(e), key, num_samples=S, loss=loss)
  chex.assert_shape(info, (d,))
  # Same draws as the estimator (σ = batch std), but gradients and f in closed form.
  sigma = e.std(0, ddof=1)
  noise = np.asarray(jax.random.normal(key, (S, B, d))) * sigma
  expected = _numpy_fisher_linear(W, b, e, noise, loss)
  np.testing.assert_allclose(np.asarray(info), expected, rtol=2e-4, atol=1e-7)
  assert info[1] == 0.0 and info[4] == 0.0
  assert np.all(np.asarray(info)[[0, 2, 3, 5]] > 0)


def test_monte_carlo_converges_to_independent_numpy_draws():
  # The estimator is a Monte-Carlo mean: with independent NumPy noise and many samples
  # both approach the same expectation.
  rng = np.random.default_rng(1)
  d, m, B = 4, 2, 8
  W = rng.normal(size=(d, m)).astype(np.float32)
  b = np.zeros(m, np.float32)
  e = rng.normal(size=(B, d)).astype(np.float32)
  sigma = 0.5
  info = fisher_information(lambda x: x @ W + b, jnp.asarray(e), jax.random.key(0),
                            num_samples=4000, loss='ce', sigma=sigma, chunk_size=500)
  noise = rng.normal(size=(4000, B, d)) * sigma
  expected = _numpy_fisher_linear(W, b, e, noise, 'ce')
  np.testing.assert_allclose(np.asarray(info), expected, rtol=0.05)


def test_chunking_gives_the_same_vector():
  mlp = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
  e = jax.random.normal(jax.random.key(0), (10, 5))
  params = mlp.init(jax.random.key(1), e)
  fn = lambda x: mlp.apply(params, x)
  full = fisher_information(fn, e, jax.random.key(2), num_samples=12, loss='ce')
  for chunk in (1, 4, 5):  # 5 does not divide 12: the remainder is handled too
    chunked = fisher_information(fn, e, jax.random.key(2), num_samples=12, loss='ce',
                                 chunk_size=chunk)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-9)
    grouped = fisher_information(fn, e, jax.random.key(2), num_samples=12, loss='ce',
                                 group_size=chunk)
    np.testing.assert_allclose(grouped, full, rtol=1e-5, atol=1e-9)


def test_chunked_estimate_has_the_same_gradient():
  # chunk_size rematerialises chunks in the backward pass; the gradient must not change.
  mlp = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(6)])
  e = jax.random.normal(jax.random.key(0), (5, 4))
  params = mlp.init(jax.random.key(1), e)
  total = lambda p, **kw: jnp.sum(fisher_information(
      lambda x: mlp.apply(p, x), e, jax.random.key(2), num_samples=6, loss='bce', **kw))
  g_full = jax.grad(total)(params)
  for kw in ({'chunk_size': 4}, {'group_size': 4}):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 jax.grad(lambda p: total(p, **kw))(params), g_full)


class FisherVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_fixed_sigma(self):
    W = jnp.arange(12.0).reshape(4, 3) / 10
    e = jax.random.normal(jax.random.key(0), (8, 4))
    f = self.variant(lambda e, s: fisher_information(lambda x: x @ W, e, jax.random.key(1),
                                                     num_samples=4, loss='bce', sigma=s))
    a = f(e, jnp.full((4,), 0.3))
    b = f(e, jnp.full((4,), 0.3))
    np.testing.assert_array_equal(a, b)                # deterministic given the key
    c = fisher_information(lambda x: x @ W, e, jax.random.key(1), num_samples=4,
                           loss='bce', sigma=0.3)      # a float is broadcast
    np.testing.assert_allclose(a, c, rtol=1e-5)


def test_sigma_default_is_scaled_batch_std():
  e = jax.random.normal(jax.random.key(0), (32, 3)) * jnp.array([1.0, 2.0, 0.0])
  np.testing.assert_allclose(batch_sigma(e, 0.5), 0.5 * np.std(np.asarray(e), 0, ddof=1),
                             rtol=1e-5)
  W = jnp.ones((3, 2)) * jnp.array([[1.0], [1.0], [1.0]]) * jnp.array([1.0, -1.0])
  a = fisher_information(lambda x: x @ W, e, jax.random.key(1), num_samples=3, loss='ce')
  b = fisher_information(lambda x: x @ W, e, jax.random.key(1), num_samples=3, loss='ce',
                         sigma=batch_sigma(e))
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_regularizer_gradient_through_generator_information_is_finite_and_nonzero():
  g = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(12)])
  c = nn.Dense(2)
  e = jax.random.normal(jax.random.key(0), (8, 6))
  pg = g.init(jax.random.key(1), e)
  pc = c.init(jax.random.key(2), e)
  info_c = fisher_information(lambda x: c.apply(pc, x), e, jax.random.key(3),
                              num_samples=4, loss='ce')

  def reg(params):
    info_g = fisher_information(lambda x: g.apply(params, x), e, jax.random.key(4),
                                num_samples=4, loss='bce')
    return fisher_regularizer(info_g, info_c, 'cosine')

  value, grads = jax.jit(jax.value_and_grad(reg))(pg)
  assert value >= 1.0  # 1 / cosine of non-negative vectors
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0


def test_similarity_kinds():
  a, b = jnp.array([1.0, 0.0, 2.0]), jnp.array([2.0, 1.0, 0.0])
  assert float(similarity(a, b, 'dot')) == pytest.approx(2.0)
  assert float(similarity(a, b, 'cosine')) == pytest.approx(2 / (np.sqrt(5) * np.sqrt(5)))
  assert float(fisher_regularizer(a, a)) == pytest.approx(1.0, rel=1e-6)
  with pytest.raises(ValueError, match='unknown similarity'):
    similarity(a, b, 'l2')
  with pytest.raises(ValueError, match='unknown Fisher loss'):
    fisher_information(lambda x: x, a[None], jax.random.key(0), num_samples=1, loss='mse')


def test_regularizer_gradient_is_finite_when_information_is_zero():
  # A function that ignores its input has zero information; the cosine must not give NaN.
  info_c = jnp.array([1.0, 2.0, 0.0])
  grad = jax.grad(lambda a: fisher_regularizer(a, info_c))(jnp.zeros(3))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.isfinite(float(fisher_regularizer(jnp.zeros(3), info_c)))


def test_cosine_of_tiny_vectors_is_exact_and_differentiable():
  a, b = jnp.array([1.0, 2.0, 0.5]), jnp.array([2.0, 0.5, 1.0])
  expected = float(similarity(a, b))
  tiny = float(similarity(a * 1e-20, b * 1e-22))   # squared norms underflow in float32
  assert tiny == pytest.approx(expected, rel=1e-5)
  grad = jax.grad(lambda x: fisher_regularizer(x * 1e-20, b * 1e-22))(a)
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad) != 0)
