"""Train-state templates of the graph's nodes: fresh states (eager or jitted, bitwise the
same) and restore targets (shapes and shardings only), built once per (spec, stage)."""
from __future__ import annotations

import functools
from typing import Callable

import jax

from lsei_jax import compile_cache
from lsei_jax.pipeline.spec import RunSpec
from lsei_jax.training import parallel


def _canonical(spec: RunSpec) -> RunSpec:
  """The spec a template depends on: not which classifier the run explains (trained, given
  or random), so the sanity run reuses the main run's compiled templates."""
  return spec.replace(classifier='trained', given_fingerprint=None, given=None)


def _node(stage: str):
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top  (graph → nodes → here)
  return graph.NODES[stage]


def template_state(spec: RunSpec, stage: str, rng: jax.Array | None = None):
  """A fresh, replicated train state of `stage` (its initial state when rng is the init key),
  initialised eagerly: `initial_state` computes the same values under jit."""
  node = _node(stage)
  rng = node.rngs(spec)[0] if rng is None else rng
  return parallel.replicate(node.template(spec, rng), spec.mesh)


def initial_state(spec: RunSpec, stage: str, rng: jax.Array):
  """`template_state` under jit: the same values (the initialisers are jitted functions
  either way), one compilation, persistently cached, instead of an eager one per
  parameter shape and op (seconds per stage on 2 CPU cores, never cached); compiled at a
  lower LLVM optimisation level (`compile_cache.init_compiler_options`), bitwise the same."""
  return parallel.replicate(_jitted_template(_canonical(spec), stage)(rng), spec.mesh)


def restore_target(spec: RunSpec, stage: str):
  """The structure, shapes, dtypes and replicated shardings of `stage`'s train state
  (jax.ShapeDtypeStruct leaves), without computing it: what a checkpoint restores into.

  `template_state` would initialise the modules eagerly, one small XLA compilation per
  distinct parameter shape and op (about 8 s of a warm evaluation, none of it cached); this
  is the shape of `initial_state`'s jitted template."""
  return _restore_target(_canonical(spec), stage)


@functools.lru_cache(maxsize=64)
def _restore_target(spec: RunSpec, stage: str):
  shapes = jax.eval_shape(_jitted_template(spec, stage), _node(stage).rngs(spec)[0])
  sharding = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


@functools.lru_cache(maxsize=32)
def _jitted_template(spec: RunSpec, stage: str) -> Callable:
  template = _node(stage).template
  return jax.jit(lambda rng: template(spec, rng),
                 compiler_options=compile_cache.init_compiler_options() or None)


def random_classifier_state(spec: RunSpec):
  """The sanity check's untrained classifier: a pure function of the seed (its named
  stream). Evaluation recomputes it to check the stored one."""
  return initial_state(spec, 'classifier', spec.stream('sanity/classifier'))
