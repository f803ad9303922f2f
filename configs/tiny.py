"""Seconds-long variant of configs/shapes.py for tests: 16×16 images, tiny nets, few steps."""
from lsei_jax.configs import shapes


def get_config():
  c = shapes.get_config()
  c.log_every = 5
  c.data.update(image_size=16, num_train=256, num_test=64, object_scale=1.0, noise=0.04,
                rho=0.9, test_rho=0.5)   # an independent test split, as the tests assume
  c.model.classifier.update(channels=(4, 8), strides=(2, 2), hidden_dim=16)
  c.model.dvae.update(latent_dim=6, hidden=(16, 8))
  c.model.topk_sae.update(latent_dim=12, k=2, k_aux=4)
  c.model.nmf.update(latent_dim=6, encode_sweeps=5)
  c.model.explainer.update(channels=(8, 4))
  c.model.probe.update(channels=(4, 8), strides=(2, 2), hidden_dim=8)
  c.probe.update(steps=8, batch_size=32, warmup_steps=2)
  c.classifier.update(steps=12, batch_size=32, warmup_steps=2, learning_rate=2e-3)
  c.concepts.update(steps=12, batch_size=32, anneal_steps=10)
  c.explainer.update(steps=12, batch_size=16, fisher_batch=8, fisher_samples=2,
                     info_examples=64)
  c.inn.update(steps=12, batch_size=32, warmup_steps=2, num_steps=2, hidden=(16,),
               pairs_per_example=2, factor_dim=1)
  c.autoencoder.update(kind='conv', latent_dim=8, channels=(4, 8), steps=8, batch_size=32,
                       warmup_steps=2)   # the trained kind (tests set 'pca' where they need it)
  c.invariance.update(num_steps=2, hidden=(16,), embed=(8,), steps=8, batch_size=32,
                      warmup_steps=2, eval_images=16, samples=2, figure_images=4,
                      figure_samples=2)
  c.checkpoint.update(every_steps=4, max_to_keep=3)
  c.eval.update(batch_size=32, fisher_samples=2, fisher_examples=32, grid_rows=4,
                num_bootstrap=100)
  c.eval.tcav.update(num_runs=3, num_per_side=8)
  c.eval.attribution.update(images=4, ig_steps=4)
  return c
