"""CelebA, task Smiling (the paper's first task): 64×64, the paper's architecture.

Needs celeb_a prepared once (python -m lsei_jax.data.prepare_celeba --data_dir=DIR);
set the folder with --config.data.data_dir=DIR (default: $TFDS_DATA_DIR or
~/tensorflow_datasets). The first run decodes and caches the images (minutes).
Training lengths are reasonable defaults, not tuned to reproduce the paper's numbers.
"""
import ml_collections

from lsei_jax.configs import shapes


def get_config(task: str = 'Smiling') -> ml_collections.ConfigDict:
  # Start from the demo so that every field the pipeline and evaluation read exists.
  c = shapes.get_config()
  c.log_every = 100
  c.data = ml_collections.ConfigDict(dict(
      name='celeba', task=task, image_size=64,
      data_dir='',        # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      crop_size=0,        # centre square of the aligned 218×178 face; 0 = full width (178)
      max_examples=0,     # > 0: first N records of each split (quick runs)
      workers=-1,         # grain decode processes; -1 = cores-1 if > 2 cores, 0 = in-process
      jpeg_draft=True,    # let libjpeg decode at half size (2-3× faster, ≥ 64 px anyway)
      cache=True,         # keep decoded arrays as .npy under data_dir/lsei_jax_cache
      bias_split='',      # '' | 'female_majority' | 'male_majority' (train split only)
      bias_fraction=0.7, bias_size=0,  # majority share; size 0 = largest possible
      seed=0))
  # The paper's architecture (docs/method.md §3) = the module defaults in lsei_jax/models.py.
  c.model.classifier.update(channels=(32, 32, 64, 64, 128, 128), strides=(1, 2, 1, 2, 1, 2),
                            hidden_dim=256, num_classes=2, dropout=0.5)
  c.model.dvae.update(latent_dim=32, hidden=(512, 256, 128), dropout=0.1)
  c.model.explainer.update(channels=(256, 128, 64, 32))
  c.model.probe.update(channels=(32, 64, 64), strides=(2, 2, 2), hidden_dim=128)

  # 162,770 training images: ~4 epochs of the classifier at batch 128.
  c.classifier.update(steps=5000, batch_size=128, learning_rate=1e-3, warmup_steps=200)
  c.concepts.update(steps=10000, batch_size=256, anneal_steps=8000)
  c.explainer.update(steps=10000, batch_size=64, info_examples=2048)
  c.probe.update(steps=3000, batch_size=128, warmup_steps=100)
  c.checkpoint.update(every_steps=1000, max_to_keep=2)
  c.eval.update(batch_size=256, fisher_examples=2048)
  # The invariance INN's 'nearest' base matches every train row against every other on the
  # host (N²·d: seconds for the demo's 12,288 rows, hours for 162,770): the linear one here.
  c.invariance.base = 'linear'
  return c
