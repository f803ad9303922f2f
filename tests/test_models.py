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
