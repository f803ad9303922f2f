"""Peak host memory of a training process against dataset size (issue 27): one JSON line
per (source, size) with the child's peak RSS (os.wait4's ru_maxrss), then a summary line
with each source's growth from the smallest to the largest size.

  python benchmarks/bench_memory.py                       # 2,000 → 32,000 images, 64×64
  python benchmarks/bench_memory.py --base=500 --steps=5  # quicker
  python benchmarks/bench_memory.py --sources=shapes      # one source
  python benchmarks/bench_memory.py --root=/path/to/another/checkout   # its train.py

Each run is `train.py --stages=classifier` with a few steps, one source at a time:
  folder   PNG files + attributes.csv (configs/own_data.py), decoded to a temporary file
  npy      a directory of .npy files, images.npy read by rows in place
  npz      an .npz written by np.savez (byo.save_npz): images read by rows inside the zip
  npzc     an .npz written by np.savez_compressed: inflated once into a temporary file
  celeba   a fake CelebA (data/celeba_fake.py, 218×178 JPEGs) prepared by TFDS as
           array_record (configs/celeba_smiling.py, its model; data.max_examples picks the
           size), decoded into its cache by the measured run itself
  shapes   the embedded shapes (configs/shapes.py, data.num_train and data.num_test),
           rendered by the measured run itself
Sizes are multiples of --base examples, 80% of them the train split (celeba: that many
train records, data.max_examples; shapes: num_train, the other 20% num_test). The
persistent compilation cache is warmed by one discarded run per config first, so that
every measured run loads its executables instead of compiling them (compiling has its own
peak).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """uint8 [n, size, size, 3]: 8×8 colour blocks, so PNGs stay small and quick to write."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8)
  return small.repeat(8, 1).repeat(8, 2)


def data_runs(directory: Path, n: int, multiples: list[int], sources: list[str]) -> dict:
  """{(source, multiple): config overrides} of the data write_data / prepare_celeba make."""
  out = {}
  for m in multiples:
    out[('folder', m)] = ['--config.data.name=folder', f'--config.data.path={directory}/folder',
                          f'--config.data.csv={directory}/attributes_{m}.csv']
    for source, path in (('npy', f'npy_{m}'), ('npz', f'd_{m}.npz'), ('npzc', f'c_{m}.npz')):
      out[(source, m)] = ['--config.data.name=numpy', f'--config.data.path={directory}/{path}']
    out[('shapes', m)] = ['--config.data.name=shapes',
                          f'--config.data.num_train={int(n * 0.8) * m}',
                          f'--config.data.num_test={(n - int(n * 0.8)) * m}']
    if 'celeba' in sources:   # max_examples train records of one prepared set
      out[('celeba', m)] = [f'--config.data.data_dir={directory}/celeba_tfds',
                            f'--config.data.max_examples={int(n * 0.8) * m}',
                            '--config.data.workers=0', '--config.data.task=Smiling',
                            '--config.classifier.batch_size=64']
  return out


FILE_SOURCES = ('folder', 'npy', 'npz', 'npzc')   # the data write_data makes


def write_data(directory: Path, n: int, size: int, multiples: list[int],
               sources: list[str]) -> None:
  """The largest set as one image folder (a CSV per size listing its first rows), and a
  .npy directory, an .npz and a compressed .npz per size (those of `sources`)."""
  directory.mkdir(parents=True, exist_ok=True)
  if not set(sources) & set(FILE_SOURCES):
    return
  images = make_images(n * max(multiples), size)
  attrs = (np.arange(len(images))[:, None] >> np.arange(2)) % 2   # two balanced attributes
  folder = directory / 'folder'
  folder.mkdir(parents=True, exist_ok=True)
  for i, im in enumerate(images if 'folder' in sources else []):
    Image.fromarray(im).save(folder / f'{i}.png', compress_level=1)
  from lsei_jax.data import byo  # pylint: disable=g-import-not-at-top
  for m in multiples:
    k = n * m
    csv = directory / f'attributes_{m}.csv'
    csv.write_text('filename,a,b\n' + ''.join(f'{i}.png,{attrs[i, 0]},{attrs[i, 1]}\n'
                                            for i in range(k)))
    if 'npy' in sources:
      byo.save_npy_dir(str(directory / f'npy_{m}'), images[:k], attrs[:k], ['a', 'b'])
    if 'npz' in sources:
      byo.save_npz(str(directory / f'd_{m}.npz'), images[:k], attrs[:k], ['a', 'b'])
    if 'npzc' in sources:
      np.savez_compressed(directory / f'c_{m}.npz', images=images[:k], attributes=attrs[:k],
                          attribute_names=np.array(['a', 'b']))


