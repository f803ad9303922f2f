"""Biased data, unbiased classifier: configs/shapes.py's data bias (colour agrees with the
shape in 90% of training images) with the default, easy-to-read shape and a classifier
trained longer, which reads the shape and not the colour (re-rendering the unbiased test
images with only the colour flipped changes about as few predictions as flipping an
attribute that never correlated with the label). Its report must not say it relies on colour.
"""
from lsei_jax.configs import shapes


def get_config():
  c = shapes.get_config()
  # ρ 0.9 and an independent test split: the data configs/shapes.py had before its test_rho.
  c.data.update(object_scale=1.0, noise=0.04, rho=0.9, test_rho=0.5)
  c.classifier.update(steps=1500, learning_rate=2e-3)
  return c
