"""Your own classifier, explained: a small ResNet-style Flax model (BatchNorm, residual
blocks), trained briefly on the embedded shapes data, saved with Orbax, and a loader that
restores it as a `lsei_jax.ClassifierSplit` cut after the global pooling.

  python -m examples.resnet --config=configs/own_model.py        # train + save the model
  python train.py --config=configs/own_model.py --workdir=runs/own # explain it
  python eval.py --config=configs/own_model.py --workdir=runs/own

The explanation pipeline never trains this model: configs/own_model.py names `load` in
config.classifier.source, and the pipeline records the restored weights' fingerprint.
"""
from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import lsei_jax
from lsei_jax import data as data_lib


class ResBlock(nn.Module):
  """Two 3×3 conv + BatchNorm layers with an identity (or 1×1 projection) shortcut."""
  channels: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    y = nn.Conv(self.channels, (3, 3), self.strides, use_bias=False, name='Conv_0')(x)
    y = nn.relu(norm('BatchNorm_0')(y))
    y = nn.Conv(self.channels, (3, 3), use_bias=False, name='Conv_1')(y)
    y = norm('BatchNorm_1')(y)
    if x.shape != y.shape:
      x = nn.Conv(self.channels, (1, 1), self.strides, use_bias=False, name='proj')(x)
    return nn.relu(x + y)


class GlobalAvgPool(nn.Module):
  """[B, H, W, C] → [B, C]; a named module so the network can be cut right after it."""

  def __call__(self, x):
    return jnp.mean(x, axis=(1, 2))


class ResNet(nn.Module):
  """stem → residual blocks (stride 2 after the first) → global pooling → Dense(C)."""
  widths: Sequence[int] = (8, 16)
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name='stem')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='stem_bn')(x))
    for i, w in enumerate(self.widths):
      x = ResBlock(w, 1 if i == 0 else 2, name=f'block{i}')(x, train)
    x = GlobalAvgPool(name='pool')(x)
    return nn.Dense(self.num_classes, name='fc')(x)


def train_model(model: ResNet, images: np.ndarray, labels: np.ndarray, *, steps: int,
                batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0) -> dict:
  """Adam on cross-entropy; returns the variables {'params', 'batch_stats'}."""
  x0 = jnp.zeros((1,) + images.shape[1:], jnp.float32)
  variables = model.init(jax.random.key(seed), x0)
  tx = optax.adam(learning_rate)
  opt = tx.init(variables['params'])

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new['batch_stats'], opt, loss

  params, stats = variables['params'], variables['batch_stats']
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(images), batch_size)
    params, stats, opt, _ = step(params, stats, opt, images[idx].astype(np.float32) / 255.0,
                                 labels[idx])
  return {'params': params, 'batch_stats': stats}


def model_from(config) -> ResNet:
  return ResNet(widths=tuple(config.classifier.widths), num_classes=config.classifier.classes)


def train_and_save(config) -> str:
  """Trains the example model on config.data's train split and saves it at
  config.classifier.path (an Orbax checkpoint directory)."""
  ds = data_lib.load(config.data, 'train')
  variables = train_model(model_from(config), ds.images, ds.labels,
                          steps=config.classifier.example_steps, seed=config.seed)
  path = os.path.abspath(config.classifier.path)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, variables, force=True)
  return path


def load(config) -> lsei_jax.ClassifierSplit:
  """The loader config.classifier.source names: restores the saved variables and cuts the
  model after its global pooling (h = pooled features [B, widths[-1]])."""
  model = model_from(config)
  size = config.data.image_size
  example = jnp.zeros((2, size, size, 3), jnp.float32)
  template = jax.eval_shape(model.init, jax.random.key(0), example[:1])
  path = os.path.abspath(config.classifier.path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no saved model at config.classifier.path={path!r}: run '
                            f'python -m examples.resnet --config=… first')
  with ocp.StandardCheckpointer() as ckpt:
    variables = ckpt.restore(path, template)
  data = data_lib.load(config.data, 'test')
  example = data.images[:8].astype(np.float32) / 255.0
  return lsei_jax.split_at(model, variables, 'pool', example=example, train=False)


if __name__ == '__main__':
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file('config', 'configs/own_model.py', 'Config file.')
  app.run(lambda argv: print('saved', train_and_save(_CONFIG.value)))
