"""The closed loop (issue 25 item 4): validity, leakage and the attribute-level reliance
against per-pair NumPy oracles, a known answer, and the jitted loop over a toy
generator / classifier / probe against a float64 NumPy computation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax.pipeline import closed_loop as loop_stage
from lsei_jax.reporting import closed_loop
from lsei_jax.reporting.bias import _normal_quantile  # pylint: disable=protected-access
from lsei_jax.training import parallel


def _random_loop(seed, k=5, n=300, a=4):
  rng = np.random.default_rng(seed)
  p_before = rng.uniform(size=(n, a))
  # Each bit moves some attributes more often than others: a mix of clean and leaky edits.
  p_after = np.where(rng.uniform(size=(k, n, a)) < rng.uniform(0, 0.5, (k, 1, a)),
                     1 - p_before[None], p_before[None])
  pred_before = rng.integers(0, 2, n)
  pred_after = np.where(rng.uniform(size=(k, n)) < 0.3, 1 - pred_before[None], pred_before)
  return pred_before, pred_after, p_before, p_after


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_rows_and_bits_match_a_per_pair_oracle(seed):
  pb, pa, qb, qa = _random_loop(seed)
  k, n, a = qa.shape
  names = ['t', 'b', 'c', 'd']
  rows = closed_loop.closed_loop_rows(pb, pa, qb, qa, names, 't', min_edits=5)
  bits = closed_loop.bit_summary(pb, pa, closed_loop.attribute_moves(qb, qa), names)
  # Oracle: plain loops over (bit, sample) pairs.
  clean, flips_clean, null, flips_null, touched = ([0] * a, [0] * a, 0, 0, [0] * a)
  validity, rate = np.zeros(k), np.zeros((k, a))
  for i in range(k):
    for j in range(n):
      moved = [(qa[i, j, m] > 0.5) != (qb[j, m] > 0.5) for m in range(a)]
      flip = pa[i, j] != pb[j]
      validity[i] += flip / n
      for m in range(a):
        rate[i, m] += moved[m] / n
        touched[m] += moved[m]
        if moved[m] and sum(moved) == 1:
          clean[m] += 1
          flips_clean[m] += flip
      if not any(moved):
        null += 1
        flips_null += flip
  z = _normal_quantile(1 - 0.05 / (2 * a))
  for m, r in enumerate(rows):
    assert (r['num_edits'], r['num_null']) == (clean[m], null)
    assert r['flip_rate'] == pytest.approx(flips_clean[m] / clean[m], abs=1e-12)
    assert r['null_rate'] == pytest.approx(flips_null / null, abs=1e-12)
    assert r['leakage'] == pytest.approx(1 - clean[m] / touched[m], abs=1e-12)
    p1, p0 = (flips_clean[m] + 1) / (clean[m] + 2), (flips_null + 1) / (null + 2)
    se = np.sqrt(p1 * (1 - p1) / (clean[m] + 2) + p0 * (1 - p0) / (null + 2))
    eff = flips_clean[m] / clean[m] - flips_null / null
    assert r['effect'] == pytest.approx(eff, abs=1e-12)
    assert (r['ci_low'], r['ci_high']) == pytest.approx((eff - z * se, eff + z * se), abs=1e-9)
    assert r['flagged'] == (r['verdict'] == 'relied on')
  for i, b in enumerate(bits):
    assert b['validity'] == pytest.approx(validity[i], abs=1e-12)
    assert [b['edit_rate'][x] for x in names] == pytest.approx(rate[i], abs=1e-12)
    top = int(np.argmax(rate[i]))
    assert b['assigned'] == names[top]
    assert b['leakage'] == pytest.approx(np.delete(rate[i], top).max(), abs=1e-12)


def _known_loop(n=200):
  """Attributes (task, bg, tex); the classifier reads the task attribute only. Bit 0 flips
  the task alone, bit 1 the background alone, bit 2 both (a leaky edit), bit 3 nothing."""
  rng = np.random.default_rng(0)
  attrs = rng.integers(0, 2, (n, 3)).astype(float)
  edits = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], float)
  after = np.abs(attrs[None] - edits[:, None])                      # [K, N, A]
  prob = lambda x: 0.1 + 0.8 * x                                    # a confident probe
  return attrs[:, 0].astype(int), after[..., 0].astype(int), prob(attrs), prob(after)


def test_known_answer_reliance_leakage_and_verdicts():
  pb, pa, qb, qa = _known_loop()
  names = ['task', 'bg', 'tex']
  rows = {r['attribute']: r for r in closed_loop.closed_loop_rows(pb, pa, qb, qa, names, 'task')}
  assert rows['task']['flip_rate'] == 1.0 and rows['task']['null_rate'] == 0.0
  assert rows['task']['verdict'] == 'relied on' and rows['task']['is_task']
  assert rows['bg']['flip_rate'] == 0.0 and rows['bg']['verdict'] == 'no evidence'
  # Half of the edits that move the task move the background too (bit 2): leaky, not clean.
  assert rows['task']['leakage'] == rows['bg']['leakage'] == 0.5
  assert rows['task']['num_edits'] == rows['bg']['num_edits'] == 200
  # Nothing ever moves the texture: no edit, no answer.
  assert rows['tex']['verdict'] == 'cannot tell' and rows['tex']['effect'] is None
  real = pb.copy()
  real[:50] = 1 - real[:50]
  rep = closed_loop.closed_loop_report(pb, pa, qb, qa, names, 'task', 1 - pb, real)
  assert rep['validity_flip_all'] == 1.0 and rep['agreement_real'] == 0.75
  assert [b['validity'] for b in rep['bits']] == [1.0, 0.0, 1.0, 0.0]
  assert [b['assigned'] for b in rep['bits']] == ['task', 'bg', 'task', None]
  assert [b['leakage'] for b in rep['bits']] == [0.0, 0.0, 1.0, 0.0]


def test_a_few_edits_give_no_answer_and_no_zero_width_interval():
  pb, pa, qb, qa = _known_loop(n=12)
  rows = closed_loop.closed_loop_rows(pb, pa, qb, qa, ['task', 'bg', 'tex'], 'task',
                                      min_edits=20)
  assert all(r['verdict'] == 'cannot tell' for r in rows)     # 12 clean edits < 20
  r = closed_loop.closed_loop_rows(pb, pa, qb, qa, ['task', 'bg', 'tex'], 'task',
                                   min_edits=1)[0]
  assert r['ci_high'] - r['ci_low'] > 0.2                     # 12 edits: a wide interval


def test_shapes_that_do_not_fit_are_refused():
  pb, pa, qb, qa = _known_loop(n=10)
  with pytest.raises(ValueError, match='do not fit'):
    closed_loop.closed_loop_rows(pb, pa[:2], qb, qa, ['task', 'bg', 'tex'], 'task')


# ------------------------------------------------------- the jitted loop on toy modules
@dataclasses.dataclass(frozen=True)
class _Linear:
  """apply({'params': W}, x) = flatten(x) @ W, reshaped to out_shape (a toy g and probe)."""
  out_shape: tuple

  def apply(self, variables, x):
    y = x.reshape(x.shape[0], -1) @ variables['params']
    return y.reshape((x.shape[0],) + self.out_shape)


@dataclasses.dataclass(frozen=True)
class _Threshold:
  """A toy concept learner: z = 1[h @ E > 0], ĥ = z @ D."""
  latent_dim: int = 3
  binary: bool = True

  def encode(self, p, h):
    return (h @ p['E'] > 0).astype(jnp.float32)

  def decode(self, p, z):
    return z @ p['D']


def test_jitted_loop_matches_numpy_on_a_toy_generator_and_classifier():
  rng = np.random.default_rng(3)
  hw, d, k, a, c = 2, 4, 3, 2, 2
  px = hw * hw * 3
  w = {'embed': rng.normal(size=(px, d)), 'head': rng.normal(size=(d, c)),
       'E': rng.normal(size=(d, k)), 'D': rng.normal(size=(k, d)) * 2,
       'g': rng.normal(size=(d, px)), 'probe': rng.normal(size=(px, a)) * 3}
  embed = lambda p, x: x.reshape(x.shape[0], -1) @ p['embed']
  head = lambda p, h: h @ p['head']
  images = rng.integers(0, 256, (16, hw, hw, 3)).astype(np.uint8)
  f32 = {n: jnp.asarray(v, jnp.float32) for n, v in w.items()}
  fn = loop_stage._loop_fn(embed, head, _Threshold(), _Linear((hw, hw, 3)), _Linear((a,)),  # pylint: disable=protected-access
                           parallel.make_mesh(1))
  out = jax.device_get(fn((f32, {'E': f32['E'], 'D': f32['D']}, f32['g'], f32['probe'],
                           jnp.ones(k)), {'image': jnp.asarray(images)}))
  # Oracle in float64.
  sig = lambda v: 1 / (1 + np.exp(-v))
  h = images.reshape(16, -1) / 255.0 @ w['embed']
  z = (h @ w['E'] > 0).astype(float)
  render = lambda e: sig(e @ w['g'])
  logits = lambda e: render(e) @ w['embed'] @ w['head']
  read = lambda e: sig(render(e) @ w['probe'])
  hh = [(np.abs(z - np.eye(k)[i])) @ w['D'] for i in range(k)]
  # The argmax is compared only where the float64 margin is clear of float32 rounding.
  for got, e in [(out['pred_before'], z @ w['D'])] + [(out['pred_after'][:, i], hh[i])
                                                       for i in range(k)]:
    lg = logits(e)
    clear = np.abs(lg[:, 0] - lg[:, 1]) > 1e-3
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(got[clear], np.argmax(lg, -1)[clear])
  # float32 through three small matmuls and two sigmoids: well inside 1e-4.
  np.testing.assert_allclose(out['p_before'], read(z @ w['D']), atol=1e-4)
  for i in range(k):
    np.testing.assert_allclose(out['p_after'][:, i], read(hh[i]), atol=1e-4)
  lg = logits((1 - z) @ w['D'])
  clear = np.abs(lg[:, 0] - lg[:, 1]) > 1e-3
  np.testing.assert_array_equal(out['pred_flip_all'][clear], np.argmax(lg, -1)[clear])
  lg = h @ w['head']
  clear = np.abs(lg[:, 0] - lg[:, 1]) > 1e-3
  np.testing.assert_array_equal(out['pred_real'][clear], np.argmax(lg, -1)[clear])
