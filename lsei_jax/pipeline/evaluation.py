"""Evaluation on the test split: one walk over the stage graph, loading every node
present in the workdir and running its evaluators (the paper's Table 1 / Table 2, the
per-bit analysis, the attribute probes, the verdict and the explainer's view, the
cross-checks, the sanity check). `compute` returns the results (a JSON-able dict) and the
arrays the figures show; `write` turns them into WORKDIR/eval/{metrics.json, *.png,
report.html}; `evaluate` does both."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsei_jax import concept_metrics
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.pipeline import artifacts, graph
from lsei_jax.pipeline.node import Context
from lsei_jax.pipeline.spec import resolve
from lsei_jax.pipeline.stages import concepts as concepts_stage
from lsei_jax.reporting import bias, html_report, plots
from lsei_jax.reporting.report import REPORT_ORDER, TABLE_KEYS  # noqa: F401  (public here too)
from lsei_jax.training import atomic
from lsei_jax.training import workdir as workdir_lib


def load(config, workdir: str, names=None, *, classifier: ClassifierSplit | None = None,
         mesh=None) -> Context:
  """A Context on the test split with the named stages of `workdir` loaded (default: every
  node present there), every checkpoint link checked."""
  spec, test = resolve(config, 'test', classifier=classifier, mesh=mesh, check=False)
  ctx = Context(spec, workdir, test, split='test')
  if names is None:
    names = [n.name for n in graph.GRAPH if n.present(ctx)]
  graph.load_nodes(ctx, names)
  return ctx


def compute(config, workdir: str, *, classifier: ClassifierSplit | None = None, mesh=None
            ) -> tuple[dict, dict]:
  """Every evaluation figure → (result dict, arrays the figures show). Writes nothing
  (`evaluate` runs it under the workdir's lock)."""
  ctx = load(config, workdir, classifier=classifier, mesh=mesh)
  result = {}
  for node in graph.GRAPH:
    if node.present(ctx):
      for evaluator in node.evaluators:
        result.update(evaluator(ctx))
  ordered = {k: result[k] for k in REPORT_ORDER if k in result}
  return dict(ordered, **{k: v for k, v in result.items() if k not in ordered}), ctx.figures


def write(result: dict, figures: dict, eval_dir: str, *, workdir: str = '',
          seeds: dict | None = None) -> None:
  """WORKDIR/eval/{metrics.json, fig3_grid.png, attribution_grid.png, per_bit.png,
  bias_report.png, invariance_grid.png, factor_sweep.png, report.html} from `compute`'s
  output."""
  os.makedirs(eval_dir, exist_ok=True)
  draw = {
      'fig3_grid.png': lambda p: plots.save_grid(
          p, [figures['image'], figures['g_hhat'], figures['g_flip']],
          titles=('original', 'g(h^)', "g(h^')")),
      'attribution_grid.png': lambda p: plots.save_grid(
          p, [figures['attribution_image'], figures['ig'], figures['g_hhat'],
              figures['g_flip']], titles=('image', 'IG', 'g(h^)', "g(h^')")),
      'per_bit.png': lambda p: plots.per_bit_bars(
          p, {'per_class': result['per_bit_change_by_class'],
              'single_bit_change': result['single_bit_change']}),
  }
  if result.get('bias_report'):
    draw['bias_report.png'] = lambda p: plots.bias_bars(p, result['bias_report'],
                                                        result['intervention'])
  if 'invariance' in figures:   # columns: original, D(E(x)), samples; a row per image
    inv = figures['invariance']
    draw['invariance_grid.png'] = lambda p: plots.save_grid(
        p, [inv['original'], inv['reconstruction'], *inv['samples']],
        titles=('original', 'D(E(x))', *[f'sample {i + 1}' for i in range(len(inv['samples']))]))
  if 'factor_sweep' in figures:   # a row per (image, attribute): original, then the sweep
    fs = figures['factor_sweep']
    draw['factor_sweep.png'] = lambda p: plots.sweep_grid(
        p, fs['original'], fs['sweeps'], fs['attributes'], fs['pred'], fs['original_pred'],
        fs['image_pred'])
  for fname, fn in draw.items():
    atomic.write_with(os.path.join(eval_dir, fname), fn)
  atomic.write_json(os.path.join(eval_dir, 'metrics.json'), result)
  html_report.write(os.path.join(eval_dir, 'report.html'), result, eval_dir,
                    task=result.get('task', ''), workdir=workdir, seeds=seeds)
  logging.info('wrote %s', eval_dir)


def evaluate(config, workdir: str, *, classifier: ClassifierSplit | None = None, mesh=None
             ) -> dict:
  """Computes every evaluation figure; writes WORKDIR/eval/{metrics.json, *.png, report.html}.

  classifier: the `ClassifierSplit` the workdir was trained on, when it was given rather
  than trained (default: the one config.classifier.source names, if any).
  """
  with workdir_lib.lock(workdir):
    result, figures = compute(config, workdir, classifier=classifier, mesh=mesh)
    if jax.process_index() == 0:
      write(result, figures, os.path.join(workdir, 'eval'), workdir=workdir)
  return result


def concept_evaluation(config, workdir: str, *, classifier: ClassifierSplit | None = None,
                       mesh=None) -> tuple[dict, np.ndarray]:
  """Table 1 (accuracy, accuracy on ĥ, agreement, % change under toggle-all) and the
  concept-learner metrics of the run in `workdir`, from its classifier and concept learner
  only (no explainer or probe needed) → (results, test codes [N, K])."""
  ctx = load(config, workdir, ['classifier', 'concepts'], classifier=classifier, mesh=mesh)
  out = artifacts.explain(ctx, ctx.classifier, ctx.params('concepts'),
                          jnp.ones((ctx.mods.learner.latent_dim,)), 'concepts')
  res = concepts_stage.table1(out, ctx.data.labels)
  res['concepts'] = concepts_stage.summary(ctx, out, res['accuracy'], res['recon_accuracy'])
  return res, out['code']


def codes_on_test(config, workdir: str, *, classifier: ClassifierSplit | None = None,
                  mesh=None) -> np.ndarray:
  """The concept learner's codes [N, K] of the test images under the run in `workdir`."""
  ctx = load(config, workdir, ['classifier', 'concepts'], classifier=classifier, mesh=mesh)
  return artifacts.codes(ctx, ctx.classifier, ctx.params('concepts'))


def evaluate_seeds(config, workdir: str, other_workdirs, *, classifier=None, mesh=None) -> dict:
  """Evaluates `workdir` and runs of other training seeds; mean ± std of Tables 1 and 2,
  and the concept code's stability: Hungarian-matched |correlation| of the test codes of
  each other run with those of `workdir` (concept_metrics.stability).

  Writes WORKDIR/eval/seeds.json and adds the aggregate to WORKDIR/eval/report.html.
  """
  results = [evaluate(config, wd, classifier=classifier, mesh=mesh)
             for wd in (*other_workdirs, workdir)]
  agg = bias.aggregate_seeds(results, TABLE_KEYS)
  codes = codes_on_test(config, workdir, classifier=classifier, mesh=mesh)
  stab = [concept_metrics.stability(codes, codes_on_test(config, wd, classifier=classifier,
                                                      mesh=mesh)) for wd in other_workdirs]
  agg_out = {'workdirs': [*other_workdirs, workdir], 'figures': agg,
             'concept_stability': {'values': stab,
                                   'mean': float(np.mean(stab)) if stab else None}}
  eval_dir = os.path.join(workdir, 'eval')
  with workdir_lib.lock(workdir):
    if jax.process_index() == 0:
      atomic.write_json(os.path.join(eval_dir, 'seeds.json'), agg_out)
      html_report.write(os.path.join(eval_dir, 'report.html'), results[-1], eval_dir,
                        task=config.data.task, workdir=workdir, seeds=agg)
  return agg_out
