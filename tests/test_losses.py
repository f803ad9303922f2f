import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import bce_with_logits, classifier_loss, dvae_loss, explainer_loss


def test_classifier_loss_hand_value():
  logits = jnp.array([[0.0, np.log(3.0)], [2.0, 0.0]])
  labels = jnp.array([1, 1])
  expected = (-np.log(0.75) - np.log(1 / (1 + np.e**2))) / 2
  assert float(classifier_loss(logits, labels)) == pytest.approx(expected, rel=1e-5)


def test_dvae_loss_hand_value():
  h = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  h_hat = jnp.array([[0.0, 2.0], [1.0, 1.0]])
  logits = jnp.zeros((2, 3)).at[0, 0].set(100.0)
  loss, parts = dvae_loss(h, h_hat, logits, beta=0.5)
  assert float(parts['recon']) == pytest.approx((1.0 + 2.0) / 2)
  assert float(parts['kl']) == pytest.approx(np.log(2) / 2, rel=1e-5)
  assert float(loss) == pytest.approx(1.5 + 0.5 * np.log(2) / 2, rel=1e-5)


def test_bce_with_logits_is_stable_and_correct():
  x = jnp.array([-3.0, 0.0, 2.0])
  t = jnp.array([0.0, 0.5, 1.0])
  p = 1 / (1 + np.exp(-np.asarray(x)))
  tn = np.asarray(t)
  naive = float(-(tn * np.log(p) + (1 - tn) * np.log(1 - p)).mean())
  assert float(bce_with_logits(x, t)) == pytest.approx(naive, rel=1e-5)
  big = jnp.array([-1000.0, 1000.0])
  val, grad = jax.value_and_grad(bce_with_logits)(big, jnp.array([0.0, 1.0]))
  assert float(val) == pytest.approx(0.0, abs=1e-6)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_explainer_loss_adds_weighted_regularizer():
  x = jnp.zeros((2, 4, 4, 3))
  imgs = jnp.full((2, 4, 4, 3), 0.5)
  loss, parts = explainer_loss(x, imgs, regularizer=2.0, weight=0.25)
  assert float(parts['bce']) == pytest.approx(np.log(2), rel=1e-6)
  assert float(loss) == pytest.approx(np.log(2) + 0.5, rel=1e-6)
