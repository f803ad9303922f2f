"""The declarative stage graph and its named random streams."""
import jax
import numpy as np

from lsei_jax import pipeline


def test_upstream_closure_follows_the_graph():
  assert pipeline.upstream_closure(['probe']) == {'classifier', 'concepts', 'explainer'}
  assert pipeline.upstream_closure(['explainer_noreg']) == {'classifier', 'concepts'}
  for sd in pipeline.GRAPH:   # upstream stages come earlier in the walk
    names = [s.name for s in pipeline.GRAPH]
    assert all(names.index(u) < names.index(sd.name) for u in sd.upstream)


def test_streams_are_named_not_positional():
  # A stream depends on (seed, name) only; different names and seeds differ.
  a = jax.random.key_data(pipeline.stream(0, 'dvae'))
  np.testing.assert_array_equal(a, jax.random.key_data(pipeline.stream(0, 'dvae')))
  assert not np.array_equal(a, jax.random.key_data(pipeline.stream(0, 'explainer')))
  assert not np.array_equal(a, jax.random.key_data(pipeline.stream(1, 'dvae')))


def test_explainers_share_their_stream(tmp_path, tiny_config):
  # With λ = 0 the two explainers are the same training problem: same initialisation and
  # batches (one stream), so Table 2's comparison differs in the regularizer only.
  config = tiny_config.copy_and_resolve_references()
  config.explainer.fisher_weight = 0.0
  metas = pipeline.train(config, str(tmp_path), ['classifier', 'concepts', 'explainer',
                                                 'explainer_noreg'])
  assert metas['explainer']['fingerprint'] == metas['explainer_noreg']['fingerprint']
