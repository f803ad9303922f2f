"""Peak host memory of a training process against dataset size (issue 27): one JSON line
per (source, size) with the child's peak RSS (os.wait4's ru_maxrss), then a summary line
with each source's growth from the smallest to the largest size.

  python benchmarks/bench_memory.py                       # 2,000 → 32,000 images, 64×64
  python benchmarks/bench_memory.py --base=500 --steps=5  # quicker
  python benchmarks/bench_memory.py --root=/path/to/another/checkout   # its train.py

Each run is `train.py --config=configs/own_data.py --stages=classifier` with a few steps on
an image folder (PNG files + attributes.csv, `folder`), on a directory of .npy files
(`npy`, the memory-mapped numpy source) or on an .npz (`npz`, loaded whole by design: the
reference). Sizes are multiples of --base examples (80% of them the train split). The
persistent compilation cache is warmed by one discarded run first, so that every measured
run loads its executables instead of compiling them (compiling has its own peak).
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


def make_data(directory: Path, n: int, size: int, multiples: list[int]) -> dict:
  """The largest set as one image folder (a CSV per size listing its first rows), and a
  .npy directory and .npz per size → {(source, multiple): config overrides}."""
  images = make_images(n * max(multiples), size)
  attrs = (np.arange(len(images))[:, None] >> np.arange(2)) % 2   # two balanced attributes
  folder = directory / 'folder'
  folder.mkdir(parents=True, exist_ok=True)
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f'{i}.png', compress_level=1)
  sys.path.insert(0, str(ROOT))
  from lsei_jax.data import byo  # pylint: disable=g-import-not-at-top
  out = {}
  for m in multiples:
    k = n * m
    csv = directory / f'attributes_{m}.csv'
    csv.write_text('filename,a,b\n' + ''.join(f'{i}.png,{attrs[i, 0]},{attrs[i, 1]}\n'
                                            for i in range(k)))
    out[('folder', m)] = ['--config.data.name=folder', f'--config.data.path={folder}',
                          f'--config.data.csv={csv}']
    byo.save_npy_dir(str(directory / f'npy_{m}'), images[:k], attrs[:k], ['a', 'b'])
    out[('npy', m)] = ['--config.data.name=numpy', f'--config.data.path={directory}/npy_{m}']
    byo.save_npz(str(directory / f'd_{m}.npz'), images[:k], attrs[:k], ['a', 'b'])
    out[('npz', m)] = ['--config.data.name=numpy', f'--config.data.path={directory}/d_{m}.npz']
  return out


def peak_rss_mb(root: Path, overrides: list[str], workdir: str, steps: int, size: int,
                env: dict) -> tuple[float, float]:
  """(peak RSS in MB, seconds) of one train.py --stages=classifier child process."""
  cmd = [sys.executable, str(root / 'train.py'), f'--config={root}/configs/own_data.py',
         f'--workdir={workdir}', '--stages=classifier', '--config.data.task=a',
         f'--config.data.image_size={size}', f'--config.classifier.steps={steps}',
         '--config.classifier.warmup_steps=0', f'--config.checkpoint.every_steps={steps}',
         *overrides]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  err = proc.stderr.read().decode(errors='replace')
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}')
  return usage.ru_maxrss / 1024, time.perf_counter() - start   # Linux: ru_maxrss in KiB


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--base', type=int, default=2000, help='examples at 1×')
  p.add_argument('--multiples', default='1,4,16')
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--sources', default='folder,npy,npz')
  p.add_argument('--root', default=str(ROOT), help='checkout whose train.py runs')
  p.add_argument('--data', default='', help='reuse/keep the generated data here')
  args = p.parse_args()
  multiples = [int(m) for m in args.multiples.split(',')]
  sources = args.sources.split(',')
  root = Path(args.root).resolve()
  with tempfile.TemporaryDirectory() as tmp:
    data = Path(args.data or tmp) / 'data'
    runs = make_data(data, args.base, args.size, multiples)
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS=os.environ.get(
        'JAX_PLATFORMS', 'cpu'), LSEI_JAX_COMPILATION_CACHE=os.environ.get(
            'LSEI_JAX_COMPILATION_CACHE', os.path.join(tmp, 'jit_cache')))
    peak_rss_mb(root, runs[(sources[0], multiples[0])], os.path.join(tmp, 'warm'),
                args.steps, args.size, env)   # fills the compilation cache
    results = {}
    for source in sources:
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
