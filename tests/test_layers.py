"""lsei_jax.layers: same parameters, values and derivatives (every order) as flax's layers."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import models
from lsei_jax.layers import (Conv, Dense, Upsample2x, canonical_conv, conv2d_same,
                             conv_by_phases)


def _close(a, b, tol=1e-4):
  """Equal up to float32 summation order, relative to the array's scale."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize('shape,strides', [((2, 8, 8, 3), 2), ((2, 7, 9, 4), 2),
                                           ((1, 10, 11, 2), 3), ((2, 6, 6, 3), (2, 1)),
                                           ((2, 5, 5, 3), 1)])
@pytest.mark.slow
def test_conv_matches_flax_conv_in_params_values_and_gradients(shape, strides):
  x = jax.random.normal(jax.random.key(0), shape)
  s = (strides, strides) if isinstance(strides, int) else strides
  ref = nn.Conv(5, (3, 3), strides=s, padding='SAME')
  ours = Conv(5, (3, 3), strides=strides)
  p = ref.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, p, ours.init(jax.random.key(1), x))
  y = ours.apply(p, x)
  chex.assert_shape(y, (shape[0], -(-shape[1] // s[0]), -(-shape[2] // s[1]), 5))
  _close(y, ref.apply(p, x))
  _close(conv_by_phases(x, p['params']['kernel'], s), ref.apply(p, x) - p['params']['bias'])
  f = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  for argnum in (0, 1):
    jax.tree.map(_close, jax.grad(f(ours), argnum)(p, x), jax.grad(f(ref), argnum)(p, x))
  # second order through the input gradient (a Fisher-style penalty on a conv net)
  gg = lambda m: jax.grad(lambda p: jnp.sum(jax.grad(f(m), 1)(p, x) ** 2))(p)
  jax.tree.map(_close, gg(ours), gg(ref))


def test_strided_conv_forward_mode_vmap_and_jit():
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))    # a vmapped batch of batches
  k = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), 'SAME',
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = jax.jit(jax.vmap(lambda x, k: conv2d_same(x, k, 2), (0, None)))
  _close(ours(x, k), jax.vmap(ref, (0, None))(x, k))
  tx, tk = jax.random.normal(jax.random.key(2), x.shape[1:]), jnp.ones_like(k)
  y1, t1 = jax.jvp(lambda x, k: conv2d_same(x, k, 2), (x[0], k), (tx, tk))
  y2, t2 = jax.jvp(ref, (x[0], k), (tx, tk))
  _close(y1, y2)
  _close(t1, t2)
  # jacfwd of jacrev: forward over reverse, as jax.hessian does
  small = x[0, :1, :4, :4, :1]
  h = jax.hessian(lambda k: jnp.sum(jnp.tanh(conv2d_same(small, k, 2))))(k[:, :, :1, :2])
  h_ref = jax.hessian(lambda k: jnp.sum(jnp.tanh(ref(small, k))))(k[:, :, :1, :2])
  _close(h, h_ref)


def test_classifier_parameter_tree_is_flax_convs():
  """Checkpoints written before layers.Conv existed restore unchanged: same names, shapes."""
  clf = models.Classifier(channels=(4, 4), strides=(1, 2), hidden_dim=8)
  params = clf.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  names = {k: jax.tree.map(jnp.shape, v) for k, v in params['c1'].items()}
  assert names == {'Conv_0': {'kernel': (3, 3, 3, 4), 'bias': (4,)},
                   'Conv_1': {'kernel': (3, 3, 4, 4), 'bias': (4,)},
                   'Dense_0': {'kernel': (64, 8), 'bias': (8,)}}


def test_upsample2x_equals_conv_transpose_in_value_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  ref = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding='SAME')
  ours = Upsample2x(4)
  p_ref = ref.init(jax.random.key(1), x)
  p_ours = ours.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_ours)  # same init, same tree
  np.testing.assert_allclose(ours.apply(p_ref, x), ref.apply(p_ref, x), atol=1e-5)
  f = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  for argnum in (0, 1):
    g_ref = jax.grad(f(ref), argnum)(p_ref, x)
    g_ours = jax.grad(f(ours), argnum)(p_ref, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g_ref, g_ours)
  # second order (what the Fisher regularizer differentiates)
  gg = lambda m: jax.grad(lambda p: jnp.sum(jax.grad(f(m), 1)(p, x) ** 2))(p_ref)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               gg(ref), gg(ours))


@pytest.mark.parametrize('kernel,padding', [((2, 2), ((1, 0), (0, 1))),
                                            ((3, 3), ((1, 1), (1, 1))),
                                            ((2, 3), ((0, 0), (2, 1)))])
def test_canonical_conv_equals_lax_conv_to_second_order(kernel, padding):
  x = jax.random.normal(jax.random.key(0), (2, 6, 7, 3))
  k = jax.random.normal(jax.random.key(1), (*kernel, 3, 4))
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding,
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: canonical_conv(x, k, padding)
  _close(ours(x, k), ref(x, k))
  f = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  for argnum in (0, 1):
    _close(jax.grad(f(ours), argnum)(x, k), jax.grad(f(ref), argnum)(x, k))
  # both second-order cross terms: d/dk of the input gradient (the Fisher regularizer's)
  # and d/dx of the kernel gradient
  for inner, outer in ((0, 1), (1, 0)):
    gg = lambda conv: jax.grad(lambda x, k: jnp.sum(jax.grad(f(conv), inner)(x, k) ** 2),
                               outer)(x, k)
    _close(gg(ours), gg(ref))
  with pytest.raises(TypeError, match='forward-mode'):     # reverse mode only, as documented
    jax.jvp(lambda x: ours(x, k), (x,), (x,))


