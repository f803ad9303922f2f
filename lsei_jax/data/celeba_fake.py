"""Small fake CelebA in the five original file formats, for tests and benchmarks.

The files follow the real layouts (see TFDS `celeb_a`): `list_attr_celeba.txt` and
`list_landmarks_align_celeba.txt` have a count line, a header line, then `name v1 v2 …`
rows (±1 attributes); `list_eval_partition.txt` and `identity_CelebA.txt` have no header;
the zip holds `img_align_celeba/000001.jpg`, … as 218×178 JPEGs. Every image is one flat
colour inside the centre 178×178 square, and 128 levels away (per channel) in the 20-row
bands above and below it (what a centre crop must remove); identity i+1 is unique per
image, so a prepared record can be traced back to its file.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import numpy as np
from PIL import Image

from lsei_jax.data.celeba_attrs import ATTRIBUTES, FILES

LANDMARKS = ('lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x '
             'leftmouth_y rightmouth_x rightmouth_y').split()
HEIGHT, WIDTH = 218, 178


def file_name(i: int) -> str:
  return f'{i + 1:06d}.jpg'


def make_images(num: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
  """num JPEGs (bytes) of 218×178 and their centre colours uint8 [num, 3]."""
  rng = np.random.default_rng([seed, 1])
  colours = rng.integers(30, 226, (num, 3)).astype(np.uint8)
  jpegs = []
  for c in colours:
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = c
    band = (HEIGHT - WIDTH) // 2
    img[:band] = img[-band:] = c + 128  # uint8 wraps: every channel differs by 128
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format='JPEG', quality=90)
    jpegs.append(buf.getvalue())
  return jpegs, colours


def write_raw_files(out_dir: str, num: int, seed: int = 0,
                    fractions: tuple[float, float] = (0.7, 0.15)) -> dict:
  """Writes the five files into out_dir. Returns the truth: {'attributes' bool [num, 40],
  'partition' int [num] (0 train, 1 validation, 2 test), 'colours' uint8 [num, 3]}."""
  os.makedirs(out_dir, exist_ok=True)
  rng = np.random.default_rng([seed, 0])
  attrs = rng.random((num, len(ATTRIBUTES))) < 0.5
  n_train, n_val = int(num * fractions[0]), int(num * fractions[1])
  partition = np.repeat([0, 1, 2], [n_train, n_val, num - n_train - n_val])
  jpegs, colours = make_images(num, seed)
  names = [file_name(i) for i in range(num)]

  with zipfile.ZipFile(os.path.join(out_dir, FILES['images']), 'w', zipfile.ZIP_STORED) as z:
    for name, data in zip(names, jpegs):
      z.writestr(f'img_align_celeba/{name}', data)
  pm = lambda row: ' '.join(f'{1 if v else -1:2d}' for v in row)
  _write(out_dir, FILES['attributes'],
         [str(num), ' '.join(ATTRIBUTES)] + [f'{n} {pm(a)}' for n, a in zip(names, attrs)])
  marks = rng.integers(20, 160, (num, len(LANDMARKS)))
  _write(out_dir, FILES['landmarks'],
         [str(num), ' '.join(LANDMARKS)]
         + [f'{n} ' + ' '.join(f'{v:4d}' for v in m) for n, m in zip(names, marks)])
  _write(out_dir, FILES['partition'], [f'{n} {p}' for n, p in zip(names, partition)])
  _write(out_dir, FILES['identity'], [f'{n} {i + 1}' for i, n in enumerate(names)])
  return {'attributes': attrs, 'partition': partition, 'colours': colours, 'names': names}


def _write(out_dir: str, name: str, lines: list[str]) -> None:
  # TFDS drops the last line of each file, so the files must end with a newline.
  with open(os.path.join(out_dir, name), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def install_as_cached_download(data_dir: str, raw_dir: str) -> None:
  """Places raw_dir's files where TFDS looks for an earlier download of celeb_a.

  TFDS trusts the checksum recorded in a cached download's `.INFO` file (it only hashes
  files from the manual folder), so fake files pass without editing the installed
  package's checksums.tsv (which `register_checksums` would overwrite). Tests only.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  dl_dir = os.path.join(data_dir, 'downloads', 'celeb_a')
  os.makedirs(dl_dir, exist_ok=True)
  for url, info in tfds.builder_cls('celeb_a').url_infos.items():
    dst = os.path.join(dl_dir, resource.get_dl_fname(url, info.checksum))
    shutil.copyfile(os.path.join(raw_dir, info.filename), dst)
    meta = {'urls': [url], 'dataset_names': ['celeb_a'], 'original_fname': info.filename,
            'url_info': info.asdict()}
    with open(dst + '.INFO', 'w') as f:
      json.dump(meta, f)
