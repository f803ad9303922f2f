"""The PyTorch reference (../shared/bench/torch_ref.py) on a CUDA GPU, for compare.py --device cuda.

  python benchmarks/torch_ref_device.py --ref_dir ../shared/bench --stage explainer ...

The reference creates every tensor and module without naming a device, so setting torch's
default device moves all of it; its timer reads the host clock around each step, so each
step is followed by a device synchronization (otherwise it would time kernel launches).
Everything else (arguments, JSON line) is the reference's own. Never imported by lsei_jax.
"""
from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
  ap = argparse.ArgumentParser(add_help=False)
  ap.add_argument('--ref_dir', required=True)
  known, rest = ap.parse_known_args()
  sys.path.insert(0, os.path.abspath(known.ref_dir))
  import torch  # pylint: disable=g-import-not-at-top
  import torch_ref  # pylint: disable=g-import-not-at-top
  if not torch.cuda.is_available():
    raise SystemExit('torch_ref_device.py: torch sees no CUDA device; run compare.py '
                     'without --device cuda on a CPU machine')
  torch.set_default_device('cuda')
  build_step = torch_ref.build_step

  def synchronized_build_step(args):
    step = build_step(args)

    def run():
      step()
      torch.cuda.synchronize()
    return run

  torch_ref.build_step = synchronized_build_step
  return torch_ref.main(rest)


if __name__ == '__main__':
  sys.exit(main())
