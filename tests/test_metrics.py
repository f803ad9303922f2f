import jax.numpy as jnp
import pytest

from lsei_jax import accuracy, agreement, change_rate, info_cosine, recon_accuracy


def test_metrics_hand_values():
  a = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])  # preds 0 1 0 1
  b = jnp.array([[0.0, 1.0], [0.0, 1.0], [2.0, 1.0], [5.0, 3.0]])  # preds 1 1 0 0
  labels = jnp.array([0, 1, 1, 1])
  assert float(accuracy(a, labels)) == pytest.approx(0.75)
  assert float(recon_accuracy(b, labels)) == pytest.approx(0.25)
  assert float(agreement(a, b)) == pytest.approx(0.5)
  assert float(change_rate(a, b)) == pytest.approx(0.5)
  assert float(change_rate(a, a)) == 0.0
  assert float(info_cosine(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))) == pytest.approx(
      2**-0.5, rel=1e-6)
