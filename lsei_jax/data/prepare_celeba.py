"""Prepare TFDS celeb_a (array_record) from the five original CelebA files, offline.

  pip install -e '.[prepare]'     # TensorFlow + what TFDS needs to build the records
  python -m lsei_jax.data.prepare_celeba --data_dir=~/tensorflow_datasets

Put img_align_celeba.zip, list_attr_celeba.txt, list_eval_partition.txt,
list_landmarks_align_celeba.txt and identity_CelebA.txt in DATA_DIR/downloads/manual (or
--manual_dir). The files are checked (size, then sha256) against the checksums TFDS
records for celeb_a 2.1.0 before anything is built; nothing is downloaded. Reading the
prepared data afterwards needs no TensorFlow.
"""
from __future__ import annotations

import hashlib
import os
import sys

from absl import app, flags, logging

from lsei_jax.data.celeba_attrs import FILES, TFDS_NAME, TFDS_VERSION

flags.DEFINE_string('data_dir', None, 'TFDS data dir to prepare celeb_a in.')
flags.DEFINE_string('manual_dir', None, 'Folder with the five files (default '
                    'DATA_DIR/downloads/manual).')
flags.DEFINE_bool('verify', True, 'Hash the manual files before building (TFDS hashes '
                  'them again; this only makes the error list every bad file at once).')


def expected_files() -> dict[str, tuple[str, int, str]]:
  """{file name: (url, size, sha256)} from the installed TFDS's checksums for celeb_a."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {info.filename: (url, int(info.size), info.checksum)
          for url, info in tfds.builder_cls(TFDS_NAME).url_infos.items()}


def _cached_download(data_dir: str, url: str, checksum: str) -> str | None:
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top
  path = os.path.join(data_dir, 'downloads', TFDS_NAME, resource.get_dl_fname(url, checksum))
  return path if os.path.exists(path) and os.path.exists(path + '.INFO') else None


def check_files(data_dir: str, manual_dir: str, verify: bool = True) -> list[str]:
  """Problems with the five files (empty when all are usable). A file counts as present
  in manual_dir, or as an earlier TFDS download cached in DATA_DIR/downloads/celeb_a."""
  problems = []
  for name, (url, size, sha) in expected_files().items():
    path = os.path.join(manual_dir, name)
    if not os.path.exists(path):
      if not _cached_download(data_dir, url, sha):
        problems.append(f'{name}: missing')
      continue
    got = os.path.getsize(path)
    if got != size:
      problems.append(f'{name}: {got} bytes, expected {size} (truncated or not the original)')
    elif verify and _sha256(path) != sha:
      problems.append(f'{name}: sha256 differs from the original file')
  return problems


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def prepare(data_dir: str, manual_dir: str | None = None, verify: bool = True) -> dict:
  """Builds celeb_a as array_record in data_dir. Returns {split: number of examples}."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f'preparing CelebA needs TensorFlow ({e}); install it with '
                      "pip install -e '.[prepare]'") from e
  data_dir = os.path.expanduser(data_dir)
  manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
  problems = check_files(data_dir, manual_dir, verify)
  if problems:
    raise FileNotFoundError(
        f'cannot prepare CelebA: {"; ".join(problems)}. Put the original files '
        f'({", ".join(FILES.values())}) in {manual_dir}')
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir, file_format='array_record')
  if str(builder.info.version) != TFDS_VERSION:
    logging.warning('TFDS celeb_a is version %s; lsei_jax was tested with %s',
                    builder.info.version, TFDS_VERSION)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  counts = {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
  logging.info('celeb_a prepared in %s: %s', data_dir, counts)
  return counts


def main(argv) -> None:
  del argv
  if not flags.FLAGS.data_dir:
    print('error: --data_dir is required', file=sys.stderr)
    sys.exit(1)
  try:
    counts = prepare(flags.FLAGS.data_dir, flags.FLAGS.manual_dir, flags.FLAGS.verify)
  except (FileNotFoundError, ImportError, ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(' '.join(f'{k}={v}' for k, v in counts.items()))


if __name__ == '__main__':
  app.run(main)
