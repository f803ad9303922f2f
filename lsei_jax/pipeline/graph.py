"""The stage graph: its nodes in training order (upstream before downstream), and what is
derived from them (stage names, trained sections, upstream closures, links). A new stage is
one module under lsei_jax/pipeline/stages/ defining a `Node`, listed in `GRAPH`."""
from __future__ import annotations

from typing import Sequence

from lsei_jax import errors
from lsei_jax.pipeline import identity
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import (autoencoder, classifier, concepts, explainer, inn,
                                      invariance, probe, sanity)

GRAPH: tuple[Node, ...] = (classifier.NODE, concepts.NODE, explainer.NODE, explainer.NOREG,
                           probe.NODE, inn.NODE, autoencoder.NODE, invariance.NODE, sanity.NODE)
NODES = {n.name: n for n in GRAPH}
STAGES = tuple(NODES)


def stage_names(config) -> tuple[str, ...]:
  """The stages a full run of this config trains, in order."""
  return tuple(n.name for n in GRAPH if n.enabled(config))


def trained_sections(config) -> tuple[str, ...]:
  """Config sections of the nodes the loop trains for this config (steps, batch_size,
  optimizer): every trained node's but those of optional nodes it does not enable."""
  return tuple(dict.fromkeys(n.section for n in GRAPH
                             if n.trained and (not n.optional or n.enabled(config))))


def select(config, stages: Sequence[str] | None) -> tuple[str, ...]:
  """The stages to train: `stages`, or every enabled stage; unknown names refused."""
  wanted = stage_names(config) if not stages else tuple(stages)
  unknown = [s for s in wanted if s not in NODES]
  if unknown:
    hint = (" (the concept learner's stage is now named 'concepts')" if 'dvae' in unknown
            else '')
    raise errors.UserError(f'unknown stage(s) {unknown}; known: {", ".join(STAGES)}{hint}')
  return wanted


def upstream_closure(names: Sequence[str]) -> set[str]:
  """Every stage the named stages are trained on, directly or not."""
  out, todo = set(), list(names)
  while todo:
    for u in NODES[todo.pop()].upstream:
      if u not in out:
        out.add(u)
        todo.append(u)
  return out


def link_of(stage: str, identities: dict) -> dict:
  """{upstream: identity} that `stage` records / is checked against."""
  return {u: identities[u] for u in NODES[stage].upstream if u in identities}


def load_nodes(ctx: Context, names: Sequence[str]) -> None:
  """Loads the named stages' complete checkpoints into ctx (graph order), every upstream
  link checked against what ctx holds."""
  identity.check_renamed_stages(ctx.workdir)
  identity.check_classifier_workdir(ctx.workdir, ctx.spec.given_id)
  for node in GRAPH:
    if node.name in names:
      ctx.record(node.name, *node.load(ctx, link_of(node.name, ctx.identities)))
