"""Bias control, the reverse: 70% smiling men + 30% non-smiling women (from train)."""
from lsei_jax.configs import celeba_smiling


def get_config():
  c = celeba_smiling.get_config('Smiling')
  c.data.bias_split = 'male_majority'
  return c