def prepare_celeba(directory: Path, train: int) -> None:
  """A fake CelebA (218×178 JPEGs) with ≥ `train` train records, prepared by TFDS."""
  from lsei_jax.data import celeba_fake, prepare_celeba as prepare  # pylint: disable=g-import-not-at-top
  raw, data_dir = directory / 'celeba_raw', directory / 'celeba_tfds'
  celeba_fake.write_raw_files(str(raw), int(np.ceil(train / 0.7)) + 2, seed=0)  # 70% train
  celeba_fake.install_as_cached_download(str(data_dir), str(raw))
  counts = prepare.prepare(str(data_dir), manual_dir=str(directory / 'manual'))
  assert counts['train'] >= train, counts


def peak_rss_mb(root: Path, overrides: list[str], workdir: str, steps: int, size: int,
                env: dict) -> tuple[float, float]:
  """(peak RSS in MB, seconds) of one train.py --stages=classifier child process."""
  config = config_of(overrides)
  cmd = [sys.executable, str(root / 'train.py'), f'--config={root}/configs/{config}.py',
         f'--workdir={workdir}', '--stages=classifier',
         *(['--config.data.task=a'] if config == 'own_data' else []),
         f'--config.data.image_size={size}', f'--config.classifier.steps={steps}',
         '--config.classifier.warmup_steps=0', f'--config.checkpoint.every_steps={steps}',
         *overrides]
  start = time.perf_counter()   # this process stays small: a child's peak counts it too
  proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  err = proc.stderr.read().decode(errors='replace')
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}')
  return usage.ru_maxrss / 1024, time.perf_counter() - start   # Linux: ru_maxrss in KiB


def config_of(overrides: list[str]) -> str:
  """The configs/ module a source's run starts from."""
  if any('data_dir=' in o for o in overrides):
    return 'celeba_smiling'
  return 'shapes' if '--config.data.name=shapes' in overrides else 'own_data'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--base', type=int, default=2000, help='examples at 1×')
  p.add_argument('--multiples', default='1,4,16')
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--sources', default='folder,npy,npz,npzc,celeba,shapes')
  p.add_argument('--root', default=str(ROOT), help='checkout whose train.py runs')
  p.add_argument('--data', default='', help='reuse/keep the generated data here')
  p.add_argument('--write_data', default='', help=argparse.SUPPRESS)  # a child's job
  args = p.parse_args()
  multiples = [int(m) for m in args.multiples.split(',')]
  sources = args.sources.split(',')
  if args.write_data:
    write_data(Path(args.write_data), args.base, args.size, multiples, sources)
    if 'celeba' in sources:
      prepare_celeba(Path(args.write_data), int(args.base * 0.8) * max(multiples))
    return
  root = Path(args.root).resolve()
  with tempfile.TemporaryDirectory() as tmp:
    data = Path(args.data or tmp) / 'data'
    # Written by a child: this process stays small, for Linux carries ru_maxrss across
    # fork and exec (the data, or TensorFlow's import, would count in every run's peak).
    subprocess.run([sys.executable, __file__, f'--write_data={data}', f'--base={args.base}',
                    f'--size={args.size}', f'--multiples={args.multiples}',
                    f'--sources={args.sources}'], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    runs = data_runs(data, args.base, multiples, sources)
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS=os.environ.get(
        'JAX_PLATFORMS', 'cpu'), LSEI_JAX_COMPILATION_CACHE=os.environ.get(
            'LSEI_JAX_COMPILATION_CACHE', os.path.join(tmp, 'jit_cache')))
    results, warmed = {}, set()
    for source in sources:
      config = config_of(runs[(source, multiples[0])])
      if config not in warmed or source == 'celeba':   # fills the compilation cache
        warmed.add(config)
        no_cache = ['--config.data.cache=False'] if source == 'celeba' else []
        peak_rss_mb(root, runs[(source, multiples[0])] + no_cache,
                    os.path.join(tmp, f'warm_{source}'), args.steps, args.size, env)
      for m in multiples:
        mb, secs = peak_rss_mb(root, runs[(source, m)], os.path.join(tmp, f'{source}_{m}'),
                               args.steps, args.size, env)
        results[(source, m)] = mb
        print(json.dumps({'source': source, 'multiple': m, 'examples': args.base * m,
                          'image_size': args.size, 'steps': args.steps,
                          'peak_rss_mb': round(mb, 1), 'seconds': round(secs, 1)}),
              flush=True)
    print(json.dumps({'growth_mb': {s: round(results[(s, multiples[-1])]
                                             - results[(s, multiples[0])], 1)
                                    for s in sources},
                      'from': multiples[0], 'to': multiples[-1], 'root': str(root)}))


if __name__ == '__main__':
  main()
