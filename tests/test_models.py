import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import C1, C2, DVAE, Classifier, Explainer

SMALL = dict(channels=(4, 4, 8, 8), strides=(1, 2, 1, 2), hidden_dim=16)


def test_classifier_halves_compose():
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  model = Classifier(**SMALL, num_classes=5)
  params = model.init(jax.random.key(1), x)['params']
  logits = model.apply({'params': params}, x)
  chex.assert_shape(logits, (3, 5))
  h = C1(**SMALL).apply({'params': params['c1']}, x)
  chex.assert_shape(h, (3, 16))
  assert np.all(np.asarray(h) >= 0)  # ReLU embedding
  np.testing.assert_allclose(C2(5).apply({'params': params['c2']}, h), logits, rtol=1e-6)
  np.testing.assert_allclose(model.apply({'params': params}, x, method='embed'), h, rtol=1e-6)


def test_dropout_follows_train_flag():
  h = jnp.ones((4, 32))
  head = C2(2, dropout=0.5)
  params = head.init(jax.random.key(0), h)
  eval1 = head.apply(params, h)
  np.testing.assert_array_equal(eval1, head.apply(params, h))
  t1 = head.apply(params, h, train=True, rngs={'dropout': jax.random.key(1)})
  t2 = head.apply(params, h, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(t1, t2)


def test_dvae_shapes_and_modes():
  dvae = DVAE(hidden_dim=16, latent_dim=6, hidden=(12, 8), dropout=0.1)
  h = jax.random.normal(jax.random.key(0), (5, 16))
  params = dvae.init({'params': jax.random.key(1)}, h)
  h_hat, logits, z = dvae.apply(params, h)
  chex.assert_shape([h_hat, logits, z], [(5, 16), (5, 6), (5, 6)])
  np.testing.assert_array_equal(z, (logits > 0).astype(np.float32))
  np.testing.assert_allclose(dvae.apply(params, z, method='decode'), h_hat, rtol=1e-6)
  _, _, zt = dvae.apply(params, h, train=True, temperature=0.5,
                        rngs={'latent': jax.random.key(2), 'dropout': jax.random.key(3)})
  assert np.all((np.asarray(zt) > 0) & (np.asarray(zt) < 1))


def test_explainer_output_size_and_validation():
  g = Explainer(image_size=32, channels=(8, 4, 4))
  e = jnp.ones((2, 16))
  params = g.init(jax.random.key(0), e)
  chex.assert_shape(g.apply(params, e), (2, 32, 32, 3))
  with pytest.raises(ValueError, match='not a multiple'):
    Explainer(image_size=20, channels=(8, 4, 4)).init(jax.random.key(0), e)


def test_upsample2x_equals_conv_transpose_in_value_and_gradients():
  import flax.linen as nn
  from lsei_jax.models import Upsample2x
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
