"""The library entry points for a notebook: train, evaluate, load a run, explain in one call.

  split = lsei_jax.split_at(my_module, my_variables, 'pool', example=images[:8], train=False)
  run = lsei_jax.explain(split, {'images': images, 'attributes': attrs,
                                 'attribute_names': names, 'labels': labels},
                         config=config, workdir='runs/mine')
  run.metrics['flip_all_change'], run.intervene(images[:4])['image_after']
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import concepts, interventions, models
from lsei_jax.reporting import evaluation
from lsei_jax.training import parallel, pipeline, steps
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.data import byo

Array = jax.Array

train = pipeline.train
evaluate = evaluation.evaluate


def _float_images(images) -> Array:
  """uint8 [0, 255] or float [0, 1] images [B, H, W, 3] → float32 [0, 1]."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [B, H, W, 3], got shape {tuple(images.shape)}')
  return images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else \
      images.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: the classifier, the concept learner (the DVAE by default) and the
  explainer g, as plain functions.

  Every method takes and returns arrays with a leading batch axis and is jit-compiled.
  metrics: WORKDIR/eval/metrics.json when the run was evaluated, else {}.
  dvae / dvae_params: the concept learner's module and params; learner: the learner
  (lsei_jax.concepts; None means the paper's DVAE in `dvae`).
  """
  config: Any
  workdir: str
  classifier: ClassifierSplit
  dvae: models.DVAE
  dvae_params: Any
  explainer: models.Explainer
  explainer_params: Any
  metrics: dict
  learner: Any = None
  _fns: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def classify(self, images) -> Array:
    """Logits [B, C] of the classifier c(x)."""
    return self._jit('classify')(self.classifier.params, _float_images(images))

  def embed(self, images) -> Array:
    """h = c1(x) [B, d]."""
    return self._jit('embed')(self.classifier.params, _float_images(images))

  def encode(self, h) -> Array:
    """Concept code [B, K]: the DVAE's bits z = 1[l(h) > 0] (float32 0/1), or the learner's
    non-negative code."""
    return self._jit('encode')(self.dvae_params, jnp.asarray(h, jnp.float32))

  def decode(self, bits) -> Array:
    """ĥ = d(z) [B, d] of codes [B, K]."""
    return self._jit('decode')(self.dvae_params, jnp.asarray(bits, jnp.float32))

  def render(self, e) -> Array:
    """The explainer's images g(e) [B, H, W, 3] in [0, 1] of embeddings e [B, d]."""
    return self._jit('render')(self.explainer_params, jnp.asarray(e, jnp.float32))

  def head(self, e) -> Array:
    """c2(e) logits [B, C]."""
    return self._jit('head')(self.classifier.params, jnp.asarray(e, jnp.float32))

  def intervene(self, images, mask=None, on_value=None) -> dict[str, Array]:
    """Flips concept bits (mask [K] or [B, K]; default all) of each image's code; for a
    real-valued code, toggles the units (concepts.toggle: on → 0, off → on_value [K],
    default the 0.9 quantile of each unit's activations in this batch).

    Returns h, bits, bits_after, hhat, hhat_after, logits (c2(ĥ)), logits_after (c2(ĥ')),
    image (g(ĥ)) and image_after (g(ĥ')).
    """
    h = self.embed(images)
    z = self.encode(h)
    mask = interventions.flip_all_mask(z.shape[-1]) if mask is None else jnp.asarray(mask)
    if self.learner is None or self.learner.binary:
      z_after = interventions.intervene(z, mask)
    else:
      on = concepts.on_values(np.asarray(z)) if on_value is None else on_value
      z_after = concepts.toggle(z, mask, jnp.asarray(on, z.dtype))
    hhat, hhat_after = self.decode(z), self.decode(z_after)
    return {'h': h, 'bits': z, 'bits_after': z_after, 'hhat': hhat, 'hhat_after': hhat_after,
            'logits': self.head(hhat), 'logits_after': self.head(hhat_after),
            'image': self.render(hhat), 'image_after': self.render(hhat_after)}

  def _jit(self, name: str):
    """The jit-compiled function `name` (compiled once per Run)."""
    if not self._fns:
      c, dvae, g = self.classifier, self.dvae, self.explainer
      self._fns.update({
          'classify': jax.jit(lambda p, x: c.head(p, c.embed(p, x))),
          'embed': jax.jit(c.embed), 'head': jax.jit(c.head),
          'encode': jax.jit(lambda p, h: steps.hard_code(
              dvae.apply({'params': p}, h, method='encode'))) if self.learner is None
          else jax.jit(self.learner.encode),
          'decode': jax.jit(lambda p, z: dvae.apply({'params': p}, z, method='decode'))
          if self.learner is None else jax.jit(self.learner.decode),
          'render': jax.jit(lambda p, e: jax.nn.sigmoid(g.apply({'params': p}, e))),
      })
    return self._fns[name]


def load_run(config, workdir: str, *, classifier: ClassifierSplit | None = None,
             mesh=None) -> Run:
  """The trained classifier (or the given one), DVAE and explainer of `workdir`, every
  checkpoint link checked as in evaluation."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  classifier = pipeline.resolve_classifier(config, classifier, mesh)
  split, identities, mods, _ = evaluation.load_classifier(config, workdir, mesh, classifier,
                                                          num_attributes=None)
  stages = evaluation.load_stages(config, workdir, mods, mesh, ['dvae', 'explainer'],
                                  identities)
  path = os.path.join(workdir, 'eval', 'metrics.json')
  metrics = json.load(open(path)) if os.path.exists(path) else {}
  host = lambda tree: jax.tree.map(np.asarray, tree)
  return Run(config, workdir, dataclasses.replace(split, params=host(split.params)),
             mods.dvae, host(stages['dvae'][0].params), mods.explainer,
             host(stages['explainer'][0].params), metrics, mods.learner)


def explain(classifier: ClassifierSplit | None, data: dict | None = None, *, config,
            workdir: str, mesh=None) -> Run:
  """Trains what `classifier` needs (DVAE, explainers, probes), evaluates, returns the run.

  data: None to use config.data, or arrays {'images' [N,H,W,3] uint8, 'attributes' [N,A],
  'attribute_names' [A], and 'labels' [N] (or a 'task' naming an attribute column); an
  optional 'split' [N] of 'train'/'test'}; the test split is otherwise
  config.data.test_fraction (default 0.2) of it. classifier None trains
  config.model.classifier first. config: e.g. configs/shapes.py's get_config().
  """
  config = config.copy_and_resolve_references()
  if data is not None:
    key = f'lsei_jax.explain:{os.path.abspath(workdir)}'
    byo.check_explain_data(data)  # every array agrees on N, before any config is built
    images = np.asarray(data['images'])
    byo.register_arrays(key, images, np.asarray(data['attributes']), data['attribute_names'],
                        data.get('labels'), data.get('split'))
    with config.unlocked():
      config.data = dict(name='numpy', arrays=key, image_size=int(images.shape[1]),
                         task=data.get('task', 'label'),
                         test_fraction=float(config.data.get('test_fraction', 0.2)),
                         validation_fraction=0.0, seed=int(config.data.get('seed', 0)))
  pipeline.train(config, workdir, classifier=classifier, mesh=mesh)
  evaluation.evaluate(config, workdir, classifier=classifier, mesh=mesh)
  return load_run(config, workdir, classifier=classifier, mesh=mesh)
