"""Jitted functions are built once per (models, mesh) and reused: a second evaluation
traces nothing of its own, and the sanity run reuses the explainer step."""
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import monitoring
from jax._src import dispatch

from lsei_jax.pipeline import evaluation
from lsei_jax.training import parallel
from lsei_jax import pipeline
from lsei_jax.pipeline import frozen, identity
from lsei_jax.pipeline.stages import explainer as explainer_stage
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)


def _traces_during(fn) -> list[str]:
  """Names of the functions JAX traced while fn() ran, except flax parameter initialisers
  (the cascading-randomisation test initialises a fresh model eagerly on purpose)."""
  names = []

  def listener(event, duration, fun_name=None, **_):
    del duration
    if event == dispatch.JAXPR_TRACE_EVENT:
      stack = traceback.extract_stack()
      if not any(f.name == 'param' and 'flax' in f.filename for f in stack):
        names.append(fun_name)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    monitoring.unregister_event_duration_listener(listener)
  return names


def test_second_evaluation_retraces_nothing(workdir_copy, tiny_config):
  first = _traces_during(lambda: evaluation.evaluate(tiny_config, workdir_copy))

  # The probe's input is made before the window: an eager jnp.ones(3) is itself traced
  # the first time its shape is seen in the process (the test failed when run alone).
  x = jnp.ones(3)

  def second():
    evaluation.evaluate(tiny_config, workdir_copy)
    jax.jit(lambda x: x + 1)(x)   # proves the counter sees traces
  names = _traces_during(second)
  assert names == ['<lambda>'], f'retraced in the second pass: {names} (first: {first})'


def test_explainer_step_is_built_once_per_models_config_and_mesh(tiny_config):
  mods = pipeline.build(tiny_config, 3)
  again = pipeline.build(tiny_config, 3)
  mesh = parallel.make_mesh()
  cfg = tiny_config.explainer
  step = explainer_stage.explainer_step(mods.explainer, cfg, mesh)
  assert explainer_stage.explainer_step(again.explainer, cfg.copy_and_resolve_references(),
                                 mesh) is step
  # The classifier's functions are the same objects for equal modules, so is what they build.
  embed = lambda m: identity.builtin_split(m.classifier, {}).embed
  assert frozen.embed_fn(embed(again), mesh) is frozen.embed_fn(embed(mods), mesh)
  other = cfg.copy_and_resolve_references()
  other.fisher_samples += 1
  assert explainer_stage.explainer_step(mods.explainer, other, mesh) is not step


def test_concept_step_is_built_once_per_learner_config_and_mesh(tiny_config):
  # The sanity run trains its concept learner with the main run's compiled step.
  from lsei_jax.pipeline.stages import concepts as concepts_stage
  mesh = parallel.make_mesh()
  cfg = tiny_config.concepts
  step = concepts_stage.concepts_step(pipeline.build(tiny_config, 3).learner, cfg, mesh)
  assert concepts_stage.concepts_step(pipeline.build(tiny_config, 3).learner,
                                      cfg.copy_and_resolve_references(), mesh) is step
  other = cfg.copy_and_resolve_references()
  other.beta = float(other.beta) * 2
  assert concepts_stage.concepts_step(pipeline.build(tiny_config, 3).learner, other,
                                      mesh) is not step


def test_evaluation_runs_no_model_op_by_op(workdir_copy, tiny_config):
  # Outside jit every op of a model compiles on its own (none of it persistently cached):
  # restore targets come from eval_shape, initialisations and attributions are jitted.
  # Eager dispatch caches are per process, so they are cleared first.
  jax.clear_caches()
  names = []

  def listener(event, duration, fun_name=None, **_):
    del duration
    if event == dispatch.JAXPR_TRACE_EVENT:
      names.append(fun_name)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    evaluation.evaluate(tiny_config, workdir_copy)
  finally:
    monitoring.unregister_event_duration_listener(listener)
  eager_model_ops = {'conv_general_dilated', '_truncated_normal', 'relu', 'dot_general'}
  assert not eager_model_ops & set(names), sorted(n for n in names if n in eager_model_ops)
  # Nor host arrays lifted by an eager jnp.asarray (lax.stage: an executable per shape,
  # never persistently cached; jax.device_put places them without one).
  assert 'stage' not in names, names


def test_jitted_initial_state_is_the_eager_one_and_traced_once(tiny_config):
  # Training starts from initial_state (jitted); checkpoints written from the eager
  # template_state, and the sanity check's stored random classifier, must stay valid.
  mesh = parallel.make_mesh()
  spec = pipeline.make_spec(tiny_config, mesh, num_attributes=3)
  for stage in ('classifier', 'concepts', 'explainer', 'probe'):
    rng = pipeline.NODES[stage].rngs(spec)[0]
    eager = pipeline.template_state(spec, stage, rng)
    leaves = lambda s: jax.tree.leaves((s.params, s.opt_state, s.step))
    names = _traces_during(lambda: [pipeline.initial_state(spec, stage, rng)
                                    for _ in range(2)])
    assert names == ['<lambda>'], (stage, names)
    jitted = pipeline.initial_state(spec, stage, rng)
    for a, b in zip(leaves(eager), leaves(jitted), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
