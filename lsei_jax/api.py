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

from lsei_jax import concepts, interventions, models, pipeline
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.data import byo
from lsei_jax.pipeline import evaluation

Array = jax.Array

train = pipeline.train
evaluate = pipeline.evaluate


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
  learner / learner_params: the concept learner (lsei_jax.concepts: its `module` is
  models.DVAE for the paper's kind) and its params.
  """
  config: Any
  workdir: str
  classifier: ClassifierSplit
  learner: concepts.ConceptLearner
  learner_params: Any
  explainer: models.Explainer
  explainer_params: Any
  metrics: dict
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
    return self._jit('encode')(self.learner_params, jnp.asarray(h, jnp.float32))

  def decode(self, bits) -> Array:
    """ĥ = d(z) [B, d] of codes [B, K]."""
    return self._jit('decode')(self.learner_params, jnp.asarray(bits, jnp.float32))

  def render(self, e) -> Array:
    """The explainer's images g(e) [B, H, W, 3] in [0, 1] of embeddings e [B, d]."""
    return self._jit('render')(self.explainer_params, jnp.asarray(e, jnp.float32))

  def head(self, e) -> Array:
    """c2(e) logits [B, C]."""
    return self._jit('head')(self.classifier.params, jnp.asarray(e, jnp.float32))

  def intervene(self, images, mask=None, on_value=None) -> dict[str, Array]:
    """Switches concept units (mask [K] or [B, K]; default all) of each image's code with
    `interventions.intervene`: the DVAE's bits are flipped; a real-valued code's units go
    on → 0, off → on_value [K] (default the 0.9 quantile of each unit's activations in this
    batch).

    Returns h, bits, bits_after, hhat, hhat_after, logits (c2(ĥ)), logits_after (c2(ĥ')),
    image (g(ĥ)) and image_after (g(ĥ')).
    """
    h = self.embed(images)
    z = self.encode(h)
    mask = interventions.flip_all_mask(z.shape[-1]) if mask is None else jnp.asarray(mask)
    if on_value is None:
      on_value = 1.0 if self.learner.binary else interventions.on_values(np.asarray(z))
    z_after = interventions.intervene(z, mask, jnp.asarray(on_value, z.dtype))
    hhat, hhat_after = self.decode(z), self.decode(z_after)
    return {'h': h, 'bits': z, 'bits_after': z_after, 'hhat': hhat, 'hhat_after': hhat_after,
            'logits': self.head(hhat), 'logits_after': self.head(hhat_after),
            'image': self.render(hhat), 'image_after': self.render(hhat_after)}

  def _jit(self, name: str):
    """The jit-compiled function `name` (compiled once per Run)."""
    if not self._fns:
      c, g = self.classifier, self.explainer
      self._fns.update({
          'classify': jax.jit(lambda p, x: c.head(p, c.embed(p, x))),
          'embed': jax.jit(c.embed), 'head': jax.jit(c.head),
          'encode': jax.jit(self.learner.encode), 'decode': jax.jit(self.learner.decode),
          'render': jax.jit(lambda p, e: jax.nn.sigmoid(g.apply({'params': p}, e))),
      })
    return self._fns[name]


def load_run(config, workdir: str, *, classifier: ClassifierSplit | None = None,
             mesh=None) -> Run:
  """The trained classifier (or the given one), concept learner and explainer of `workdir`,
  every checkpoint link checked as in evaluation."""
  ctx = evaluation.load(config, workdir, ['classifier', 'concepts', 'explainer'],
                        classifier=classifier, mesh=mesh)
  path = os.path.join(workdir, 'eval', 'metrics.json')
  metrics = json.load(open(path)) if os.path.exists(path) else {}
  host = lambda tree: jax.tree.map(np.asarray, tree)
  split = ctx.classifier
  return Run(config, workdir, dataclasses.replace(split, params=host(split.params)),
             ctx.mods.learner, host(ctx.params('concepts')), ctx.mods.explainer,
             host(ctx.params('explainer')), metrics)


def explain(classifier: ClassifierSplit | None, data: dict | None = None, *, config,
            workdir: str, mesh=None) -> Run:
  """Trains what `classifier` needs (concept learner, explainers, probes), evaluates,
  returns the run.

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
