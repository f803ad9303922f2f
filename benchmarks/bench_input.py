"""Images/s of the CelebA input pipeline (array_record read + JPEG decode + centre crop +
resize) on fake face-sized JPEGs: one JSON line per (workers, jpeg_draft) setting.

  pip install -e '.[prepare]'          # TensorFlow only to build the fake records
  python benchmarks/bench_input.py     # 3,000 images at 64×64, workers 0 and one per core

The fake JPEGs are 218×178 smooth colour fields with pixel noise, quality 90, about the
size and decode cost of real CelebA files (mean bytes reported as jpeg_kb). Also reported:
the records read alone (no image decode) and the .npy cache reload of a decoded split.
The machine is shared: load_avg is the 1-minute load average before each timing.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from lsei_jax.data import celeba, celeba_fake, prepare_celeba  # noqa: E402


def face_like_jpegs(num: int, seed: int = 0) -> list[bytes]:
  """Smooth random colour fields + noise (σ=6): real CelebA files average ~10 kB."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:218, 0:178] / 178.0
  out = []
  for _ in range(num):
    a = rng.uniform(-1, 1, (3, 3))
    img = 128 + 60 * np.stack([np.sin(3 * a[c, 0] * xx + 4 * a[c, 1] * yy + a[c, 2] * 6)
                               for c in range(3)], -1)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, 'JPEG', quality=90)
    out.append(buf.getvalue())
  return out


def build(root: str, num: int) -> tuple[str, float]:
  """Fake CelebA prepared as array_record under root/tfds; returns (data_dir, mean kB)."""
  raw, data_dir = os.path.join(root, 'raw'), os.path.join(root, 'tfds')
  jpegs = face_like_jpegs(num)
  orig = celeba_fake.make_images
  celeba_fake.make_images = lambda n, seed=0: (jpegs, np.zeros((n, 3), np.uint8))
  try:
    celeba_fake.write_raw_files(raw, num, fractions=(0.98, 0.01))  # nearly all in train
  finally:
    celeba_fake.make_images = orig
  celeba_fake.install_as_cached_download(data_dir, raw)
  prepare_celeba.prepare(data_dir, manual_dir=os.path.join(root, 'manual'))
  return data_dir, float(np.mean([len(j) for j in jpegs]) / 1024)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--num', type=int, default=3000)
  ap.add_argument('--image', type=int, default=64)
  ap.add_argument('--batch', type=int, default=256, help='grain batch (per worker)')
  ap.add_argument('--workers', default=f'0,{os.cpu_count()}')
  ap.add_argument('--drafts', default='1,0', help='jpeg_draft settings to time (1 = on)')
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as root:
    data_dir, kb = build(root, args.num)
    src = celeba.open_source(data_dir, 'train')
    n = len(src)
    common = dict(impl='lsei_jax', stage='input_celeba', image=args.image, batch=args.batch,
                  num=n, jpeg_kb=round(kb, 1), cpus=os.cpu_count())

    t0 = time.perf_counter()
    for i in range(n):
      src[i]
    dt = time.perf_counter() - t0
    print(json.dumps(dict(common, variant='read_records_only', workers=0,
                          images_per_s=round(n / dt, 1), seconds=round(dt, 2),
                          load_avg=os.getloadavg()[0])), flush=True)
    for draft in (bool(int(x)) for x in args.drafts.split(',')):
      for w in (int(x) for x in args.workers.split(',')):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        celeba.decode_split(src, n, args.image, draft=draft, workers=w, batch=args.batch)
        dt = time.perf_counter() - t0
        print(json.dumps(dict(common, variant='read_decode_crop_resize', workers=w,
                              jpeg_draft=draft, images_per_s=round(n / dt, 1),
                              seconds=round(dt, 2), load_avg=load)), flush=True)
    celeba.read(data_dir, 'train', args.image, workers=0)  # writes the .npy cache
    t0 = time.perf_counter()
    celeba.read(data_dir, 'train', args.image, workers=0)
    dt = time.perf_counter() - t0
    print(json.dumps(dict(common, variant='npy_cache_reload', workers=0,
                          images_per_s=round(n / dt, 1), seconds=round(dt, 3),
                          load_avg=os.getloadavg()[0])), flush=True)


if __name__ == '__main__':
  main()
