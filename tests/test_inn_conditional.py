"""The conditional INN of h's invariances and the image autoencoder (lsei_jax.inn)."""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lsei_jax.inn import autoencoder, conditional
from lsei_jax.training import parallel, steps

EPS32 = float(np.finfo(np.float32).eps)
M, DH = 4, 3


def _data(n, seed):
  """v = [u, ν] [n, 4] with u, ν ~ N(0, I₂); h = tanh(u A) [n, 3] determines u and not ν."""
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(n, M)).astype(np.float32)
  a = np.random.default_rng(99).normal(size=(2, DH)) * 0.7
  return v, np.tanh(v[:, :2] @ a).astype(np.float32)


def _small():
  return conditional.ConditionalINN(num_steps=2, hidden=(16,), embed=(8, 8))


def _perturbed_params(inn, v, h, scale=0.1):
  p = inn.init(jax.random.key(1), v, h)['params']
  leaves, tree = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape)
                                   for a, k in zip(leaves, keys)])


def test_round_trip_and_logdet_with_h_fixed():
  inn = _small()
  v, h = (jnp.asarray(a) for a in _data(16, 0))
  params = _perturbed_params(inn, v, h)
  nu, logdet = inn.apply({'params': params}, v, h)
  back = inn.apply({'params': params}, nu, h, method='inverse')
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    v64, h64 = jnp.asarray(v, jnp.float64), jnp.asarray(h, jnp.float64)
    jac = jax.jit(jax.vmap(jax.jacfwd(
        lambda vi, hi: inn.apply({'params': p64}, vi[None], hi[None])[0][0])))(v64, h64)
    own64 = np.asarray(inn.apply({'params': p64}, v64, h64)[1])
  _, oracle = np.linalg.slogdet(np.asarray(jac))
  np.testing.assert_allclose(own64, oracle, rtol=0, atol=1e-9)   # float64 rounding only
  np.testing.assert_allclose(np.asarray(logdet), oracle, rtol=0, atol=1e-4)  # float32 sums
  # float32 roundings amplified by at most the Jacobian's condition number (test_inn_blocks).
  bound = 8 * float(np.max(np.linalg.cond(np.asarray(jac)))) * EPS32 * float(jnp.max(jnp.abs(v)))
  assert float(jnp.max(jnp.abs(back - v))) <= bound
  # The condition matters: another h gives another ν.
  nu2, _ = inn.apply({'params': params}, v, h[::-1])
  assert float(jnp.min(jnp.max(jnp.abs(nu2 - nu), -1)[:8])) > 1e-3


def test_nll_is_the_standard_normal_density_minus_logdet():
  inn = _small()
  v, h = (jnp.asarray(a) for a in _data(16, 0))
  params = _perturbed_params(inn, v, h)
  loss, parts = conditional.nll(inn, params, v, h)
  nu, logdet = (np.asarray(a, np.float64) for a in inn.apply({'params': params}, v, h))
  logpdf = -0.5 * np.sum(nu ** 2, 1) - 0.5 * M * np.log(2 * np.pi)
  assert float(loss) == pytest.approx(np.mean(-logpdf - logdet) / M, rel=1e-5)
  assert float(parts['prior']) == pytest.approx(np.mean(-logpdf) / M, rel=1e-5)


def test_sample_invariances_is_keyed_per_row_and_draw():
  inn = _small()
  v, h = (jnp.asarray(a) for a in _data(16, 0))
  params = _perturbed_params(inn, v, h)
  key = jax.random.key(5)
  s = conditional.sample_invariances(inn, params, h[:5], key, 3)
  assert s.shape == (3, 5, M)
  np.testing.assert_array_equal(s, conditional.sample_invariances(inn, params, h[:5], key, 3))
  # Row b's draws do not depend on later rows or on n.
  s_small = conditional.sample_invariances(inn, params, h[:2], key, 2)
  np.testing.assert_allclose(s_small, s[:2, :2], rtol=0, atol=1e-6)   # other batch shapes
  other = conditional.sample_invariances(inn, params, h[:5], jax.random.key(6), 3)
  assert float(jnp.min(jnp.abs(other - s))) > 0
  # Mapping the samples back gives exactly the noise the key scheme names.
  nu = conditional.residual(inn, params, s.reshape(15, M), jnp.tile(h[:5], (3, 1)))
  want = np.stack([[jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, b), i), (M,))
                    for b in range(5)] for i in range(3)]).reshape(15, M)
  np.testing.assert_allclose(np.asarray(nu), want, atol=1e-4)   # round trip, |ν| ≲ 3


