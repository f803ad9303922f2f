import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import fisher_information, fisher_regularizer, models, similarity
from lsei_jax.fisher import STATIC_ARGNAMES, batch_sigma, fisher_information_from_noise


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- exact paths
def _numpy_fisher_linear_vec(W, b, e, sigma, noise, loss, target=None):
  """Float64 oracle for F(e) = e W + b, all draws at once: noise [S, B, d] → I [d].

  target: the unperturbed logits [B, m] (default e W + b), held fixed as stop_gradient does.
  """
  W, b, e = (np.asarray(a, np.float64) for a in (W, b, e))
  target = e @ W + b if target is None else target           # [B, m]
  x = (e + sigma * np.asarray(noise, np.float64)) @ W + b     # [S, B, m]
  if loss == 'ce':
    t = _softmax(target)
    logq = x - x.max(-1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    f = -(t * logq).sum(-1)
    grad = (np.exp(logq) - t) @ W.T
  else:
    t = _sigmoid(target)
    f = (np.logaddexp(0, x) - t * x).sum(-1)
    grad = (_sigmoid(x) - t) @ W.T
  return (grad**2 / np.maximum(f, 1e-8)[..., None]).mean((0, 1))


def _linear_problem(d=5, m=3, B=16, seed=1):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(d, m)).astype(np.float32), rng.normal(size=m).astype(np.float32),
          rng.normal(size=(B, d)).astype(np.float32))


# 16 rows, d = 5, hundreds of perturbations per chunk: the sizes at which lax.map's chunked
# outputs came out 4-5% off under XLA:CPU's default YNNPACK fusion. (S, chunk) covers 2, 8
# and 40 chunks and a remainder chunk.
@pytest.mark.parametrize('loss', ['ce', 'bce'])
@pytest.mark.parametrize('num_samples,chunk', [(1000, 500), (4000, 500), (1000, 300),
                                               (4000, 100)])
def test_chunked_estimate_matches_float64_numpy_at_scale(loss, num_samples, chunk):
  W, b, e = _linear_problem()
  key, sigma = jax.random.key(0), 0.5
  noise = np.asarray(jax.random.normal(key, (num_samples,) + e.shape))
  expected = _numpy_fisher_linear_vec(W, b, e, sigma, noise, loss)
  fn = lambda x: x @ W + b
  for kw in ({'chunk_size': chunk}, {'group_size': chunk}, {}):
    info = fisher_information(fn, jnp.asarray(e), key, num_samples=num_samples, loss=loss,
                              sigma=sigma, **kw)
    np.testing.assert_allclose(np.asarray(info), expected, rtol=1e-5, err_msg=str(kw))


@pytest.mark.parametrize('num_samples,chunk', [(1000, 500), (1000, 300), (2400, 60)])
def test_chunked_gradient_matches_float64_finite_differences(num_samples, chunk):
  # d Σ_i I_i / d(W, b) against central differences of the float64 oracle (same noise;
  # the target F(e) is a stop_gradient, so it stays at the unperturbed weights).
  W, b, e = _linear_problem(m=2)
  key, sigma = jax.random.key(3), 0.5
  noise = np.asarray(jax.random.normal(key, (num_samples,) + e.shape))
  target = e.astype(np.float64) @ W + b

  def oracle(Wb):
    return _numpy_fisher_linear_vec(Wb[:-1], Wb[-1], e, sigma, noise, 'ce', target).sum()
  Wb = np.concatenate([W, b[None]]).astype(np.float64)
  h = 1e-6
  expected = np.zeros_like(Wb)
  for idx in np.ndindex(*Wb.shape):
    step = np.zeros_like(Wb)
    step[idx] = h
    expected[idx] = (oracle(Wb + step) - oracle(Wb - step)) / (2 * h)

  def total(Wb, **kw):
    return jnp.sum(fisher_information(lambda x: x @ Wb[:-1] + Wb[-1], jnp.asarray(e), key,
                                      num_samples=num_samples, loss='ce', sigma=sigma, **kw))
  for kw in ({'chunk_size': chunk}, {'group_size': chunk}, {}):
    grad = jax.jit(jax.grad(lambda p: total(p, **kw)))(jnp.asarray(Wb, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max(), err_msg=str(kw))


@pytest.mark.slow
def test_chunked_mlp_value_and_gradient_equal_unchunked_at_scale():
  # A nonlinear fn, hundreds of perturbations per chunk, under jit with XLA's default flags.
  mlp = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
  e = jax.random.normal(jax.random.key(0), (16, 5))
  params = mlp.init(jax.random.key(1), e)

  def total(p, **kw):
    return fisher_information(lambda x: mlp.apply(p, x), e, jax.random.key(2),
                              num_samples=1200, loss='ce', **kw)
  full_v = jax.jit(total)(params)
  full_g = jax.jit(jax.grad(lambda p: total(p).sum()))(params)
  for kw in ({'chunk_size': 500}, {'chunk_size': 30}, {'group_size': 400}):
    np.testing.assert_allclose(jax.jit(lambda p: total(p, **kw))(params), full_v, rtol=1e-5)
    g = jax.jit(jax.grad(lambda p: total(p, **kw).sum()))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6 * np.abs(b).max()),
                 g, full_g)


