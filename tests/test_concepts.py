"""Concept learners: the interface, TopK SAE, NMF, the DVAE wrapper and toggle interventions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lsei_jax import concepts, interventions
from lsei_jax.training import parallel
from lsei_jax import pipeline
from lsei_jax.pipeline.stages import concepts as concepts_stage
from lsei_jax.concepts import nmf, topk_sae


def _config(kind):
  c = tiny.get_config()
  c.model.concepts.kind = kind
  return c


def test_topk_keeps_exactly_k_largest():
  rng = np.random.default_rng(0)
  pre = jnp.asarray(rng.random((8, 10)) + 0.1, jnp.float32)  # all positive: exactly k
  code = np.asarray(topk_sae.topk_relu(pre, 3))
  np.testing.assert_array_equal((code > 0).sum(1), 3)
  top = np.argsort(-np.asarray(pre), 1)[:, :3]
  for b in range(8):
    assert set(np.nonzero(code[b])[0]) == set(top[b])
    np.testing.assert_allclose(code[b, top[b]], np.asarray(pre)[b, top[b]])
  # ReLU: negative pre-activations are never kept, so at most k are on.
  signed = jnp.asarray(rng.normal(size=(50, 10)), jnp.float32)
  on = np.asarray(topk_sae.topk_relu(signed, 3) > 0).sum(1)
  assert on.max() <= 3 and np.all(on == np.minimum(3, (np.asarray(signed) > 0).sum(1)))


def test_toggle_is_xor_on_boolean_codes_and_clamps_real_codes():
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.random((6, 5)) > 0.5, jnp.float32)
  for mask in (jnp.ones(5), jnp.asarray([0, 1, 0, 0, 1.0]), jnp.asarray(rng.random((6, 5)) > 0.5)):
    xor = np.logical_xor(np.asarray(z, bool), np.broadcast_to(np.asarray(mask, bool), z.shape))
    np.testing.assert_array_equal(interventions.intervene(z, mask), xor.astype(np.float32))
  code = jnp.asarray([[0.0, 2.0, 0.5], [1.0, 0.0, 0.0]])
  out = interventions.intervene(code, jnp.asarray([1, 1, 0]), jnp.asarray([7.0, 8.0, 9.0]))
  np.testing.assert_array_equal(out, [[7.0, 0.0, 0.5], [0.0, 8.0, 0.0]])


def test_on_values_quantiles_and_never_active_fallback():
  codes = np.array([[1.0, 0, 0], [2.0, 4.0, 0], [3.0, 0, 0], [4.0, 0, 0]])
  out = interventions.on_values(codes, 0.5)
  np.testing.assert_allclose(out, [2.5, 4.0, np.quantile([1, 2, 3, 4, 4.0], 0.5)])


def test_intervened_adds_back_the_error():
  decode = lambda c: 2.0 * c
  h, code = jnp.asarray([[1.0, 3.0]]), jnp.asarray([[1.0, 1.0]])
  np.testing.assert_allclose(interventions.intervened(decode, h, code, code, add_error=True), h)
  np.testing.assert_allclose(interventions.intervened(decode, h, code, 0 * code, add_error=True),
                             h - 2.0 * code)
  np.testing.assert_allclose(interventions.intervened(decode, h, code, 0 * code), 0 * h)


def test_decisive_units_equals_decisive_bits_for_boolean_codes():
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.random((7, 4)) > 0.5, jnp.float32)
  w_dec, w_head = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((4, 3), (3, 2)))
  decode, head = (lambda c: c @ w_dec), (lambda e: e @ w_head)
  np.testing.assert_array_equal(interventions.decisive_units(z, decode, head),
                                interventions.decisive_bits(z, decode, head))


def test_nmf_fit_reconstructs_a_low_rank_nonnegative_matrix():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(40, 3)) @ rng.uniform(size=(3, 20)), jnp.float32)
  w, h = jax.jit(nmf.fit, static_argnums=(1, 3))(x, 3, jax.random.key(0), 600)
  assert float(jnp.min(w)) >= 0 and float(jnp.min(h)) >= 0
  assert float(jnp.linalg.norm(w @ h - x) / jnp.linalg.norm(x)) < 1e-3
  # With the dictionary fixed, encode solves the codes of new rows of the same span.
  w_new = rng.uniform(size=(5, 3))
  code = nmf.encode(jnp.asarray(w_new, jnp.float32) @ h, h, 50)
  np.testing.assert_allclose(code @ h, w_new @ np.asarray(h), rtol=1e-3, atol=1e-4)


def test_nmf_refuses_negative_embeddings():
  learner = concepts.build(_config('nmf'), 4)
  with pytest.raises(ValueError, match='non-negative embedding.*topk_sae'):
    learner.check_input(np.array([[0.0, -1.0, 2.0, 0.0]]))


def test_sae_auxiliary_loss_only_trains_dead_latents():
  learner = concepts.build(_config('topk_sae'), 6)
  module = learner.module
  params = module.init(jax.random.key(0), jnp.zeros((1, 6)))['params']
  h = jnp.asarray(np.random.default_rng(0).normal(size=(16, 6)), jnp.float32)
  dead = jnp.arange(module.latent_dim) >= 8
  grad = lambda w: jax.grad(lambda p: topk_sae.sae_loss(module, p, h, 4, w, dead)[0])(params)
  diff = np.abs(np.asarray(grad(1.0)['W_enc'] - grad(0.0)['W_enc']))   # [d, K]
  assert diff[:, :8].max() == 0 and diff[:, 8:].max() > 0
  no_dead = topk_sae.sae_loss(module, params, h, 4, 1.0, jnp.zeros(module.latent_dim, bool))[1]
  assert float(no_dead['aux']) == pytest.approx(1.0)  # ê = 0: the residual unexplained


def test_sae_steps_since_fired_on_a_hand_made_sequence():
  fired = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)  # steps × K
  want = np.array([[0, 1, 1], [1, 2, 2], [0, 3, 3], [1, 0, 4], [2, 1, 5]])
  count = jnp.zeros(3, jnp.int32)
  for f, w in zip(fired, want):
    count = topk_sae.update_steps_since_fired(count, jnp.asarray(f))
    np.testing.assert_array_equal(np.asarray(count), w)
  # Dead for 3 steps: only the latent silent since the start; dead_steps=1: silent now.
  np.testing.assert_array_equal(np.asarray(topk_sae.dead_latents(count, 3)), [False, False, True])
  np.testing.assert_array_equal(np.asarray(topk_sae.dead_latents(count, 1)), [True, True, True])
  np.testing.assert_array_equal(np.asarray(topk_sae.dead_latents(count, 6)), [False] * 3)


def test_sae_data_centre():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(16, 5)).astype(np.float32)
  np.testing.assert_allclose(topk_sae.data_centre(jnp.asarray(h), 'mean'), h.mean(0), rtol=1e-6)
  # Collinear points: the geometric median is the 1-D median, not pulled by the outlier.
  line = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
  np.testing.assert_allclose(topk_sae.data_centre(line, 'median'), [2.0, 0.0], atol=1e-3)
  # Over devices (psum of the sums): the same as on the whole batch.
  mesh = parallel.make_mesh()
  for how in ('mean', 'median'):
    f = jax.shard_map(lambda x, how=how: topk_sae.data_centre(x, how, parallel.AXIS), mesh=mesh,
                      in_specs=parallel.P(parallel.AXIS), out_specs=parallel.P(), check_vma=False)
    np.testing.assert_allclose(f(jnp.asarray(h)), topk_sae.data_centre(jnp.asarray(h), how),
                               rtol=1e-5, atol=1e-6)


def test_sae_step_sets_b_dec_from_the_first_batch_and_counts_silent_steps():
  config = _config('topk_sae')
  config.model.topk_sae.update(b_dec_init='mean', dead_steps=2)
  learner = concepts.build(config, 8)
  cfg = config.concepts.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.learning_rate = 0.0   # params move only by the b_dec start
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  # 4 rows (one per device), k = 2 of K = 12: at most 8 latents fire on a batch.
  h1, h2 = (jnp.asarray(rng.normal(size=(4, 8)) + 3.0, jnp.float32) for _ in range(2))
  state = parallel.replicate(
      concepts_stage.concept_state(learner, jax.random.key(0), h1[:1], cfg), mesh)
  assert isinstance(state, topk_sae.SAEState)
  step = parallel.data_parallel_step(learner.make_step(cfg), mesh)
  state, m = step(state, {'h': h1}, jax.random.key(0))
  np.testing.assert_allclose(state.params['b_dec'], np.asarray(h1).mean(0), rtol=1e-5)
  fired1 = np.asarray(learner.encode(state.params, h1) > 0).any(0)
  np.testing.assert_array_equal(np.asarray(state.steps_since_fired), ~fired1)
  assert float(m['dead_fraction']) == 0.0          # nothing silent for 2 steps yet
  state, m = step(state, {'h': h2}, jax.random.key(1))
  np.testing.assert_allclose(state.params['b_dec'], np.asarray(h1).mean(0), rtol=1e-5)  # kept
  fired2 = np.asarray(learner.encode(state.params, h2) > 0).any(0)
  want = np.where(fired2, 0, np.where(fired1, 1, 2))
  np.testing.assert_array_equal(np.asarray(state.steps_since_fired), want)
  assert float(m['dead_fraction']) == pytest.approx(np.mean(want >= 2))
  assert np.mean(want >= 2) >= 4 / 12


def test_sae_refuses_bad_dead_latent_settings():
  config = _config('topk_sae')
  config.model.topk_sae.dead_steps = 0
  with pytest.raises(ValueError, match='dead_steps=0 must be ≥ 1'):
    concepts.build(config, 4)
  config.model.topk_sae.update(dead_steps=1, b_dec_init='median_of_means')
  with pytest.raises(ValueError, match="b_dec_init='median_of_means'; known: zeros, mean, median"):
    concepts.build(config, 4)


@pytest.mark.parametrize('kind', ['dvae', 'topk_sae', 'nmf'])
def test_learner_trains_through_the_data_parallel_step(kind):
  config = _config(kind)
  learner = concepts.build(config, 8)
  assert learner.kind == kind and learner.module.hidden_dim == 8
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  h = jnp.asarray(np.maximum(rng.normal(size=(32, 3)) @ rng.normal(size=(3, 8)), 0), jnp.float32)
  cfg = config.concepts.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.learning_rate = 1e-2
  state = parallel.replicate(
      concepts_stage.concept_state(learner, jax.random.key(0), h[:1], cfg), mesh)
  step = parallel.data_parallel_step(learner.make_step(cfg), mesh)
  losses = []
  for i in range(30):
    state, m = step(state, {'h': h}, jax.random.key(i))
    losses.append(float(m['loss']))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  code = learner.encode(state.params, h)
  assert code.shape == (32, learner.latent_dim)
  assert learner.decode(state.params, code).shape == (32, 8)
  if kind == 'topk_sae':
    assert int(np.max(np.sum(np.asarray(code) > 0, 1))) <= config.model.topk_sae.k
    np.testing.assert_allclose(np.linalg.norm(state.params['W_dec'], axis=1), 1.0, rtol=1e-5)
  if kind == 'nmf':
    assert float(jnp.min(state.params['H'])) >= 0 and float(jnp.min(code)) >= 0
  if kind == 'dvae':
    assert set(np.unique(np.asarray(code))) <= {0.0, 1.0}


def test_kind_and_signature():
  config = _config('dvae')
  assert concepts.signature(config) == {f'model.dvae.{k}': v
                                        for k, v in config.model.dvae.items()}
  config.model.concepts.kind = 'nmf'
  assert concepts.signature(config)['model.concepts.kind'] == 'nmf'
  config.model.concepts.kind = 'pca'
  with pytest.raises(ValueError, match="unknown concept learner.*'pca'.*dvae, topk_sae, nmf"):
    concepts.build(config, 4)
  config.model.concepts.kind = 'topk_sae'
  config.model.topk_sae.k = 99
  with pytest.raises(ValueError, match='topk_sae.k=99'):
    concepts.build(config, 4)


def test_pipeline_refuses_an_unknown_learner_before_writing(tmp_path):
  config = _config('sae')
  with pytest.raises(ValueError, match="config.model.concepts.kind='sae'"):
    pipeline.train(config, str(tmp_path / 'wd'))
  assert not (tmp_path / 'wd').exists()
