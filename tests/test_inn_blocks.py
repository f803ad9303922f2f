"""Invertible blocks (lsei_jax.inn.blocks): exact inverses and exact log-determinants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax.inn import blocks

EPS32 = float(np.finfo(np.float32).eps)
D, C = 6, 3


def _x(n=16, d=D, seed=0):
  # Off-centre and wide, so that ActNorm's data init and the couplings do real work.
  return jax.random.normal(jax.random.key(seed), (n, d)) * 3.0 + 1.0


def _cond(n=16):
  return jax.random.normal(jax.random.key(7), (n, C))


def _perturbed(module, x, cond=None, scale=0.1):
  """Parameters moved off their identity-like start (zero L, U, last coupling layer), so
  that every block is a non-trivial map; scale 0.1 keeps the Jacobian well conditioned."""
  v = module.init(jax.random.key(1), x, cond)
  leaves, tree = jax.tree.flatten(v)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape, a.dtype)
                                   for a, k in zip(leaves, keys)])


MODULES = {
    'actnorm': lambda: blocks.ActNorm(),
    'actnorm_no_data_init': lambda: blocks.ActNorm(data_init=False),
    'permute': lambda: blocks.Permute(seed=3),
    'lu_linear': lambda: blocks.InvertibleLinear(seed=3),
    'coupling': lambda: blocks.AffineCoupling(hidden=(16,)),
    'flow_lu': lambda: blocks.Flow(num_steps=3, hidden=(16,)),
    'flow_permute': lambda: blocks.Flow(num_steps=3, hidden=(16,), linear='permute'),
    'flow_unpermute': lambda: blocks.Flow(num_steps=3, hidden=(16,), unpermute=True),
}
CONDITIONAL = {'coupling', 'flow_lu', 'flow_permute', 'flow_unpermute'}
CASES = [(n, c) for n in MODULES for c in (False, True) if not c or n in CONDITIONAL]


def _jacobian_logdet64(module, params, x, cond):
  """log|det ∂f/∂x| per row, Jacobian by jax.jacfwd, all in float64; and f's own logdet."""
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64 = jnp.asarray(x, jnp.float64)
    c64 = None if cond is None else jnp.asarray(cond, jnp.float64)

    def f(xi, ci):
      return module.apply(p64, xi[None], None if ci is None else ci[None])[0][0]

    jac = jax.vmap(jax.jacfwd(f), (0, 0 if c64 is not None else None))(x64, c64)
    _, own = module.apply(p64, x64, c64)
    assert own.dtype == jnp.float64
    sign, oracle = np.linalg.slogdet(np.asarray(jac))
    assert np.all(sign != 0)
    return oracle, np.asarray(own), np.linalg.cond(np.asarray(jac))


@pytest.mark.parametrize('name,conditional', CASES)
def test_inverse_undoes_forward_and_logdet_is_the_jacobians(name, conditional):
  module = MODULES[name]()
  x = _x()
  cond = _cond() if conditional else None
  params = _perturbed(module, x, cond)
  y, logdet = module.apply(params, x, cond)
  assert y.shape == x.shape and logdet.shape == (x.shape[0],) and y.dtype == jnp.float32
  x_back = module.apply(params, y, cond, method='inverse')

  oracle, own64, cond_num = _jacobian_logdet64(module, params, x, cond)
  # Float64: the module's logdet is the Jacobian's up to float64 rounding of the
  # determinant (LU of a 6×6) and of the sums, i.e. ~1e-13 at these magnitudes.
  np.testing.assert_allclose(own64, oracle, rtol=0, atol=1e-9)
  # Float32: a sum of ≤ 3·6 log-scales (|·| ≲ 10) each rounded once: ≲ 1e-5.
  np.testing.assert_allclose(np.asarray(logdet), oracle, rtol=0, atol=1e-4)

  # The round trip in float32: each of the forward's and inverse's roundings (≈ eps·|x|)
  # reaches the output amplified by at most the Jacobian's condition number; a factor 8
  # covers the few dozen roundings that do not all align. Measured: ≤ 5e-6 vs bound ~5e-4.
  err = float(jnp.max(jnp.abs(x_back - x)))
  bound = 8 * float(np.max(cond_num)) * EPS32 * float(jnp.max(jnp.abs(x)))
  assert err <= bound, (err, bound)
  if name == 'permute':
    assert err == 0.0          # a gather and its inverse gather: bit-exact


