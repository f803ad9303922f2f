"""What several evaluators read, computed once per evaluation: the per-example outputs of
the classifier and the concept learner on the test images (one jitted pass), the attribute
probes' readings of g(ĥ) and g(ĥ'), and the classifier on raw images."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import data as data_lib, interventions, reliance
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.pipeline.node import Context
from lsei_jax.training import parallel


@functools.lru_cache(maxsize=16)
def _outputs_fn(embed, head_fn, learner, mesh, add_error: bool = False):
  """((clf, learner params, mask [K], on_value [K]), {'image': uint8}) → per-example arrays
  of the classifier embed / head_fn (a ClassifierSplit's functions) and the concept learner.

  Interventions switch units (interventions.intervene: z XOR m for the DVAE's bits; on → 0,
  off → on_value for real-valued codes), with add_error the reconstruction error added back.
  logits of c(x), c2(ĥ), c2(ĥ') for switch-all; h, code, ĥ, ĥ' (switch-all) and ĥ_m
  (switch mask) with c2(ĥ_m); decisive [b, K]: which single-unit switches change c2(ĥ)'s
  prediction; ĥ_dec (every decisive unit of the sample switched) with c2(ĥ_dec).
  """
  def f(params, batch):
    clf_p, lp, mask, on = params
    x = batch['image'].astype(jnp.float32) / 255.0
    h = embed(clf_p, x)
    head = lambda e: head_fn(clf_p, e)
    decode = lambda z: learner.decode(lp, z)
    z = learner.encode(lp, h)
    hhat = decode(z)
    edit = lambda m: interventions.intervened(decode, h, z, interventions.intervene(z, m, on),
                                              add_error)
    hhat_flip = edit(jnp.ones(z.shape[-1]))
    hhat_masked = edit(mask)
    decisive = interventions.decisive_units(z, decode, head, on)
    # Per sample, the units whose single switch changes the prediction, switched together.
    hhat_decisive = edit(decisive)
    return {'logits': head(h), 'logits_hat': head(hhat), 'logits_flip': head(hhat_flip),
            'h': h, 'code': z, 'hhat': hhat, 'hhat_flip': hhat_flip,
            'hhat_masked': hhat_masked, 'logits_masked': head(hhat_masked),
            'hhat_decisive': hhat_decisive, 'logits_decisive': head(hhat_decisive),
            'decisive': decisive}
  return parallel.data_parallel_apply(f, mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=16)
def _codes_fn(embed, learner, mesh):
  """((clf, learner params), {'image': uint8}) → codes [b, K]."""
  return parallel.data_parallel_apply(
      lambda p, b: learner.encode(p[1], embed(p[0], b['image'].astype(jnp.float32) / 255.0)),
      mesh, parallel.convnet_compiler_options())


@functools.lru_cache(maxsize=32)
def jitted(fn):
  """jax.jit(fn), built once per function: small computations on a few rows, which would
  otherwise compile op by op."""
  return jax.jit(fn)


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


def ground_truth_reliance(data_config, split: ClassifierSplit, test, batch_size: int, mesh,
                          split_name: str = 'test') -> dict | None:
  """Reliance of c on each attribute from counterfactual images of `test`, the data's split
  `split_name` (None where the data cannot render them): {name: {flip_rate,
  mean_prob_change, num_examples}}."""
  render = data_lib.counterfactual_renderer(data_config, split_name)
  if render is None:
    return None
  return reliance.reliance_by_attribute(classify_fn(split, batch_size, mesh), test.images,
                                        render, test.attribute_names,
                                        batch_size=max(len(test), 1))


def ground_truth_flips(data_config, split: ClassifierSplit, images: np.ndarray, names,
                       batch_size: int, mesh, split_name: str = 'test') -> np.ndarray | None:
  """reliance.flip_mask [B, A] of the first B = len(images) images of the data's split
  `split_name` (each counterfactual split rendered whole, its first B rows classified);
  None where the data cannot render them."""
  render = data_lib.counterfactual_renderer(data_config, split_name)
  if render is None:
    return None
  b = len(images)
  return reliance.flip_mask(classify_fn(split, batch_size, mesh), images,
                            lambda a: render(a)[:b], names, batch_size=max(b, 1))


def unbiased_split(data_config) -> data_lib.Dataset | None:
  """The shapes split 'test_unbiased' (the test images with the spurious attribute
  independent of the task) where 'test' is drawn correlated (data.test_rho ≠ 0.5); None
  otherwise (the test split is that split, or there is none)."""
  if (data_config.name != 'shapes' or data_config.get('bias_split', '')
      or float(data_config.get('test_rho', 0.5)) == 0.5):
    return None
  return data_lib.load(data_config, 'test_unbiased')


def unbiased_accuracy(data_config, split: ClassifierSplit, batch_size: int, mesh
                      ) -> float | None:
  """Accuracy of c on `unbiased_split`; None where there is none."""
  unbiased = unbiased_split(data_config)
  if unbiased is None:
    return None
  logits = classify_fn(split, batch_size, mesh)(unbiased.images)
  return float(np.mean(np.argmax(logits, -1) == unbiased.labels))


def _concepts_cfg(spec):
  return spec.config.model.get('concepts', None) or {}


def codes(ctx: Context, split: ClassifierSplit, learner_params) -> np.ndarray:
  """The concept learner's codes [N, K] of the test images."""
  return ctx.map(_codes_fn(split.embed, ctx.mods.learner, ctx.mesh),
                 (split.params, learner_params), {'image': ctx.data.images}, 'codes')


def on_value(ctx: Context, split: ClassifierSplit, learner_params) -> jax.Array:
  """[K]: the value a unit switched on takes: 1 for boolean codes, else the
  config.model.concepts.on_quantile of its nonzero activations on the test images."""
  learner = ctx.mods.learner
  if learner.binary:   # placed, not made by jnp.ones: eagerly that is two executables
    return jax.device_put(np.ones((learner.latent_dim,), np.float32))
  return jnp.asarray(interventions.on_values(codes(ctx, split, learner_params),
                                             _concepts_cfg(ctx.spec).get('on_quantile', 0.9)))


def bias_mask(ctx: Context) -> jax.Array:
  """[K]: the units the bias report switches (config.eval.bias_bits; () = all)."""
  num_bits, bits = ctx.mods.learner.latent_dim, tuple(ctx.spec.config.eval.bias_bits)
  return (interventions.bit_set_mask(num_bits, list(bits)) if bits
          else jax.device_put(np.ones((num_bits,), np.float32)))   # flip_all_mask's ones


def explain(ctx: Context, split: ClassifierSplit, learner_params, mask, desc: str) -> dict:
  """Per-example outputs of `_outputs_fn` on the test images for one (classifier, concept
  learner)."""
  on = on_value(ctx, split, learner_params)
  fn = _outputs_fn(split.embed, split.head, ctx.mods.learner, ctx.mesh,
                   bool(_concepts_cfg(ctx.spec).get('add_error', False)))
  return ctx.map(fn, (split.params, learner_params, mask, on), {'image': ctx.data.images}, desc)


def outputs(ctx: Context) -> dict:
  """`explain` of the run's classifier and concept learner with the bias report's mask."""
  return ctx.derived('outputs', lambda: explain(ctx, ctx.classifier, ctx.params('concepts'),
                                                bias_mask(ctx), 'eval test'))


def train_images(ctx: Context) -> np.ndarray:
  """uint8 [N, H, W, 3] of the train split (the sanity head is scaled on its first rows)."""
  return ctx.derived('train_images', lambda: data_lib.load(ctx.spec.config.data, 'train').images)


def generated(ctx: Context, stage: str, e: np.ndarray) -> np.ndarray:
  """sigmoid(g(e)) [b, H, W, 3] of the explainer `stage` (jitted once per explainer)."""
  return np.asarray(_generate_fn(ctx.mods.explainer)(ctx.params(stage), e))


@functools.lru_cache(maxsize=16)
def _generate_fn(explainer):
  from lsei_jax.pipeline import frozen  # pylint: disable=g-import-not-at-top
  g = frozen.generator_apply(explainer)
  return jax.jit(lambda p, e: jax.nn.sigmoid(g(p, e)))