def _conv_dim_labels(fn, *args) -> set[str]:
  """dim_labels of every convolution in fn's HLO as JAX emits it (before XLA's passes)."""
  text = jax.jit(fn).lower(*args).as_text(dialect='hlo')
  return {line.split('dim_labels=')[1].split(',')[0] for line in text.splitlines()
          if ' convolution(' in line}


def test_canonical_conv_gradients_inside_a_loop_are_canonical_convolutions():
  """Inside a while body XLA:CPU runs only NHWC/HWIO/NHWC convolutions through Eigen (its
  ConvCanonicalization pass skips loop bodies); JAX's own gradient convs are in other forms."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 5, 5, 4))           # 3 loop iterations
  k = jax.random.normal(jax.random.key(1), (2, 2, 4, 6))
  pad = ((1, 0), (0, 1))
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), pad,
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: canonical_conv(x, k, pad)

  def fisher_like(conv):
    input_grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))))
    def total(k, xs):
      return jax.lax.scan(lambda acc, x: (acc + jnp.sum(input_grad(x, k) ** 2), None),
                          0.0, xs)[0]
    return jax.grad(total)
  assert _conv_dim_labels(fisher_like(ours), k, x) == {'b01f_01io->b01f'}
  assert _conv_dim_labels(fisher_like(ref), k, x) > {'b01f_01io->b01f'}
  _close(fisher_like(ours)(k, x), fisher_like(ref)(k, x))


# ----------------------------------------------------------------------------- mixed precision
def _bf16(a) -> np.ndarray:
  """a rounded to bfloat16 (round to nearest even), as float64."""
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16), np.float64)


def test_dense_float32_is_flax_dense_bit_for_bit():
  x = jax.random.normal(jax.random.key(0), (5, 7))
  ref, ours = nn.Dense(3), Dense(3)
  p = ref.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, p, ours.init(jax.random.key(1), x))
  np.testing.assert_array_equal(ours.apply(p, x), ref.apply(p, x))


def test_dense_bfloat16_is_bf16_operands_with_float32_accumulation():
  """Oracle: the same product in float64 NumPy on the operands rounded to bfloat16."""
  n = 512  # long sums: a bfloat16 accumulator would be off by ~1e-2 relative
  x = jax.random.normal(jax.random.key(0), (16, n))
  m = Dense(8, compute_dtype='bfloat16')
  p = m.init(jax.random.key(1), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(p))   # float32 parameters
  k, b = p['params']['kernel'], p['params']['bias'] + 0.25
  p = {'params': {'kernel': k, 'bias': b}}
  y = m.apply(p, x)
  assert y.dtype == jnp.float32
  oracle = _bf16(x) @ _bf16(k) + np.asarray(b, np.float64)
  scale = np.abs(oracle).max()
  # float32 accumulation of 512 products: error ≤ ~n·2⁻²⁴ relative, far below bf16's 2⁻⁸.
  np.testing.assert_allclose(y, oracle, atol=1e-5 * scale)
  # ... and it is the bfloat16 computation, not the float32 one (which differs by ~2⁻⁸).
  exact = np.asarray(x, np.float64) @ np.asarray(k, np.float64) + np.asarray(b, np.float64)
  assert np.abs(np.asarray(y) - exact).max() > 1e-3 * scale
  # Gradients: float32 cotangents, rounded to bfloat16 where they leave the bf16 operands.
  g = jax.random.normal(jax.random.key(2), y.shape)
  gx, gp = jax.grad(lambda x, p: jnp.sum(m.apply(p, x) * g), (0, 1))(x, p)
  g64 = np.asarray(g, np.float64)
  np.testing.assert_allclose(gx, _bf16(g64 @ _bf16(k).T), rtol=2**-7, atol=1e-6)
  np.testing.assert_allclose(gp['params']['kernel'], _bf16(_bf16(x).T @ g64), rtol=2**-7,
                             atol=1e-6)
  np.testing.assert_allclose(gp['params']['bias'], g64.sum(0), rtol=1e-5)


def test_compute_dtype_unknown_is_refused():
  with pytest.raises(ValueError, match='compute_dtype'):
    Dense(2, compute_dtype='float16').init(jax.random.key(0), jnp.ones((1, 3)))


def _dvae_out(m, p, x):
  """Encoder logits and the decoder on a fixed code (the hard code z could flip a bit)."""
  z = (x[:, :6] > 0.5).astype(jnp.float32)
  return jnp.concatenate([m.apply(p, x, method='encode'), m.apply(p, z, method='decode')], 1)


@pytest.mark.parametrize('make,inputs,out', [
    (lambda dt: models.Classifier(channels=(4, 8), strides=(1, 2), hidden_dim=16,
                                  compute_dtype=dt), (3, 8, 8, 3), None),
    (lambda dt: models.DVAE(hidden_dim=16, latent_dim=6, hidden=(32, 8), compute_dtype=dt),
     (3, 16), _dvae_out),
])
def test_models_in_bfloat16_share_parameters_and_match_float32(make, inputs, out):
  """The switch changes no parameter (checkpoints load either way) and the outputs only at
  bfloat16 precision: within 2⁻⁶ of the output scale after a few layers."""
  x = jax.random.uniform(jax.random.key(0), inputs)
  f32, b16 = make('float32'), make('bfloat16')
  p = f32.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, p, b16.init(jax.random.key(1), x))
  out = out or (lambda m, p, x: m.apply(p, x))
  y32, y16 = np.asarray(out(f32, p, x)), np.asarray(out(b16, p, x))
  assert y16.dtype == np.float32
  scale = np.abs(y32).max()
  np.testing.assert_allclose(y16, y32, atol=2**-6 * scale)
  assert not np.array_equal(y16, y32)