@pytest.mark.slow
def test_chunked_explainer_value_and_gradient_equal_unchunked_and_use_canonical_convs():
  # The regularizer's real fn, a transposed-conv decoder: chunks (a lax.scan), a remainder
  # chunk and groups give the unchunked value and parameter gradient, and every
  # convolution of the chunked gradient is NHWC/HWIO/NHWC without groups, the only form
  # XLA:CPU runs fast inside a loop body (layers.canonical_conv).
  g = models.Explainer(image_size=16, channels=(8, 4))
  e = jax.random.normal(jax.random.key(0), (6, 10))
  params = g.init(jax.random.key(1), e)['params']

  def total(p, **kw):
    return fisher_information(lambda x: g.apply({'params': p}, x), e, jax.random.key(2),
                              num_samples=6, loss='bce', **kw)
  grad = lambda **kw: jax.jit(jax.grad(lambda p: jnp.sum(total(p, **kw) ** 2)))
  full_v, full_g = jax.jit(total)(params), grad()(params)
  for kw in ({'chunk_size': 1}, {'chunk_size': 4}, {'group_size': 4}):
    np.testing.assert_allclose(jax.jit(lambda p: total(p, **kw))(params), full_v, rtol=1e-5,
                               err_msg=str(kw))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6 * np.abs(b).max()),
                 grad(**kw)(params), full_g)
  hlo = grad(chunk_size=2).lower(params).as_text(dialect='hlo')
  convs = [line for line in hlo.splitlines() if ' convolution(' in line]
  assert convs and all('dim_labels=b01f_01io->b01f' in c for c in convs)
  assert not any('feature_group_count' in c for c in convs)


# ----------------------------------------------------------------------------- API promises
def test_jit_of_the_estimator_itself_with_documented_static_argnames():
  W, b, e = _linear_problem()
  fn = lambda x: x @ W + b
  jitted = jax.jit(fisher_information, static_argnames=STATIC_ARGNAMES)
  kw = dict(num_samples=64, loss='bce', chunk_size=16)
  a = jitted(fn, jnp.asarray(e), jax.random.key(0), sigma=jnp.full(5, 0.3), **kw)
  b_ = fisher_information(fn, jnp.asarray(e), jax.random.key(0), sigma=0.3, **kw)
  np.testing.assert_allclose(a, b_, rtol=1e-6)
  # sigma_scale and floor are traced: changing them does not need static arguments.
  jitted(fn, jnp.asarray(e), jax.random.key(0), sigma_scale=0.5, floor=1e-6, **kw)


def _products(fn_of_params, params) -> list[str]:
  """The dot_general and convolution lines of fn_of_params' lowered StableHLO."""
  text = jax.jit(fn_of_params).lower(params).as_text()
  return [l for l in text.splitlines()
          if 'stablehlo.dot_general' in l or 'stablehlo.convolution' in l]


