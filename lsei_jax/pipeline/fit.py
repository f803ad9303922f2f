"""Training: one walk over the stage graph. Each wanted node trains (resuming from its
latest checkpoint), each node it needs upstream is loaded complete; every checkpoint
records its upstream identities and its signature, so a later run on other inputs is
refused."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from lsei_jax import data as data_lib
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.pipeline import graph, identity
from lsei_jax.pipeline.node import Context
from lsei_jax.pipeline.spec import RunSpec, resolve
from lsei_jax.training import workdir as workdir_lib
from absl import logging


def train(config, workdir: str, stages: Sequence[str] | None = None, *,
          classifier: ClassifierSplit | None = None, mesh=None,
          hooks: Sequence[Callable] = ()) -> dict[str, dict]:
  """Trains the selected stages (default: every stage of the config) in graph order.

  Stages not selected but needed upstream must already be complete in `workdir`.
  classifier: a `ClassifierSplit` to explain instead of training config.model.classifier
  (default: the one config.classifier.source names, if any); it is never trained, its
  fingerprint is recorded (WORKDIR/classifier.json and each downstream checkpoint) so a
  later run with other weights is refused.
  hooks: callables(stage, step, state) run after each checkpoint is written.
  Returns {stage: final checkpoint meta} for every stage trained or loaded (a given
  classifier's entry is its identity {'given': fingerprint}; the sanity check's stages are
  'sanity/<stage>').
  """
  spec, ds = resolve(config, 'train', classifier=classifier, mesh=mesh)
  wanted = graph.select(spec.config, stages)
  if 'sanity' in wanted:   # a bad choice fails before any training
    identity.sanity_mode(spec.config.sanity, spec.classifier == 'given')
  return fit_workdir(spec, ds, workdir, wanted, hooks=hooks)


def fit_workdir(spec: RunSpec, ds: data_lib.Dataset, workdir: str, wanted: Sequence[str], *,
                hooks: Sequence[Callable] = (), adopt: dict[str, tuple[Any, str]] | None = None
                ) -> dict[str, dict]:
  """The walk, under `workdir`'s lock. adopt: {stage: (final state, source workdir)} for
  stages whose training here would reproduce a state trained in `source` bit for bit (same
  inputs, seed and config): stored as the stage's complete checkpoint instead."""
  workdir_lib.check_workdir(workdir)
  with workdir_lib.lock(workdir):
    identity.check_renamed_stages(workdir)
    identity.check_classifier_workdir(workdir, spec.given_id)
    logging.info('train split: %d images, task %r, %d classes, d=%d, %d devices', len(ds),
                 ds.task, spec.num_classes, spec.d, spec.mesh.devices.size)
    ctx = Context(spec, workdir, ds, 'train', hooks, dict(adopt or {}))
    needed = set(wanted) | graph.upstream_closure(wanted)
    for node in graph.GRAPH:
      if node.name in needed:
        link = graph.link_of(node.name, ctx.identities)
        fit_or_load = node.fit if node.name in wanted else node.load
        ctx.record(node.name, *fit_or_load(ctx, link))
  metas = {}
  for name, meta in ctx.metas.items():   # a sub-run's stages as '<node>/<stage>'
    metas.update({f'{name}/{k}': v for k, v in meta['stages'].items()} if 'stages' in meta
                 else {name: meta})
  return metas
