"""TCAV against known answers: t-distribution quantiles, a logit built to rise along a
concept, and a concept that is pure noise."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import baselines


@pytest.mark.parametrize('t,df,p', [(2.228, 10, 0.05), (3.169, 10, 0.01), (2.086, 20, 0.05),
                                    (12.706, 1, 0.05), (1.0, 1, 0.5), (0.0, 7, 1.0),
                                    (1.9623, 1000, 0.05)])
def test_t_distribution_two_sided_p_matches_table(t, df, p):
  # Two-sided critical values from standard t tables (and t=1 with 1 dof: atan → ½).
  got = float(baselines.student_t_two_sided_p(t, df))
  np.testing.assert_allclose(got, p, rtol=3e-3, atol=1e-6)
  np.testing.assert_allclose(float(baselines.student_t_two_sided_p(-t, df)), got)


def test_ttest_statistics_match_textbook_formulas():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=12), rng.normal(size=7) + 1.0
  t, p = baselines.ttest_ind(a, b)
  sp2 = (11 * a.var(ddof=1) + 6 * b.var(ddof=1)) / 17
  t_ref = (a.mean() - b.mean()) / np.sqrt(sp2 * (1 / 12 + 1 / 7))
  np.testing.assert_allclose(float(t), t_ref, rtol=1e-5)
  np.testing.assert_allclose(float(p), float(baselines.student_t_two_sided_p(t_ref, 17)),
                             rtol=1e-4)
  tw, pw = baselines.ttest_ind(a, b, equal_var=False)
  qa, qb = a.var(ddof=1) / 12, b.var(ddof=1) / 7
  df_w = (qa + qb) ** 2 / (qa**2 / 11 + qb**2 / 6)
  np.testing.assert_allclose(float(tw), (a.mean() - b.mean()) / np.sqrt(qa + qb), rtol=1e-5)
  np.testing.assert_allclose(float(pw), float(baselines.student_t_two_sided_p(tw, df_w)),
                             rtol=1e-4)
  # Zero variance on both sides: equal means are not significant, different ones are.
  assert float(baselines.ttest_ind(jnp.ones(10), jnp.ones(10))[1]) == 1.0
  assert float(baselines.ttest_ind(jnp.ones(10), jnp.zeros(10))[1]) == 0.0


N, D = 400, 8


@pytest.fixture(scope='module')
def toy():
  """Activations where concept 0 is the half-space h₀ > 0 and concept 1 is a coin flip;
  class 1's logit rises along h₀ (plus a nonlinear part so that gradients vary)."""
  rng = np.random.default_rng(0)
  h = rng.normal(size=(N, D)).astype(np.float32)
  concepts = np.stack([h[:, 0] > 0, rng.random(N) < 0.5], axis=1)
  labels = rng.integers(0, 2, N).astype(np.int32)

  def c2(x):
    f = 2.0 * x[:, 0] + 0.5 * jnp.sum(jnp.sin(x[:, 1:]), axis=1)
    return jnp.stack([-f, f], axis=1)

  return jnp.asarray(h), concepts, jnp.asarray(labels), c2


def test_class_gradients_and_scores(toy):
  h, _, labels, c2 = toy
  g = baselines.class_gradients(c2, h)
  chex.assert_shape(g, (N, 2, D))
  np.testing.assert_allclose(g[:, 1, 0], 2.0)
  np.testing.assert_allclose(g[:, 1, 1:], 0.5 * np.cos(np.asarray(h[:, 1:])), rtol=1e-6)
  e0 = jnp.eye(D)[0]
  np.testing.assert_allclose(baselines.tcav_scores(g, labels, e0), [0.0, 1.0])


def test_cav_recovers_separating_direction(toy):
  h, concepts, _, _ = toy
  v = baselines.train_cav(h, concepts[:, 0])
  np.testing.assert_allclose(float(jnp.linalg.norm(v)), 1.0, rtol=1e-5)
  assert float(v[0]) > 0.95                                # concept side positive


def test_tcav_concept_is_significant_and_random_is_not(toy):
  h, concepts, labels, c2 = toy
  out = baselines.tcav(jax.random.key(0), c2, h, concepts, labels, num_runs=10,
                       num_per_side=40)
  chex.assert_shape([out['score'], out['p_value'], out['significant']], (2, 2))
  chex.assert_shape(out['concept_scores'], (2, 10, 2))
  chex.assert_shape(out['random_scores'], (10, 2))
  score, p, sig = (np.asarray(out[k]) for k in ('score', 'p_value', 'significant'))
  # Built-in concept: class 1's logit rises along it, class 0's falls.
  assert score[0, 1] > 0.97 and score[0, 0] < 0.03
  assert sig[0].all() and p[0].max() < 0.02
  # A coin-flip concept is a random direction: about half, and not significant.
  assert 0.25 < score[1, 1] < 0.75 and 0.25 < out['random_scores'][:, 1].mean() < 0.75
  assert not sig[1].any() and p[1].min() > 0.05
  table = baselines.tcav_table(out, ['h0', 'coin'])
  assert table[('h0', 1)]['significant'] and not table[('coin', 1)]['significant']


def test_tcav_is_deterministic_and_validates(toy):
  h, concepts, labels, c2 = toy
  kw = dict(num_runs=4, num_per_side=10, negatives='random')
  a = baselines.tcav(jax.random.key(1), c2, h, concepts, labels, **kw)
  b = baselines.tcav(jax.random.key(1), c2, h, concepts, labels, **kw)
  np.testing.assert_array_equal(a['cavs'], b['cavs'])
  np.testing.assert_array_equal(a['p_value'], b['p_value'])
  with pytest.raises(ValueError, match='num_runs'):
    baselines.tcav(jax.random.key(1), c2, h, concepts, labels, num_runs=1)
  with pytest.raises(ValueError, match='2 examples'):
    baselines.tcav(jax.random.key(1), c2, h, np.zeros((N, 1), bool), labels)


def test_mean_difference_cav_and_log_prob_gradients(toy):
  h, concepts, _, c2 = toy
  v = baselines.mean_difference_cav(h, concepts[:, 0])
  hn, m = np.asarray(h), concepts[:, 0]
  ref = hn[m].mean(0) - hn[~m].mean(0)
  np.testing.assert_allclose(v, ref / np.linalg.norm(ref), rtol=1e-5, atol=1e-6)
  # Two classes: ∇ log p_1 = (1 − p_1) ∇(logit_1 − logit_0).
  g = baselines.class_gradients(c2, h, 'log_prob')
  logits = c2(h)
  p1 = jax.nn.softmax(logits)[:, 1]
  raw = baselines.class_gradients(c2, h)
  np.testing.assert_allclose(g[:, 1], (1 - p1)[:, None] * (raw[:, 1] - raw[:, 0]),
                             rtol=1e-5, atol=1e-6)
  # Adding the same function to both logits moves raw-logit TCAV, not log-prob TCAV.
  shifted = lambda x: c2(x) + 5.0 * x[:, 2:3]
  e2 = jnp.eye(D)[2]
  labels = jnp.ones(N, jnp.int32)
  assert float(baselines.tcav_scores(baselines.class_gradients(shifted, h), labels, e2)[1]) > 0.9
  np.testing.assert_allclose(
      baselines.tcav_scores(baselines.class_gradients(shifted, h, 'log_prob'), labels, e2),
      baselines.tcav_scores(g, labels, e2), atol=1e-6)
