"""Table 1 and Table 2 of the paper on the unbiased test split, from a trained workdir."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsei_jax import checkpoints, fisher, interventions, metrics, parallel, report, steps
from lsei_jax import data as data_lib
from lsei_jax.pipeline import (Models, generator_apply, head_apply, mean_information,
                               signature, template_state)
from lsei_jax.trainer import load_complete


def _outputs_fn(mods: Models, mesh):
  """(clf, dvae params), {'image': uint8} → logits of c(x), c2(ĥ), c2(ĥ'), ĥ, ĥ' (flip-all)."""
  def f(params, batch):
    clf_p, dvae_p = params
    x = batch['image'].astype(jnp.float32) / 255.0
    h = mods.classifier.apply({'params': clf_p}, x, method='embed')
    head = lambda e: mods.classifier.apply({'params': clf_p}, e, method='head')
    z, hhat = steps.encode_decode(mods.dvae, dvae_p, h)
    z_flip = interventions.intervene(z, interventions.flip_all_mask(z.shape[-1]))
    hhat_flip = mods.dvae.apply({'params': dvae_p}, z_flip, method='decode')
    return {'logits': head(h), 'logits_hat': head(hhat), 'logits_flip': head(hhat_flip),
            'hhat': hhat, 'hhat_flip': hhat_flip}
  return parallel.data_parallel_apply(f, mesh)


def load_stages(config, workdir: str, mods: Models, mesh) -> dict[str, tuple]:
  """Final (state, meta) of every trained stage, with their links checked."""
  out = {}
  for name in ('classifier', 'dvae', 'explainer', 'explainer_noreg'):
    if name == 'explainer_noreg' and not os.path.isdir(os.path.join(workdir, name)):
      continue
    out[name] = load_complete(workdir, name, template_state(config, mods, name, mesh),
                              signature(config, name))
  link = {'classifier': checkpoints.identity(out['classifier'][1])}
  checkpoints.check_upstream('dvae', f'{workdir}/dvae', out['dvae'][1].get('upstream', {}), link)
  link['dvae'] = checkpoints.identity(out['dvae'][1])
  for name in ('explainer', 'explainer_noreg'):
    if name in out:
      checkpoints.check_upstream(name, f'{workdir}/{name}', out[name][1].get('upstream', {}),
                                 link)
  return out


def evaluate(config, workdir: str, *, mesh=None) -> dict:
  """Computes the paper's tables, writes WORKDIR/eval/{metrics.json, fig3_grid.png}."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch(config.eval.batch_size, mesh, 'config.eval.batch_size')
  mods = Models(*steps.build_models(config))
  stages = load_stages(config, workdir, mods, mesh)
  clf_p, dvae_p = stages['classifier'][0].params, stages['dvae'][0].params
  test = data_lib.load(config.data, 'test')
  out = parallel.map_in_batches(_outputs_fn(mods, mesh), (clf_p, dvae_p),
                                {'image': test.images}, config.eval.batch_size, mesh,
                                'eval test')
  labels = test.labels
  result = {
      'split': 'test (unbiased)', 'num_examples': len(test),
      'accuracy': float(metrics.accuracy(out['logits'], labels)),
      'recon_accuracy': float(metrics.recon_accuracy(out['logits_hat'], labels)),
      'agreement': float(metrics.agreement(out['logits_hat'], out['logits'])),
      'flip_all_change': float(metrics.change_rate(out['logits_hat'], out['logits_flip'])),
  }

  # Table 2: information of g and c2 at ĥ, with the same σ and perturbation keys.
  ec = config.eval
  n = min(ec.fisher_examples, len(test))
  hhat = out['hhat'][:n]
  sigma = parallel.replicate(
      jnp.asarray(config.explainer.sigma_scale * hhat.std(0, ddof=1), jnp.float32), mesh)
  key = jax.random.key(config.seed + 101)
  info_c2 = mean_information(head_apply(mods), 'ce', clf_p, hhat, sigma, key,
                             ec.fisher_samples, ec.batch_size, mesh, 'I(c2)')
  for name, suffix in (('explainer', ''), ('explainer_noreg', '_noreg')):
    if name in stages:
      info_g = mean_information(generator_apply(mods), 'bce', stages[name][0].params, hhat,
                                sigma, key, ec.fisher_samples, ec.batch_size, mesh,
                                f'I(g) {name}')
      result['info_cosine' + suffix] = float(fisher.similarity(jnp.asarray(info_g),
                                                               jnp.asarray(info_c2)))

  eval_dir = os.path.join(workdir, 'eval')
  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    k = ec.grid_rows
    g = lambda e: np.asarray(jax.nn.sigmoid(
        mods.explainer.apply({'params': stages['explainer'][0].params}, e)))
    report.save_grid(os.path.join(eval_dir, 'fig3_grid.png'),
                     [test.images[:k] / 255.0, g(out['hhat'][:k]), g(out['hhat_flip'][:k])],
                     titles=('original', 'g(h^)', "g(h^')"))
    with open(os.path.join(eval_dir, 'metrics.json'), 'w') as f:
      json.dump(result, f, indent=2)
    logging.info('wrote %s', eval_dir)
  return result
