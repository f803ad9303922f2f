"""Bias control: Smiling trained on 70% smiling women + 30% non-smiling men (from train).

Label and sex agree on every training image, so the classifier may read either; the
explanation should show which. Evaluated on the official (natural) test split.
"""
from lsei_jax.configs import celeba_smiling


def get_config():
  c = celeba_smiling.get_config('Smiling')
  c.data.bias_split = 'female_majority'
  return c
