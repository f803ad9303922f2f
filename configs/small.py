"""About a minute on 2 CPU cores: configs/shapes.py shrunk for the bias-report tests
(which train it for several values of ρ)."""
from lsei_jax.configs import shapes


def get_config():
  c = shapes.get_config()
  c.log_every = 100
  # Not the demo's data: ρ 0.9 and an independent test split (test_rho 0.5), on which the
  # bias-report tests and the truthfulness benchmark score against the ground truth.
  c.data.update(num_train=4096, num_test=1024, object_scale=1.0, noise=0.04, rho=0.9,
                test_rho=0.5)
  c.model.classifier.update(channels=(8, 8, 16, 16, 32, 32), strides=(1, 2, 1, 2, 1, 2),
                           hidden_dim=64)
  c.model.dvae.update(latent_dim=8, hidden=(64, 32))
  c.model.explainer.update(channels=(16, 8))
  # The probe must read the shape on real images (a stride-2 first layer or 300 steps
  # leave it at chance, and then the report can say nothing about the task attribute).
  c.model.probe.update(channels=(16, 32, 32), strides=(1, 2, 2), hidden_dim=64)
  c.classifier.update(steps=400, batch_size=64, warmup_steps=20, learning_rate=2e-3)
  c.concepts.update(steps=400, batch_size=128, anneal_steps=300)
  c.explainer.update(steps=250, batch_size=32, info_examples=512, train_noreg=False)
  c.probe.update(steps=600, batch_size=64)
  c.sanity.enabled = False
  c.checkpoint.update(every_steps=1000, max_to_keep=1)
  c.eval.update(fisher_examples=256, num_bootstrap=500)
  return c
