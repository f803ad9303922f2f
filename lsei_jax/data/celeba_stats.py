"""Marginals and pairwise correlations (phi coefficients) of 11 CelebA attributes.

The figures the CelebA-shaped benchmark cell samples from (lsei_jax/data/shapes_many.py);
no image and no row of CelebA is shipped, only this 11 × 11 table.

Provenance: CelebA's `list_attr_celeba.txt` (Liu et al., ICCV 2015), the copy committed in
the public GitHub repository zgjsxx/face-property-detection-pytorch, path
`list_attr_celeba.txt`, commit 32e7d60e596afdc4d941b47ca5381004e29d05aa (file sha256
5e2985f6482e2c379c4f58f021c80532fa78c9a9a5bd86aab29a5e4e0a8de7a4). That copy holds the
header of the original (202,599 images, the 40 names) and its first 20,000 rows
(000001.jpg – 020000.jpg), all in CelebA's training partition; the table below is over
those 20,000 rows (`derive(path, NAMES)` computes it again from such a file). No complete
copy of the file was found. The marginals agree with the figures commonly quoted for all
202,599 images (Male 41.7%, Eyeglasses 6.5%, Young 77.4% there; 42.2%, 6.5%, 78.0% here).
With 20,000 rows a phi coefficient's standard error is at most 1/√20,000 ≈ 0.007.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

NAMES = ('Male', 'Smiling', 'Wearing_Lipstick', 'Heavy_Makeup', 'No_Beard', 'Young',
         'Attractive', 'Eyeglasses', 'Blond_Hair', 'Mouth_Slightly_Open', 'High_Cheekbones')
NUM_ROWS = 20_000

# P(attribute = 1), in NAMES order.
MARGINALS = (0.4215, 0.4793, 0.4711, 0.3849, 0.8321, 0.7799, 0.5131, 0.0646, 0.1489, 0.4791,
             0.4500)

# Pearson correlation of the 0/1 columns (= the phi coefficient), rows and columns in NAMES
# order, rounded to 4 decimals.
PHI = (
    (+1.0000, -0.1347, -0.7955, -0.6699, -0.5227, -0.2855, -0.4043, +0.1921, -0.3041, -0.0963, -0.2479),
    (-0.1347, +1.0000, +0.1736, +0.1691, +0.1014, -0.0265, +0.1387, -0.0449, +0.0894, +0.5339, +0.6747),
    (-0.7955, +0.1736, +1.0000, +0.8051, +0.4220, +0.2562, +0.4854, -0.2072, +0.2825, +0.1049, +0.2804),
    (-0.6699, +0.1691, +0.8051, +1.0000, +0.3531, +0.2493, +0.4789, -0.1924, +0.2506, +0.1063, +0.2681),
    (-0.5227, +0.1014, +0.4220, +0.3531, +1.0000, +0.1172, +0.2005, -0.1023, +0.1721, +0.0800, +0.1885),
    (-0.2855, -0.0265, +0.2562, +0.2493, +0.1172, +1.0000, +0.3937, -0.2158, +0.0455, -0.0118, -0.0008),
    (-0.4043, +0.1387, +0.4854, +0.4789, +0.2005, +0.3937, +1.0000, -0.2238, +0.1542, +0.0189, +0.1404),
    (+0.1921, -0.0449, -0.2072, -0.1924, -0.1023, -0.2158, -0.2238, +1.0000, -0.0756, -0.0033, -0.0897),
    (-0.3041, +0.0894, +0.2825, +0.2506, +0.1721, +0.0455, +0.1542, -0.0756, +1.0000, +0.0792, +0.1181),
    (-0.0963, +0.5339, +0.1049, +0.1063, +0.0800, -0.0118, +0.0189, -0.0033, +0.0792, +1.0000, +0.4070),
    (-0.2479, +0.6747, +0.2804, +0.2681, +0.1885, -0.0008, +0.1404, -0.0897, +0.1181, +0.4070, +1.0000),
)


def derive(path: str, names: Sequence[str] = NAMES) -> tuple[np.ndarray, np.ndarray, int]:
  """(marginals [A], phi [A, A], rows) of `names` in a list_attr_celeba.txt-format file
  (a count line, a header of names, then `file.jpg ±1 … ±1` rows)."""
  with open(path) as f:
    f.readline()
    header = f.readline().split()
    missing = [n for n in names if n not in header]
    if missing:
      raise ValueError(f'{path}: no attribute {missing} in its header')
    cols = [header.index(n) + 1 for n in names]     # + 1: the image name comes first
    x = np.array([[int(p[c]) for c in cols] for p in (l.split() for l in f) if p]) == 1
  return x.mean(0), np.corrcoef(x.T.astype(np.float64)), len(x)