@pytest.mark.parametrize('precision, highest', [('highest', True), (None, False)])
def test_every_product_of_the_estimator_and_its_gradient_runs_at_the_asked_precision(
    precision, highest):
  # JAX's default precision rounds float32 operands on GPUs (TF32: 17 of this module's
  # oracle tests failed on an H200) and TPUs (bfloat16). The statistic asks for 'highest'
  # by default, in its own products and in the transposed ones of its gradient, whatever
  # the caller's default; None leaves the products as the caller traces them.
  conv, dense = nn.Conv(4, (3, 3)), nn.Dense(3)
  params = {'c': conv.init(jax.random.key(1), jnp.zeros((1, 4, 4, 1))),
            'd': dense.init(jax.random.key(2), jnp.zeros((1, 64)))}
  e = jax.random.normal(jax.random.key(0), (5, 16))

  def fn(p, x):
    h = conv.apply(p['c'], x.reshape(-1, 4, 4, 1))
    return dense.apply(p['d'], h.reshape(x.shape[0], -1))

  def info(p):
    return fisher_information(lambda x: fn(p, x), e, jax.random.key(3), num_samples=2,
                              loss='ce', group_size=1, precision=precision)

  grad = jax.grad(lambda p: jnp.sum(info(p)))
  for f in (info, grad):
    lines = _products(f, params)
    assert len(lines) >= 6  # target, perturbed forward and input gradient: convs and dots
    assert [('HIGHEST' in l) for l in lines] == [highest] * len(lines)


@pytest.mark.parametrize('precision, highest', [('highest', True), (None, False)])
def test_the_explainers_custom_vjp_convs_keep_the_precision_in_the_outer_gradient(
    precision, highest):
  # Upsample2x's phase convs are layers.canonical_conv, a custom VJP: its backward pass is
  # traced when the regularizer's gradient is taken, after the estimator's precision context
  # has closed; the precision must travel with the call.
  from lsei_jax import models  # pylint: disable=g-import-not-at-top
  g = models.Explainer(image_size=8, channels=(4, 3))
  e = jax.random.normal(jax.random.key(0), (3, 5))
  params = g.init(jax.random.key(1), e)

  def reg(p):
    info = fisher_information(lambda x: g.apply(p, x), e, jax.random.key(2), num_samples=2,
                              loss='bce', chunk_size=1, precision=precision)
    return jnp.sum(info)

  lines = _products(jax.grad(reg), params)
  assert sum('stablehlo.convolution' in l for l in lines) >= 16
  assert [('HIGHEST' in l) for l in lines] == [highest] * len(lines)


def test_one_row_needs_a_fixed_sigma_and_gives_the_exact_value_with_one():
  W, b, e = _linear_problem()
  fn = lambda x: x @ W + b
  with pytest.raises(ValueError, match='batch std of e.*1 row.*fixed sigma'):
    fisher_information(fn, jnp.asarray(e[:1]), jax.random.key(0), num_samples=8, loss='ce')
  with pytest.raises(ValueError, match='fixed sigma'):
    jax.jit(lambda x: fisher_information(fn, x, jax.random.key(0), num_samples=8,
                                         loss='ce'))(jnp.asarray(e[:1]))
  key = jax.random.key(0)
  info = fisher_information(fn, jnp.asarray(e[:1]), key, num_samples=200, loss='ce',
                            sigma=0.4)
  noise = np.asarray(jax.random.normal(key, (200, 1, 5)))
  np.testing.assert_allclose(info, _numpy_fisher_linear_vec(W, b, e[:1], 0.4, noise, 'ce'),
                             rtol=1e-5)


@pytest.mark.parametrize('num_samples', [0, -3])
def test_fewer_than_one_sample_is_refused(num_samples):
  W, b, e = _linear_problem()
  with pytest.raises(ValueError, match=f'num_samples={num_samples}.*at least one'):
    fisher_information(lambda x: x @ W + b, jnp.asarray(e), jax.random.key(0),
                       num_samples=num_samples, loss='ce')


def test_embeddings_that_are_not_2d_are_refused_by_name():
  W, b, e = _linear_problem()
  fn = lambda x: x @ W + b
  for bad in (jnp.zeros((2, 16, 5)), jnp.zeros(5)):
    with pytest.raises(ValueError, match=r'shape \[B, d\].*jax.vmap'):
      fisher_information(fn, bad, jax.random.key(0), num_samples=4, loss='ce', sigma=0.1)
  with pytest.raises(ValueError, match=r'noise must have shape \[S, B, d\]'):
    fisher_information_from_noise(fn, jnp.asarray(e), jnp.zeros((4, 16, 4)), 0.1, loss='ce')
