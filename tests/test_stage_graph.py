"""The declarative stage graph and its named random streams."""
import jax
import numpy as np
import pytest

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


def test_stream_is_the_eager_fold_in_bitwise():
  # stream() runs one jitted executable (int32 seeds) instead of four eager ones; its keys
  # must be those of the formula it documents, at the ends of the int32 range and beyond.
  from lsei_jax import streams
  for seed in (0, 7, np.int64(12), 2**31 - 1, -2**31, 2**33):
    for name in ('dvae', 'eval/tcav'):
      want = jax.random.fold_in(jax.random.key(int(seed)), streams._name_hash(name))
      got = pipeline.stream(seed, name)
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))


@pytest.mark.slow
def test_explainers_share_their_stream(tmp_path, tiny_config):
  # With λ = 0 the two explainers are the same training problem: same initialisation and
  # batches (one stream), so Table 2's comparison differs in the regularizer only.
  config = tiny_config.copy_and_resolve_references()
  config.explainer.fisher_weight = 0.0
  metas = pipeline.train(config, str(tmp_path), ['classifier', 'concepts', 'explainer',
                                                 'explainer_noreg'])
  assert metas['explainer']['fingerprint'] == metas['explainer_noreg']['fingerprint']


def test_stage_facts_are_read_off_the_nodes(tiny_config):
  # What used to live in six tables: the stage list, the trained sections, the signature
  # sections, the default stages of a config.
  from lsei_jax.pipeline import graph
  assert pipeline.STAGES == ('classifier', 'concepts', 'explainer', 'explainer_noreg',
                             'probe', 'inn', 'autoencoder', 'invariance', 'sanity')
  assert graph.trained_sections(tiny_config) == ('classifier', 'concepts', 'explainer', 'probe')
  c = tiny_config.copy_and_resolve_references()
  optional = ('inn', 'autoencoder', 'invariance')
  assert pipeline.stage_names(c) == tuple(s for s in pipeline.STAGES if s not in optional)
  c.inn.enabled = True   # an optional node: its section is checked only when it runs
  assert graph.trained_sections(c)[-1] == 'inn' and 'inn' in pipeline.stage_names(c)
  c.inn.enabled = False
  c.invariance.enabled = True   # one switch for both invariance stages
  assert graph.trained_sections(c)[-2:] == ('autoencoder', 'invariance')
  c.invariance.enabled = False
  c.explainer.train_noreg, c.sanity.enabled = False, False
  assert pipeline.stage_names(c) == ('classifier', 'concepts', 'explainer', 'probe')
  spec = pipeline.make_spec(c)
  sig = pipeline.NODES['concepts'].signature(spec)
  assert sig['concepts.steps'] == c.concepts.steps and 'explainer.steps' not in sig
  noreg = pipeline.NODES['explainer_noreg'].signature(spec)
  assert noreg['explainer.fisher_weight'] == 0.0 and 'explainer.fisher_samples' not in noreg


def test_the_concept_stage_keeps_its_old_stream(tiny_config):
  # Renamed from 'dvae' to 'concepts' without changing its keys and batches.
  spec = pipeline.make_spec(tiny_config)
  np.testing.assert_array_equal(
      jax.random.key_data(pipeline.NODES['concepts'].rngs(spec)[0]),
      jax.random.key_data(jax.random.split(pipeline.stream(tiny_config.seed, 'dvae'))[0]))


def test_a_workdir_from_before_the_rename_is_refused_with_the_fix(tmp_path, tiny_config):
  import os

  import pytest

  from lsei_jax.training import checkpoints
  os.makedirs(tmp_path / 'dvae')
  with pytest.raises(checkpoints.CheckpointError, match="named 'dvae'.*move .*dvae away"):
    pipeline.train(tiny_config, str(tmp_path), ['classifier'])
  assert os.path.isdir(tmp_path / 'dvae') and not os.path.isdir(tmp_path / 'classifier')
  with pytest.raises(Exception, match="now named 'concepts'"):
    pipeline.train(tiny_config, str(tmp_path), ['dvae'])
