"""A 3-class task of the embedded shapes data: the label counts how many of `shape` and
`color` are on (0, 1 or 2); `size` agrees with `shape` in 90% of training images.

  python train.py --config=configs/shapes3.py --workdir=runs/shapes3
  --config=configs/shapes3.py:tiny is the seconds-long variant (configs/tiny.py sizes).

The bias report (signed towards "the other class") needs 2 classes and is skipped, with a
note in metrics.json; so is the sanity check that compares two bias reports.
"""
from configs import shapes, tiny


def get_config(size: str = ''):
  if size not in ('', 'tiny'):
    raise ValueError(f"configs/shapes3.py takes '' or 'tiny', got {size!r}")
  c = tiny.get_config() if size == 'tiny' else shapes.get_config()
  c.data.update(task='shape+color', spurious='size')
  c.model.classifier.num_classes = 3
  c.sanity.enabled = False
  return c
