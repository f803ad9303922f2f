"""lsei_jax.layers: same parameters, values and derivatives (every order) as flax's layers."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import models
from lsei_jax.layers import Conv, Upsample2x, conv2d_same, conv_by_phases


def _close(a, b, tol=1e-4):
  """Equal up to float32 summation order, relative to the array's scale."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize('shape,strides', [((2, 8, 8, 3), 2), ((2, 7, 9, 4), 2),
                                           ((1, 10, 11, 2), 3), ((2, 6, 6, 3), (2, 1)),
                                           ((2, 5, 5, 3), 1)])
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
