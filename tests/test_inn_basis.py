"""The factor INN's attribute basis (lsei_jax.inn.basis) and the flow on its first
flow_dim features: on synthetic h whose attributes are known (linear in h, two of them
correlated in the train split as the demo's shape and colour, dead units), each attribute
is read from its own column at the accuracy of a probe on h, and from no other column or
the residual; the map is exactly invertible. No training: these run in seconds."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lsei_jax.errors import UserError
from lsei_jax.inn import basis, factor

F, NOISE, DEAD = 4, 12, 4
D = F + NOISE + DEAD
MIX = np.random.default_rng(123).normal(size=(F + NOISE, F + NOISE))


def _synthetic(n: int, seed: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
  """h [n, D]: [effects · a, ν] M + 2ε (a 4 binary attributes, ν, ε ~ N(0, I)), then DEAD
  constant columns (dead ReLU units); attribute 1 equals attribute 0 with probability rho
  (rho 0.5: independent), the others fair and independent. Effects differ in size so that
  one attribute (0.5 per unit of noise) is hard to read."""
  rng = np.random.default_rng(seed)
  a = rng.random((n, F)) < 0.5
  agree = rng.random(n) < rho
  a[:, 1] = np.where(agree, a[:, 0], ~a[:, 0])
  effects = np.array([1.5, 3.0, 1.0, 0.6])
  s = np.concatenate([(2 * a - 1.0) * effects, rng.normal(size=(n, NOISE))], 1)
  live = s @ MIX + 2.0 * rng.normal(size=(n, F + NOISE))      # not exactly recoverable
  h = np.concatenate([live, np.zeros((n, DEAD))], 1)
  return h.astype(np.float32), a


@pytest.fixture(scope='module')
def data():
  h_tr, a_tr = _synthetic(6000, 0, rho=0.9)      # biased train split
  h_te, a_te = _synthetic(3000, 1, rho=0.5)      # unbiased test split
  return h_tr, a_tr, h_te, a_te, basis.fit(h_tr, a_tr)


def test_each_attribute_is_read_from_its_own_column_only(data):
  h_tr, a_tr, h_te, a_te, bas = data
  assert bas.live == F + NOISE                    # the dead units are not whitened
  layout = factor.FactorLayout(D, F, 1)
  acc = factor.block_probe_accuracy(bas.forward(h_tr), a_tr, bas.forward(h_te), a_te, layout)
  sd = h_tr.std(0)
  hs = lambda h: (h - h_tr.mean(0)) / np.where(sd > 1e-6, sd, 1)
  on_h = np.array([np.mean(factor.probe_predict(factor.fit_logistic(hs(h_tr), a_tr[:, f]),
                                                hs(h_te)) == a_te[:, f]) for f in range(F)])
  chance = factor.chance_accuracy(a_te)
  print('probe on h', on_h.round(3), '\nper block\n', acc.round(3))
  # Own column as good as the probe on all of h (3000 test rows: 0.02 is ~2.5 s.e. of an
  # accuracy near 0.85), no other column or the residual above chance + 0.05.
  assert np.all(np.diag(acc) >= on_h - 0.02)
  off = acc[~np.eye(F, F + 1, dtype=bool)].reshape(F, F)
  assert np.all(off <= chance[:, None] + 0.05), off
  # Standardised h read through the same probes is not disentangled (the check can fail):
  # attribute 1's direction reads attribute 0 through the train split's correlation.
  std_acc = factor.block_probe_accuracy(hs(h_tr), a_tr, hs(h_te), a_te,
                                        factor.FactorLayout(D, F, 1))
  assert std_acc[~np.eye(F, F + 1, dtype=bool)].max() > 0.6


def test_basis_is_exactly_invertible_and_unit_scaled(data):
  h_tr, a_tr, h_te, _, bas = data
  x = bas.forward(h_te)
  # float64 inverse of a well-conditioned map; float32 output rounding of |h| ≲ 20: 1e-5.
  np.testing.assert_allclose(bas.backward(x), h_te, atol=2e-5)
  np.testing.assert_allclose(bas.matrix @ bas.inverse, np.eye(D), atol=1e-9)
  x_tr = bas.forward(h_tr).astype(np.float64)
  np.testing.assert_allclose(x_tr[:, :bas.live].std(0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(x_tr[:, :bas.live].mean(0), 0.0, atol=1e-5)
  # Dead units last, exactly 0 on any split (not at rounding level: fit_logistic
  # standardises its inputs, and would read h through columns that are 0 to 1e-13).
  np.testing.assert_array_equal(x_tr[:, bas.live:], 0.0)
  np.testing.assert_array_equal(x[:, bas.live:], 0.0)


def _interacting(n: int, seed: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
  """h [n, 12 + DEAD] of 3 attributes where attribute 2's effect flips with whether
  attributes 0 and 1 agree (they agree with probability rho), as the demo classifier's
  position does with shape and colour (docs/method.md): a 3-way interaction."""
  rng = np.random.default_rng(seed)
  a = rng.random((n, 3)) < 0.5
  a[:, 1] = np.where(rng.random(n) < rho, a[:, 0], ~a[:, 0])
  s = 2 * a - 1.0
  agree = s[:, 0] * s[:, 1]
  live = np.zeros((n, 12))
  live[:, :3] = s * [2.0, 2.0, 1.0]
  # Attribute 2's interaction, noisier where 0 and 1 disagree (as the demo's h is in its
  # train split's minority cells), so that it does not cancel on an unbiased split.
  live[:, 3] = 1.5 * s[:, 2] * agree + np.where(agree < 0, 4.0, 0.0) * rng.normal(size=n)
  live += rng.normal(size=(n, 12)) @ np.random.default_rng(7).normal(size=(12, 12)) * 0.5
  return np.concatenate([live, np.zeros((n, DEAD))], 1), a


def test_residual_reads_no_attribute_by_its_mean_weighted_or_not():
  h, a = _interacting(4000, 0, rho=0.9)
  h_te, a_te = _interacting(4000, 1, rho=0.5)
  chance = factor.chance_accuracy(a_te)
  resid_acc = {}
  for fd in (1, 2):
    bas = basis.fit(h, a, factor_dim=fd)
    x = (h - bas.mean) @ bas.matrix                     # float64, as fitted
    res = x[:, 3 * fd:bas.live]
    w = basis.independence_weights(a)
    for f in range(3):
      # Under the independence weights the residual's class means agree for any factor_dim
      # (weighted least squares); 1e-9: float64 rounding of unit-variance columns.
      y = a[:, f]
      wm = lambda sel: (w[sel, None] * res[sel]).sum(0) / w[sel].sum()
      np.testing.assert_allclose(wm(y) - wm(~y), 0.0, atol=1e-9)
      # Unweighted (the train split as a probe sees it), only factor_dim 2 makes them agree.
      diff = res[y].mean(0) - res[~y].mean(0)
      if fd == 2:
        np.testing.assert_allclose(diff, 0.0, atol=1e-9)
      elif f == 2:
        assert np.abs(diff).max() > 0.3                   # the interaction (0.8 · 1.5 / sd)
    layout = factor.FactorLayout(h.shape[1], 3, fd)
    acc = factor.block_probe_accuracy(bas.forward(h), a, bas.forward(h_te), a_te, layout)
    resid_acc[fd] = acc[:, -1]
  # On an unbiased test split (4000 rows: 0.05 is ~6 s.e. of an accuracy near 0.5) the
  # residual read attribute 2 with factor_dim 1 (the train split's probe learns the agreeing
  # cells' direction) and reads nothing with factor_dim 2.
  assert resid_acc[1][2] > chance[2] + 0.05, resid_acc[1]
  assert np.all(resid_acc[2] <= chance + 0.05), resid_acc[2]


def test_dead_units_anywhere_give_exactly_zero_columns():
  # Dead ReLU units among live ones of unequal scales: an eigenvector of the whole
  # covariance mixed them with live units at ~1e-15 (the old fit), which a probe that
  # standardises its inputs reads as a signal.
  rng = np.random.default_rng(0)
  n, n_live, n_dead = 3000, 30, 20
  a = rng.random((2 * n, 3)) < 0.5
  pre = rng.normal(size=(2 * n, n_live)) + (2 * a - 1.0) @ rng.normal(size=(3, n_live))
  live = np.maximum(pre, 0) * rng.uniform(0.1, 10, n_live)
  h = np.concatenate([live, np.zeros((2 * n, n_dead))], 1)
  h = h[:, rng.permutation(n_live + n_dead)].astype(np.float32)
  bas = basis.fit(h[:n], a[:n])
  assert bas.live == n_live
  np.testing.assert_array_equal(bas.forward(h)[:, bas.live:], 0.0)   # train and new rows
  np.testing.assert_allclose(bas.backward(bas.forward(h)), h, atol=2e-5)


def test_independence_weights_make_attributes_independent():
  rng = np.random.default_rng(0)
  a = rng.random((4000, 3)) < [0.3, 0.5, 0.6]
  a[:, 1] = np.where(rng.random(4000) < 0.85, a[:, 0], a[:, 1])
  w = basis.independence_weights(a)
  assert w.mean() == pytest.approx(1.0)
  # Weighted, every joint cell's share is the product of the weighted marginals.
  pw = (w[:, None] * a).sum(0) / w.sum()
  for cell in np.ndindex(2, 2, 2):
    sel = np.all(a == np.array(cell, bool), 1)
    want = np.prod(np.where(np.array(cell, bool), pw, 1 - pw))
    assert w[sel].sum() / w.sum() == pytest.approx(want, rel=1e-9)


def test_too_few_live_directions_name_the_fix():
  h = np.random.default_rng(0).normal(size=(100, 3)) @ np.ones((3, 6))   # rank 1 of 6
  a = np.random.default_rng(1).random((100, 2)) < 0.5
  with pytest.raises(UserError, match='lower inn.factor_dim'):
    basis.fit(h, a)


def test_flow_dim_passes_the_rest_through():
  cfg = ml_collections.ConfigDict(dict(num_steps=2, hidden=(8,), factor_dim=1, flow_dim=6))
  model = factor.build(cfg, D, F)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, D)), jnp.float32)
  params = jax.tree.map(lambda p: p + 0.1, model.flow.init(jax.random.key(0), x[:, :6]))
  params = params['params']
  z = factor.encode(model, params, x)
  np.testing.assert_array_equal(np.asarray(z[:, 6:]), np.asarray(x[:, 6:]))
  assert not np.allclose(np.asarray(z[:, :6]), np.asarray(x[:, :6]))
  np.testing.assert_allclose(np.asarray(factor.decode(model, params, z)), np.asarray(x),
                             atol=1e-5)            # a 2-step flow on unit-scale inputs
  # The loss reads only the flow's features: changing the passed-through ones changes nothing.
  f = jnp.zeros(16, jnp.int32)
  l1 = factor.factor_loss(model, params, x, x[::-1], f)[0]
  l2 = factor.factor_loss(model, params, x.at[:, 6:].set(5.0), x[::-1], f)[0]
  assert float(l1) == float(l2)
  with pytest.raises(UserError, match='inn.flow_dim=4 must exceed'):
    factor.build(ml_collections.ConfigDict(dict(factor_dim=1, flow_dim=4)), D, F)
