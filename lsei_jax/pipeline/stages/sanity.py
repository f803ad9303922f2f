"""Model randomisation (Adebayo et al.): the concept learner and explainer trained again, in
WORKDIR/sanity, over a randomised classifier, to check that the explanation depends on what
the classifier learned. 'init' re-initialises the config's classifier (stored untrained);
'head' keeps the classifier's embedding under a random head (recorded like any given
classifier). Its evaluator compares the explainer's view of both runs."""
from __future__ import annotations

import dataclasses
import os

from lsei_jax import metrics
from lsei_jax.pipeline import artifacts, identity, templates
from lsei_jax.pipeline.node import Context, Node
from lsei_jax.pipeline.stages import classifier as classifier_stage
from lsei_jax.pipeline.stages import probe as probe_stage
from lsei_jax.reporting import bias
from lsei_jax.training import checkpoints
from lsei_jax.training.trainer import check_untrained

STAGES = ('classifier', 'concepts', 'explainer')


def _random_spec(ctx: Context, mode: str, rand=None):
  spec = ctx.spec
  if mode == 'init':
    return spec.replace(classifier='random', given_fingerprint=None, given=None)
  return spec.replace(classifier='given', given=rand,
                      given_fingerprint=identity.given_identity(rand, spec.image_size)['given'])


def _main_classifier(ctx: Context):
  """The run's classifier split (loading its checkpoint when this walk has not)."""
  if ctx.classifier is None:
    from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top
    ctx.record('classifier', *graph.NODES['classifier'].load(ctx, {}))
  return ctx.classifier


def _complete_concepts(ctx: Context):
  """The final state of WORKDIR's concept learner when it is complete and was trained on
  WORKDIR's classifier; else None."""
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(ctx.workdir, 'concepts')):
    return None
  try:
    state, _ = graph.NODES['concepts'].load(ctx, {'classifier': ctx.identities['classifier']})
  except checkpoints.CheckpointError:
    return None
  return state


@dataclasses.dataclass(frozen=True)
class SanityNode(Node):
  """Trains a sub-run of the graph (STAGES) in WORKDIR/sanity."""

  def fit(self, ctx: Context, link: dict):
    from lsei_jax.pipeline import fit as fit_lib  # pylint: disable=g-import-not-at-top
    mode = classifier_stage.sanity_mode(ctx.spec)
    sdir = os.path.join(ctx.workdir, 'sanity')
    identity.check_sanity_workdir(sdir, mode)
    hooks = [lambda stage, step, state, h=h: h(f'sanity/{stage}', step, state) for h in ctx.hooks]
    adopt = {}
    if mode == 'init':
      spec = _random_spec(ctx, mode)
    else:
      base = _main_classifier(ctx)
      rand = identity.resolve_classifier(
          ctx.spec.config, identity.sanity_classifier(ctx.spec.seed, base, ctx.data.images),
          ctx.mesh)
      spec = _random_spec(ctx, mode, rand)
      # The random head keeps the embedding, so the concept learner would be trained again
      # on the same h, batches and keys: the run's own one is stored instead (bitwise equal).
      learner = _complete_concepts(ctx)
      adopt = {} if learner is None else {'concepts': (learner, ctx.workdir)}
    metas = fit_lib.fit_workdir(spec, ctx.data, sdir, STAGES, hooks=hooks, adopt=adopt)
    return None, {'stages': metas}

  def load(self, ctx: Context, link: dict):
    return None, {}


def evaluate_sanity(ctx: Context) -> dict:
  """The explainer's view over the randomised classifier against the run's. What the
  randomisation tests is the explanation the concept learner and g produce, read by the
  same probes; the verdict needs no such check: it is computed from the classifier's own
  predictions, so a random classifier changes it by construction."""
  from lsei_jax.pipeline import graph  # pylint: disable=g-import-not-at-top
  spec = ctx.spec
  if not spec.config.sanity.enabled:
    return {'sanity': None}
  mode = classifier_stage.sanity_mode(spec)
  sdir = os.path.join(ctx.workdir, 'sanity')
  identity.check_sanity_workdir(sdir, mode)
  rand = None if mode == 'init' else classifier_stage.random_head(ctx)
  sctx = Context(_random_spec(ctx, mode, rand), sdir, ctx.data, split=ctx.split)
  graph.load_nodes(sctx, ['classifier'])
  if mode == 'init':   # the stored random classifier must be the one this config makes
    fresh = templates.random_classifier_state(sctx.spec).params
    check_untrained(f'{sdir}/classifier', 'classifier', sctx.metas['classifier'],
                    checkpoints.fingerprint(fresh), sctx.params('classifier'), fresh)
  graph.load_nodes(sctx, ['concepts', 'explainer'])
  s_out = artifacts.explain(sctx, sctx.classifier, sctx.params('concepts'),
                            artifacts.bias_mask(ctx), 'sanity test')
  s_probs = probe_stage.probe(ctx, sctx.params('explainer'), s_out['hhat'], s_out['hhat_masked'],
                              'sanity probes')
  s_report = probe_stage.explainer_view(ctx, s_probs, s_out['logits_hat'], s_out['logits_masked'])
  result = bias.sanity_summary(probe_stage.intervention_report(ctx), s_report,
                               spec.config.sanity.warn_rank_correlation)
  result['random_accuracy'] = float(metrics.accuracy(s_out['logits'], ctx.data.labels))
  result['randomized'] = mode
  return {'sanity': result}


NODE = SanityNode('sanity', (), 'sanity', trained=False,
                  enabled=lambda config: config.sanity.enabled,
                  evaluators=(evaluate_sanity,))
