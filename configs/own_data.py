"""Your own data: an image folder + attributes CSV (or an .npz with name='numpy').

  python train.py --config=configs/own_data.py --config.data.path=/data/faces \\
      --config.data.task=Smiling --config.data.image_size=64 --workdir=runs/faces

Everything else is configs/shapes.py (architecture and training sizes); scale steps and
model sizes to the data.
"""
from lsei_jax.configs import shapes


def get_config():
  c = shapes.get_config()
  # The demo's classifier and concept steps are tuned to its shortcut, not to real data.
  c.classifier.update(steps=600, learning_rate=2e-3)
  c.concepts.update(steps=1500, anneal_steps=1000)
  c.data = dict(name='folder', path='', csv='', image_size=64, task='', resize=False,
                test_fraction=0.2, validation_fraction=0.0, seed=0, workers=0)
  return c
