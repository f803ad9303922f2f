"""Explain your own classifier: examples/resnet.py's model, loaded by config.classifier.source.

  python -m examples.resnet --config=configs/own_model.py          # train + save it
  python train.py --config=configs/own_model.py --workdir=runs/own_model
  python eval.py --config=configs/own_model.py --workdir=runs/own_model

config.model.classifier is not used: d and C come from the loaded model.
`--config=configs/own_model.py:tiny` is the seconds-long variant (configs/tiny.py sizes).
"""
from lsei_jax.configs import shapes, tiny


def get_config(size: str = ''):
  if size not in ('', 'tiny'):
    raise ValueError(f"configs/own_model.py takes '' or 'tiny', got {size!r}")
  c = tiny.get_config() if size == 'tiny' else shapes.get_config()
  c.classifier.update(source='examples.resnet:load',
                      # Read by examples/resnet.py only (your loader reads what it needs).
                      path='runs/own_model_resnet',
                      widths=(8, 16) if size else (16, 32), classes=2,
                      example_steps=40 if size else 300)
  return c