@pytest.mark.slow
def test_resampling_keeps_what_h_encodes_and_varies_the_rest():
  """After training on v = [u, ν] with h = tanh(u A): for a fixed h, samples keep u (what
  h encodes) and spread ν like the data (what h is invariant to)."""
  t0 = time.time()
  v, h = _data(2048, 0)
  inn = conditional.ConditionalINN(num_steps=4, hidden=(32, 32), embed=(32,))
  cfg = ml_collections.ConfigDict(dict(learning_rate=3e-3, schedule='cosine', warmup_steps=20,
                                       grad_clip=5.0))
  state = conditional.create_state(inn, jax.random.key(0), jnp.asarray(v[:512]),
                                   jnp.asarray(h[:512]), steps.make_optimizer(cfg, 600))
  step = parallel.data_parallel_step(conditional.make_step(inn), parallel.make_mesh())
  rng = np.random.default_rng(0)
  losses = []
  for i in range(600):
    rows = rng.choice(len(v), 256, replace=False)
    state, m = step(state, {'v': v[rows], 'h': h[rows]}, jax.random.key(i))
    losses.append(float(m['loss']))
  v_test, h_test = _data(64, 1)
  s = np.asarray(jax.jit(lambda p, hh, k: conditional.sample_invariances(inn, p, hh, k, 32))(
      state.params, jnp.asarray(h_test), jax.random.key(0)))          # [32, 64, 4]
  kept = np.abs(s[..., :2] - v_test[None, :, :2])
  spread = s[..., 2:].std(0)                                          # [64, 2]
  print(f'cond. INN trained in {time.time() - t0:.1f} s; loss {losses[0]:.3f} → '
        f'{losses[-1]:.3f}; |u − u_orig| median {np.median(kept):.3f}, '
        f'ν spread mean {spread.mean():.3f}')
  assert losses[-1] < losses[0] - 0.3
  assert np.median(kept) < 0.15        # u: data std 1
  assert 0.75 < spread.mean() < 1.25   # ν: data std 1


@pytest.mark.slow
def test_autoencoder_trains_and_refuses_a_bad_image_size():
  ae = autoencoder.ImageAutoencoder(image_size=16, channels=(8, 16), latent_dim=6)
  rng = np.random.default_rng(0)
  # Images that a 6-d code can hold: a bright square at one of a few places.
  images = np.zeros((64, 16, 16, 3), np.float32)
  for i, (r, c) in enumerate(rng.integers(0, 12, size=(64, 2))):
    images[i, r:r + 4, c:c + 4] = 1.0
  cfg = ml_collections.ConfigDict(dict(learning_rate=3e-3))
  state = steps.create_train_state(ae, jax.random.key(0), jnp.asarray(images[:1]),
                                   steps.make_optimizer(cfg, 100))
  step = parallel.data_parallel_step(autoencoder.make_step(), parallel.make_mesh())
  first = None
  for i in range(100):
    state, m = step(state, {'image': images[rng.choice(64, 32, replace=False)]},
                    jax.random.key(i))
    first = first if first is not None else float(m['mse'])
  v = ae.apply({'params': state.params}, jnp.asarray(images), method='encode')
  assert v.shape == (64, 6)
  recon = jax.nn.sigmoid(ae.apply({'params': state.params}, v, method='decode'))
  assert recon.shape == images.shape
  assert float(jnp.mean((recon - images) ** 2)) < 0.5 * first
  with pytest.raises(ValueError, match='image_size 20 is not a multiple of 2\\^3'):
    autoencoder.ImageAutoencoder(image_size=20, channels=(8, 8, 8)).init(
        jax.random.key(0), jnp.zeros((1, 20, 20, 3)))
