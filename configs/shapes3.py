"""A 3-class task of the embedded shapes data: the label counts how many of `shape` and
`color` are on (0, 1 or 2); `size` agrees with `shape` in 90% of training images.

  python train.py --config=configs/shapes3.py --workdir=runs/shapes3
  --config=configs/shapes3.py:tiny is the seconds-long variant (configs/tiny.py sizes).

Every report is per class: Table 1, per-bit analysis, TCAV, the bias report's verdict
(each attribute's largest effect on P(prediction = k)) and its sanity check.
"""
from lsei_jax.configs import shapes, tiny


def get_config(size: str = ''):
  if size not in ('', 'tiny'):
    raise ValueError(f"configs/shapes3.py takes '' or 'tiny', got {size!r}")
  c = tiny.get_config() if size == 'tiny' else shapes.get_config()
  c.data.update(task='shape+color', spurious='size')
  if size != 'tiny':   # the data and classifier configs/shapes.py had before its test_rho
    c.data.update(rho=0.9, object_scale=0.7, noise=0.08, test_rho=0.5)
    c.classifier.update(steps=600, learning_rate=2e-3)
    c.concepts.update(steps=1500, anneal_steps=1000)
  c.model.classifier.num_classes = 3
  return c
