"""The factor INN as a stage of the graph: trained on the run's classifier (linked by its
checkpoint), resumable, data-parallel, evaluated into metrics.json's 'inn'."""
import numpy as np
import pytest

from lsei_jax import pipeline
from lsei_jax.pipeline import artifacts, evaluation
from lsei_jax.pipeline.stages import inn as inn_stage
from lsei_jax.training import checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def inn_config(tiny_config):
  c = tiny_config.copy_and_resolve_references()
  c.inn.enabled = True
  return c


def test_inn_is_one_node_trained_on_the_classifier(workdir_copy, inn_config, trained_workdir):
  assert 'inn' in pipeline.stage_names(inn_config)
  assert 'inn' not in pipeline.stage_names(_disabled(inn_config))
  metas = pipeline.train(inn_config, workdir_copy, ['inn'])
  assert metas['inn']['complete']
  assert metas['inn']['upstream'] == {'classifier': checkpoints.identity(
      trained_workdir[1]['classifier'])}
  assert pipeline.train(inn_config, workdir_copy, ['inn'])['inn'] == metas['inn']  # resumed
  ctx = evaluation.load(inn_config, workdir_copy, ['classifier', 'inn'])
  res = inn_stage.evaluate_inn(ctx)['inn']
  names = list(ctx.data.attribute_names)
  assert res['attributes'] == names and set(res['factor_flip_rate']) == set(names)
  assert all(0.0 <= v <= 1.0 for v in res['factor_flip_rate'].values())
  # Round trip of the standardised h through T and T⁻¹: float32 rounding of a 2-step flow
  # on unit-scale inputs (the block tests bound it by the Jacobian's condition number).
  assert res['round_trip_max_abs'] < 1e-4
  # All of T (attribute basis, float64 on the host, then the flow) in units of h (|h| ≲ 10):
  # the flow's error mapped back through the basis' inverse, float32 output rounding.
  assert res['round_trip_h_max_abs'] < 1e-3
  assert all(len(v) == len(names) + 1 for v in res['block_accuracy'].values())
  assert 'unbiased' not in res            # the tiny test split is the unbiased one already


def test_inn_reads_the_unbiased_split_where_the_test_split_is_correlated(
    workdir_copy, inn_config, monkeypatch):
  pipeline.train(inn_config, workdir_copy, ['inn'])
  ctx = evaluation.load(inn_config, workdir_copy, ['classifier', 'inn'])
  # Handed the test split itself as the unbiased one, its table is the main one exactly
  # (the same probes on the same rows, deterministic).
  seen = []
  monkeypatch.setattr(artifacts, 'unbiased_split',
                      lambda data_config: seen.append(data_config) or ctx.data)
  res = inn_stage.evaluate_inn(ctx)['inn']
  assert len(seen) == 1 and seen[0].name == 'shapes'    # asked with the run's data config
  assert seen[0].test_rho == inn_config.data.test_rho
  keys = ('block_accuracy', 'own_block', 'other_max', 'h_accuracy', 'chance')
  assert set(res['unbiased']) == set(keys)
  assert res['unbiased'] == {k: res[k] for k in keys}


def _disabled(c):
  c = c.copy_and_resolve_references()
  c.inn.enabled = False
  return c


def test_standardise_keeps_dead_units_finite():
  h = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0]])
  mean, scale = inn_stage.standardise(h)
  np.testing.assert_allclose(mean, [0.0, 2.0, 2.0])
  np.testing.assert_allclose(scale, [1.0, 1.0, 1.0])   # std 0 → 1 (dead or constant)
  np.testing.assert_allclose((h - mean) / scale, [[0, -1, 0], [0, 1, 0]])


def test_fit_split_is_checked_and_pins_num_test_only_for_validation(tiny_config):
  from lsei_jax import errors
  c = tiny_config.copy_and_resolve_references()
  c.inn.fit_split = 'test'
  with pytest.raises(errors.UserError, match="inn.fit_split='test'.*'validation'"):
    inn_stage.fit_split(c)
  spec = type('Spec', (), {'config': c})
  sig = {'inn.fit_split': 'train', 'inn.steps': 12}
  c.inn.fit_split = 'train'       # left out: checkpoints from before the field keep loading
  assert inn_stage._signature_fix(spec, sig) == {'inn.steps': 12}
  c.inn.fit_split = 'validation'  # shapes draws data.num_test validation images
  assert inn_stage._signature_fix(spec, sig) == dict(sig, **{'data.num_test': c.data.num_test})


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_inn_fits_on_the_rows_of_its_fit_split(workdir_copy, inn_config, split):
  """The basis, the pair table and the class means come from inn.fit_split's rows: each
  recomputed here from that split's images, embedded by the classifier independently."""
  import jax
  from lsei_jax import data as data_lib
  from lsei_jax.inn import basis, factor
  c = inn_config.copy_and_resolve_references()
  c.inn.fit_split = split
  pipeline.train(c, workdir_copy, ['inn'])
  ctx = evaluation.load(c, workdir_copy, ['classifier', 'inn'])
  ds = data_lib.load(c.data, split)
  clf = ctx.classifier
  h = np.asarray(jax.jit(clf.embed)(clf.params, np.asarray(ds.images).astype(np.float32) / 255.0))
  h_fit, a_fit = inn_stage.fit_rows(ctx)
  # The same network on the same images, batched differently: float32 rounding of h (|h| ≲ 10).
  np.testing.assert_allclose(np.asarray(h_fit), h, atol=1e-5)
  np.testing.assert_array_equal(a_fit, ds.attributes)
  # The basis is a pure float64 function of (h, attributes): equal to one fitted from the
  # independent h up to that rounding carried through the whitening (unit-variance columns).
  bas, ref = inn_stage.fitted_basis(ctx), basis.fit(h, ds.attributes, c.inn.factor_dim)
  np.testing.assert_allclose(bas.forward(h), ref.forward(h), atol=1e-3)
  arrays, batch = inn_stage._inputs(ctx)
  table = factor.sample_pair_table(ds.attributes, np.random.default_rng(
      ctx.spec.stream_seed('inn/pairs')), c.inn.pairs_per_example)
  assert len(arrays['index']) == len(ds) * c.inn.pairs_per_example
  rows = np.arange(0, len(arrays['index']), 7)
  got = batch({'index': rows})
  np.testing.assert_array_equal(got['factor'], table[2][rows])
  np.testing.assert_array_equal(got['h_a'], bas.forward(np.asarray(h_fit)[table[0][rows]]))
  np.testing.assert_array_equal(got['h_b'], bas.forward(np.asarray(h_fit)[table[1][rows]]))
  m = inn_stage.model(ctx.spec)
  z = np.asarray(inn_stage.codecs(m)[0](ctx.params('inn'), bas.forward(h)))
  np.testing.assert_allclose(inn_stage.class_means(ctx),
                             factor.class_means(z, ds.attributes, m.layout), atol=1e-4)


def test_fit_split_validation_without_that_split_is_a_user_error(workdir_copy, inn_config,
                                                                 monkeypatch):
  from lsei_jax import data as data_lib, errors
  c = inn_config.copy_and_resolve_references()
  c.inn.fit_split = 'validation'
  ctx = evaluation.load(c, workdir_copy, ['classifier'])
  load = data_lib.load

  def no_validation(data_config, split):
    if split == 'validation':
      raise errors.UserError('the data has no validation rows')
    return load(data_config, split)
  monkeypatch.setattr(data_lib, 'load', no_validation)
  with pytest.raises(errors.UserError, match="no validation split.*inn.fit_split='train'"):
    inn_stage.fit_rows(ctx)
