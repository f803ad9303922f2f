"""Evaluation on the unbiased test split: the paper's Table 1 / Table 2, per-bit analysis,
attribute probes, the bias report and the model-randomisation sanity check.

`compute` returns the results (a JSON-able dict) and the few arrays the figures show;
`write` turns them into WORKDIR/eval/{metrics.json, *.png, report.html}; `evaluate` does
both. Stages are loaded by walking `pipeline.GRAPH`.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsei_jax import (compile_cache, concept_metrics, concepts, errors, fisher, interventions,
                      metrics, reliance)
from lsei_jax.reporting import bias, crosscheck, html_report, plots
from lsei_jax.training import atomic, checkpoints, parallel, pipeline, validate
from lsei_jax import data as data_lib
from lsei_jax.training import workdir as workdir_lib
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.training.pipeline import (Models, build, generator_apply, mean_information,
                               random_classifier_state, restore_target, signature, stream)
from lsei_jax.reporting.report import TABLE_KEYS  # noqa: F401  (public here too)
from lsei_jax.training.trainer import check_untrained, load_complete


@functools.lru_cache(maxsize=16)
def _outputs_fn(embed, head_fn, mods: Models, mesh, add_error: bool = False):
  """((clf, learner params, mask [K], on_value [K]), {'image': uint8}) → per-example arrays
  of the classifier embed / head_fn (a ClassifierSplit's functions) and the concept learner.

  Interventions toggle units (concepts.toggle: z XOR m for the DVAE's bits; on → 0, off →
  on_value for real-valued codes), with add_error the reconstruction error added back.
  logits of c(x), c2(ĥ), c2(ĥ') for toggle-all; h, code, ĥ, ĥ' (toggle-all) and ĥ_m
  (toggle mask) with c2(ĥ_m); decisive [b, K]: which single-unit toggles change c2(ĥ)'s
  prediction; ĥ_dec (every decisive unit of the sample toggled) with c2(ĥ_dec).
  """
  learner = mods.learner

  def f(params, batch):
    clf_p, lp, mask, on = params
    x = batch['image'].astype(jnp.float32) / 255.0
    h = embed(clf_p, x)
    head = lambda e: head_fn(clf_p, e)
    decode = lambda z: learner.decode(lp, z)
    z = learner.encode(lp, h)
    hhat = decode(z)
    edit = lambda m: concepts.intervened(decode, h, z, concepts.toggle(z, m, on), add_error)
    hhat_flip = edit(jnp.ones(z.shape[-1]))
    hhat_masked = edit(mask)
    decisive = concepts.decisive_units(z, decode, head, on)
    # Per sample, the units whose single toggle changes the prediction, toggled together.
    hhat_decisive = edit(decisive)
    return {'logits': head(h), 'logits_hat': head(hhat), 'logits_flip': head(hhat_flip),
            'h': h, 'code': z, 'hhat': hhat, 'hhat_flip': hhat_flip,
            'hhat_masked': hhat_masked, 'logits_masked': head(hhat_masked),
            'hhat_decisive': hhat_decisive, 'logits_decisive': head(hhat_decisive),
            'decisive': decisive}
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def _codes_fn(embed, mods: Models, mesh):
  """((clf, learner params), {'image': uint8}) → codes [b, K]."""
  learner = mods.learner
  return parallel.data_parallel_apply(
      lambda p, b: learner.encode(p[1], embed(p[0], b['image'].astype(jnp.float32) / 255.0)),
      mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def _probe_fn(mods: Models, mesh):
  """((g, probe params), {'before', 'after': ĥ [b,d], 'image': uint8}) → probe probabilities
  [b, A] of g(before), g(after) and of the real image."""
  def f(params, batch):
    g_p, probe_p = params
    probe = lambda img: jax.nn.sigmoid(mods.probe.apply({'params': probe_p}, img))
    g = lambda e: jax.nn.sigmoid(mods.explainer.apply({'params': g_p}, e))
    real = batch['image'].astype(jnp.float32) / 255.0
    return {'before': probe(g(batch['before'])), 'after': probe(g(batch['after'])),
            'real': probe(real)}
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=32)
def _jit(fn):
  """jax.jit(fn), built once per function: small computations on a few rows, which would
  otherwise compile op by op."""
  return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _generate_fn(mods: Models):
  """(g params, ĥ [b, d]) → sigmoid(g(ĥ)) [b, H, W, 3] (jitted: eagerly, every op of g
  would compile on its own)."""
  g = generator_apply(mods)
  return jax.jit(lambda p, e: jax.nn.sigmoid(g(p, e)))


@functools.lru_cache(maxsize=16)
def _classify_apply(embed, head, mesh):
  """(classifier params, {'image': uint8 [b,H,W,3]}) → logits [b, C] = head(embed(x))."""
  return parallel.data_parallel_apply(
      lambda p, b: head(p, embed(p, b['image'].astype(jnp.float32) / 255.0)),
      mesh, parallel.convnet_compiler_options())


def classify_fn(split: ClassifierSplit, batch_size: int, mesh):
  """uint8 images [N, H, W, 3] → logits of c(x) [N, C] (NumPy, in batches)."""
  fn = _classify_apply(split.embed, split.head, mesh)
  return lambda images: parallel.map_in_batches(fn, split.params, {'image': images},
                                                batch_size, mesh)


def ground_truth_reliance(config, split: ClassifierSplit, test, mesh) -> dict | None:
  """Reliance of c on each attribute from counterfactual test images (None where the data
  cannot render them): {name: {flip_rate, mean_prob_change, num_examples}}."""
  render = data_lib.counterfactual_renderer(config.data, 'test')
  if render is None:
    return None
  return reliance.reliance_by_attribute(
      classify_fn(split, config.eval.batch_size, mesh), test.images, render,
      test.attribute_names, batch_size=max(len(test), 1))


def load_stages(config, workdir: str, mods: Models, mesh, names, identities=None
                ) -> dict[str, tuple]:
  """Final (state, meta) of the named stages, with every upstream link (pipeline.GRAPH)
  checked; `identities` adds upstream identities not loaded here (a given classifier)."""
  d = mods.dvae.hidden_dim
  out = {name: load_complete(workdir, name, restore_target(config, mods, name, mesh, d),
                             signature(config, name)) for name in names}
  ident = dict(identities or {}, **{n: checkpoints.identity(m) for n, (_, m) in out.items()})
  for name, (_, meta) in out.items():
    pipeline.check_link(name, meta, pipeline.link_of(name, ident), workdir)
  return out


def load_classifier(config, workdir: str, mesh, classifier: ClassifierSplit | None,
                    num_attributes: int):
  """(split, identities, mods, num_classes) of the classifier a workdir explains: its
  trained checkpoint, or the given `classifier` after checking its fingerprint."""
  size = config.data.image_size
  if classifier is None:
    pipeline.check_classifier_workdir(workdir, None)
    mods = build(config, num_attributes)
    state, meta = load_stages(config, workdir, mods, mesh, ['classifier'])['classifier']
    return (pipeline.builtin_split(mods, state.params),
            {'classifier': checkpoints.identity(meta)}, mods,
            config.model.classifier.num_classes)
  d, num_classes = classifier.dims((size, size, 3))
  given = pipeline.given_identity(classifier, config)
  pipeline.check_classifier_workdir(workdir, given)
  return classifier, {'classifier': given}, build(config, num_attributes, d), num_classes


def on_value(config, split, mods: Models, mesh, learner_params, test) -> jax.Array:
  """[K]: the value a unit switched on takes: 1 for boolean codes, else the
  config.model.concepts.on_quantile of its nonzero activations on the test images."""
  if mods.learner.binary:
    return jnp.ones((mods.learner.latent_dim,), jnp.float32)
  codes = parallel.map_in_batches(_codes_fn(split.embed, mods, mesh),
                                  (split.params, learner_params), {'image': test.images},
                                  config.eval.batch_size, mesh, 'codes')
  return jnp.asarray(concepts.on_values(codes, _concepts_cfg(config).get('on_quantile', 0.9)))


def _concepts_cfg(config):
  return config.model.get('concepts', None) or {}


def _explain(config, split, mods, mesh, dvae_params, test, mask, desc) -> dict:
  """Per-example outputs of `_outputs_fn` on the test images for one (classifier, concept
  learner)."""
  on = on_value(config, split, mods, mesh, dvae_params, test)
  fn = _outputs_fn(split.embed, split.head, mods, mesh,
                   bool(_concepts_cfg(config).get('add_error', False)))
  return parallel.map_in_batches(fn, (split.params, dvae_params, mask, on),
                                 {'image': test.images}, config.eval.batch_size, mesh, desc)


def concept_summary(split, mods: Models, out: dict, test, accuracy: float,
                    recon_accuracy: float) -> dict:
  """The concept-learner metrics (concept_metrics.summary) and recovery of the test
  split's annotated attributes, from `_explain`'s outputs."""
  hbar = out['h'].mean(0, keepdims=True)
  mean_pred = int(np.argmax(np.asarray(_jit(split.head)(split.params, jnp.asarray(hbar))),
                            -1)[0])
  acc_mean = float(np.mean(test.labels == mean_pred))
  return {'kind': mods.learner.kind,
          **concept_metrics.summary(out['h'], out['hhat'], out['code'], acc_h=accuracy,
                                    acc_hhat=recon_accuracy, acc_mean=acc_mean,
                                    decisive=out['decisive']),
          'factor_recovery': concept_metrics.factor_recovery(out['code'], test.attributes,
                                                              test.attribute_names)}


def _probe(config, mods, mesh, g_params, probe_params, test, before, after, desc) -> dict:
  return parallel.map_in_batches(_probe_fn(mods, mesh), (g_params, probe_params),
                                 {'before': before, 'after': after, 'image': test.images},
                                 config.eval.batch_size, mesh, desc)


def compute(config, workdir: str, *, classifier: ClassifierSplit | None = None, mesh=None
            ) -> tuple[dict, dict]:
  """Every evaluation figure → (result dict, arrays the figures show). Writes nothing
  (`evaluate` runs it under the workdir's lock)."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  with errors.as_user_errors():
    parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  classifier = pipeline.resolve_classifier(config, classifier, mesh)
  test = data_lib.load(config.data, 'test')
  split, identities, mods, num_classes = load_classifier(config, workdir, mesh, classifier,
                                                         len(test.attribute_names))
  validate.check_data(test, config, 'test', None if classifier is None else num_classes)
  # Every stage after the classifier, in graph order (the λ = 0 explainer when trained).
  names = [sd.name for sd in pipeline.GRAPH if sd.name != 'classifier' and (
      sd.name != 'explainer_noreg' or os.path.isdir(os.path.join(workdir, sd.name)))]
  stages = load_stages(config, workdir, mods, mesh, names, identities)
  clf_p = split.params
  num_bits = mods.learner.latent_dim
  bits = tuple(config.eval.bias_bits)
  mask = (interventions.bit_set_mask(num_bits, list(bits)) if bits
          else interventions.flip_all_mask(num_bits))
  out = _explain(config, split, mods, mesh, stages['dvae'][0].params, test, mask, 'eval test')
  labels = test.labels
  result = {
      'split': 'test (unbiased)', 'num_examples': len(test), 'task': test.task,
      'num_classes': num_classes, 'embed_dim': int(out['h'].shape[1]),
      'classifier': identities['classifier'],
      'accuracy': float(metrics.accuracy(out['logits'], labels)),
      'recon_accuracy': float(metrics.recon_accuracy(out['logits_hat'], labels)),
      'agreement': float(metrics.agreement(out['logits_hat'], out['logits'])),
      'flip_all_change': float(metrics.change_rate(out['logits_hat'], out['logits_flip'])),
  }
  result['concepts'] = concept_summary(split, mods, out, test, result['accuracy'],
                                       result['recon_accuracy'])

  # Table 2: information of g and c2 at ĥ, with the same σ and perturbation keys.
  ec = config.eval
  n = min(ec.fisher_examples, len(test))
  hhat = out['hhat'][:n]
  sigma = parallel.replicate(
      fisher.batch_sigma(jnp.asarray(hhat), config.explainer.sigma_scale), mesh)
  key = stream(config.seed, 'eval/info')
  info_c2 = mean_information(split.head, 'ce', clf_p, hhat, sigma, key,
                             ec.fisher_samples, ec.batch_size, mesh, 'I(c2)')
  for name, suffix in (('explainer', ''), ('explainer_noreg', '_noreg')):
    if name in stages:
      info_g = mean_information(generator_apply(mods), 'bce', stages[name][0].params, hhat,
                                sigma, key, ec.fisher_samples, ec.batch_size, mesh,
                                f'I(g) {name}')
      result['info_cosine' + suffix] = float(_jit(fisher.similarity)(jnp.asarray(info_g),
                                                                    jnp.asarray(info_c2)))

  # Per-bit analysis: which single flips change c2(ĥ)'s prediction.
  pred = np.argmax(out['logits_hat'], -1)
  per_bit = bias.per_bit_summary(out['decisive'], pred, num_classes)
  result['per_bit_change'] = per_bit['per_bit_change']
  result['single_bit_change'] = per_bit['single_bit_change']
  result['per_bit_change_by_class'] = per_bit['per_class']

  # Attribute probes and the bias report: what changes between g(ĥ) and g(ĥ_m).
  g_p, probe_p = stages['explainer'][0].params, stages['probe'][0].params
  probs = _probe(config, mods, mesh, g_p, probe_p, test, out['hhat'], out['hhat_masked'],
                 'probes')
  attrs = test.attributes
  result['probe_accuracy'] = {
      n: {'real': float(np.mean((probs['real'][:, a] > 0.5) == attrs[:, a])),
          'generated': float(np.mean((probs['before'][:, a] > 0.5) == attrs[:, a]))}
      for a, n in enumerate(test.attribute_names)}
  verb, unit = ('flip', 'bits') if mods.learner.binary else ('toggle', 'units')
  result['intervention'] = f'{verb} all {unit}' if not bits else f'{verb} {unit} {list(bits)}'
  readable = [result['probe_accuracy'][n]['real'] for n in test.attribute_names]
  # The verdict: how the classifier's own predictions depend on each attribute over the
  # test split (benchmarks/truthfulness.py: this is what matches the ground truth).
  verdict = lambda logits: bias.prediction_association(
      np.argmax(logits, -1), test.attributes, test.attribute_names, test.task, num_classes,
      level=ec.ci_level, min_effect=ec.get('min_effect', 0.05),
      max_hidden=ec.get('max_hidden', 0.25))
  result['bias_report'] = verdict(out['logits'])
  # The explainer's view: attribute shifts between g(ĥ) and g(ĥ'), gated; shown beside the
  # verdict, never as it (on the benchmark it flags unused attributes, README).
  report = lambda p, logits_hat, logits_after: bias.reliance_report(
      p['before'], p['after'], np.argmax(logits_hat, -1), np.argmax(logits_after, -1),
      test.attribute_names, test.task, num_classes, readable,
      min_probe_accuracy=ec.get('min_probe_accuracy', 0.75),
      min_shift=ec.get('min_shift', 0.05), level=ec.ci_level)
  result['intervention_report'] = report(probs, out['logits_hat'], out['logits_masked'])
  # A property of the training data, not of the classifier: shown apart from the report.
  train_labels, train_attributes = data_lib.load_annotations(config.data, 'train')
  result['data_association'] = bias.label_association(train_labels, train_attributes,
                                                      test.attribute_names, num_classes)

  # Ground truth, where the data can be re-rendered with one attribute flipped.
  result['reliance'] = ground_truth_reliance(config, split, test, mesh)

  # Cross-check with baselines: TCAV of each attribute on the same layer, and whether the
  # input attributions depend on the trained weights at all.
  head = lambda e: split.head(clf_p, e)
  result['tcav'] = crosscheck.tcav_entries(stream(config.seed, 'eval/tcav'), head, out['h'],
                                           test.attributes, labels, test.attribute_names,
                                           ec.tcav, split=split)
  ka = ec.attribution.images
  pred_c = np.argmax(out['logits'][:ka], -1)
  x_a = test.images[:ka].astype(np.float32) / 255.0
  # Cascading re-initialisation needs the module's own initialisers: the config's classifier.
  # A given one gets the cascade's top-layer step, with the sanity check's random head.
  given = classifier is not None
  mode = (pipeline.sanity_mode(config, given) if config.sanity.enabled
          else 'head' if given else 'init')
  rand = None if mode == 'init' else pipeline.resolve_classifier(
      config, pipeline.sanity_classifier(config, split,
                                         data_lib.load(config.data, 'train').images), mesh)
  if classifier is None:
    result['attribution_sanity'] = crosscheck.attribution_sanity(
        mods.classifier, clf_p['params'], x_a, pred_c, stream(config.seed, 'eval/attribution'),
        ec.attribution)
  else:
    result['attribution_sanity'] = crosscheck.head_randomization(split, rand, x_a, pred_c,
                                                                 ec.attribution)

  # Model randomisation: the same report over a randomised classifier.
  if config.sanity.enabled:
    sdir = os.path.join(workdir, 'sanity')
    pipeline.check_sanity_workdir(sdir, mode)
    if mode == 'init':
      s_split, s_ident, _, _ = load_classifier(config, sdir, mesh, None, len(test.attribute_names))
      # The stored random classifier must be the one this config makes, never a trained one.
      s_meta = load_stages(config, sdir, mods, mesh, ['classifier'])['classifier'][1]
      check_untrained(f'{sdir}/classifier', 'classifier', s_meta,
                      checkpoints.fingerprint(random_classifier_state(config, mods, mesh).params))
    else:
      s_split, s_ident, _, _ = load_classifier(config, sdir, mesh, rand, len(test.attribute_names))
    s_stages = load_stages(config, sdir, mods, mesh, ['dvae', 'explainer'], s_ident)
    s_out = _explain(config, s_split, mods, mesh, s_stages['dvae'][0].params, test, mask,
                     'sanity test')
    # What the randomisation tests is the explanation the DVAE and g produce (the explainer's
    # view), read by the same probes. The verdict needs no such check: it is computed from
    # the classifier's own predictions, so a random classifier changes it by construction.
    s_probs = _probe(config, mods, mesh, s_stages['explainer'][0].params, probe_p, test,
                     s_out['hhat'], s_out['hhat_masked'], 'sanity probes')
    s_report = report(s_probs, s_out['logits_hat'], s_out['logits_masked'])
    result['sanity'] = bias.sanity_summary(result['intervention_report'], s_report,
                                           config.sanity.warn_rank_correlation)
    result['sanity']['random_accuracy'] = float(metrics.accuracy(s_out['logits'], labels))
    result['sanity']['randomized'] = mode
  else:
    result['sanity'] = None

  k = ec.grid_rows
  g = lambda e: np.asarray(_generate_fn(mods)(g_p, e))
  figures = {'image': test.images[:k] / 255.0, 'g_hhat': g(out['hhat'][:k]),
             'g_flip': g(out['hhat_flip'][:k]), 'attribution_image': x_a[:k],
             'ig': crosscheck.ig_heatmaps(split, x_a[:k], pred_c[:k], ec.attribution.ig_steps,
                                          model=None if given else mods.classifier)}
  return result, figures


def write(result: dict, figures: dict, eval_dir: str, *, workdir: str = '',
          seeds: dict | None = None) -> None:
  """WORKDIR/eval/{metrics.json, fig3_grid.png, attribution_grid.png, per_bit.png,
  bias_report.png, report.html} from `compute`'s output."""
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
  compile_cache.enable()  # library use gets the cache too, not only the CLI
  mesh = parallel.make_mesh() if mesh is None else mesh
  with errors.as_user_errors():
    parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  validate.check_config(config)
  with workdir_lib.lock(workdir):
    result, figures = compute(config, workdir, classifier=classifier, mesh=mesh)
    if jax.process_index() == 0:
      write(result, figures, os.path.join(workdir, 'eval'), workdir=workdir)
  return result


def _learner_run(config, workdir: str, classifier, mesh) -> tuple:
  """(split, mods, concept learner state, test split, mesh) of the run in `workdir`."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  classifier = pipeline.resolve_classifier(config, classifier, mesh)
  test = data_lib.load(config.data, 'test')
  split, identities, mods, _ = load_classifier(config, workdir, mesh, classifier,
                                               len(test.attribute_names))
  state = load_stages(config, workdir, mods, mesh, ['dvae'], identities)['dvae'][0]
  return split, mods, state, test, mesh


def concept_evaluation(config, workdir: str, *, classifier: ClassifierSplit | None = None,
                       mesh=None) -> tuple[dict, np.ndarray]:
  """Table 1 (accuracy, accuracy on ĥ, agreement, % change under toggle-all) and the
  concept-learner metrics of the run in `workdir`, from its classifier and concept learner
  only (no explainer or probe needed) → (results, test codes [N, K])."""
  split, mods, state, test, mesh = _learner_run(config, workdir, classifier, mesh)
  out = _explain(config, split, mods, mesh, state.params, test,
                 jnp.ones((mods.learner.latent_dim,)), 'concepts')
  res = {'accuracy': float(metrics.accuracy(out['logits'], test.labels)),
         'recon_accuracy': float(metrics.recon_accuracy(out['logits_hat'], test.labels)),
         'agreement': float(metrics.agreement(out['logits_hat'], out['logits'])),
         'flip_all_change': float(metrics.change_rate(out['logits_hat'], out['logits_flip']))}
  res['concepts'] = concept_summary(split, mods, out, test, res['accuracy'],
                                    res['recon_accuracy'])
  return res, out['code']


def codes_on_test(config, workdir: str, *, classifier: ClassifierSplit | None = None,
                  mesh=None) -> np.ndarray:
  """The concept learner's codes [N, K] of the test images under the run in `workdir`."""
  split, mods, state, test, mesh = _learner_run(config, workdir, classifier, mesh)
  return parallel.map_in_batches(_codes_fn(split.embed, mods, mesh), (split.params, state.params),
                                 {'image': test.images}, config.eval.batch_size, mesh, 'codes')


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
