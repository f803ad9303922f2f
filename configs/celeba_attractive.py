"""CelebA, task Attractive (the paper's Table 1/2 task); otherwise configs/celeba_smiling.py."""
from lsei_jax.configs import celeba_smiling


def get_config():
  return celeba_smiling.get_config('Attractive')