def test_conditional_flow_depends_on_its_condition():
  module = MODULES['flow_lu']()
  x, cond = _x(), _cond()
  params = _perturbed(module, x, cond)
  y1, ld1 = module.apply(params, x, cond)
  y2, ld2 = module.apply(params, x, cond + 1.0)
  assert float(jnp.min(jnp.max(jnp.abs(y1 - y2), -1))) > 1e-3      # every row moves
  assert float(jnp.max(jnp.abs(ld1 - ld2))) > 1e-3
  # Inverting with the wrong condition does not give x back.
  x_wrong = module.apply(params, y1, cond + 1.0, method='inverse')
  assert float(jnp.max(jnp.abs(x_wrong - x))) > 1e-2


def test_actnorm_data_init_standardises_the_init_batch():
  x = _x(n=64)
  module = blocks.ActNorm()
  params = module.init(jax.random.key(0), x)
  y, logdet = module.apply(params, x)
  np.testing.assert_allclose(np.mean(np.asarray(y), 0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.std(np.asarray(y), 0), 1.0, rtol=1e-4)  # eps = 1e-6 in std + eps
  want = -np.sum(np.log(np.std(np.asarray(x, np.float64), 0)))
  np.testing.assert_allclose(np.asarray(logdet), want, rtol=1e-5)


def test_fresh_lu_linear_and_coupling_are_the_permutation_and_the_identity():
  x = _x()
  lin = blocks.InvertibleLinear(seed=5)
  y, logdet = lin.apply(lin.init(jax.random.key(0), x), x)
  perm = blocks.permutation(D, 5)
  np.testing.assert_array_equal(np.asarray(y)[:, perm], np.asarray(x))   # W = P at init
  np.testing.assert_array_equal(np.asarray(logdet), 0.0)
  cpl = blocks.AffineCoupling(hidden=(8,))
  y, logdet = cpl.apply(cpl.init(jax.random.key(0), x), x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(logdet), 0.0)


def test_coupling_log_scale_is_bounded_by_clamp():
  x = _x()
  cpl = blocks.AffineCoupling(hidden=(8,), clamp=0.5)
  params = _perturbed(cpl, x, scale=50.0)     # huge raw scales
  _, logdet = cpl.apply(params, x)
  n_scaled = D - D // 2
  assert float(jnp.max(jnp.abs(logdet))) <= 0.5 * n_scaled + 1e-5
  assert float(jnp.max(jnp.abs(logdet))) > 0.4 * n_scaled   # saturated, not zero


def test_bad_architecture_is_refused():
  x = _x()
  with pytest.raises(ValueError, match="linear='lux'"):
    blocks.Flow(num_steps=1, linear='lux').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='num_steps=0'):
    blocks.Flow(num_steps=0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='at least 2 features'):
    blocks.AffineCoupling().init(jax.random.key(0), x[:, :1])


def test_actnorm_data_init_refuses_a_single_row():
  with pytest.raises(ValueError, match='at least 2 rows'):
    blocks.Flow(num_steps=1).init(jax.random.key(0), _x(n=1))


@pytest.mark.parametrize('linear', ['lu', 'permute'])
def test_unpermuted_flow_starts_as_the_identity(linear):
  # Without data init every block starts at the identity except the mixes, which start
  # at their permutations; unpermute undoes their product, so the flow is the identity
  # exactly (a gather of the input), whatever the seed and number of steps.
  x = _x(d=7)
  for steps in (1, 4):
    flow = blocks.Flow(num_steps=steps, hidden=(8,), data_init=False, linear=linear, seed=5,
                       unpermute=True)
    params = flow.init(jax.random.key(0), x)
    y, logdet = flow.apply(params, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(logdet), 0.0)
    # Without unpermute the same flow permutes the features (the check can fail).
    plain = flow.clone(unpermute=False)
    assert not np.array_equal(np.asarray(plain.apply(params, x)[0]), np.asarray(x))
