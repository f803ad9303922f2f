"""How far a raw config travels: traces `train(config, workdir)` on configs/tiny.py and
follows the ConfigDict (the object passed in and every section of it, by identity) through
the call graph. Prints JSON:

  names    distinct functions (module.qualname) that hold it in a local variable
  returns  calls that re-enter a module the config had already left (A → B → A counts one)

Measured with sys.setprofile on every Python call; the compile cache and JAX are warmed by
the run itself, so only the first run's counts are reported (they do not depend on timing).
  python benchmarks/config_flow.py [--entry train|evaluate]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def _sections(config) -> set[int]:
  """ids of the config and of every ConfigDict section in it."""
  out, todo = set(), [config]
  while todo:
    node = todo.pop()
    out.add(id(node))
    todo.extend(v for v in node.values() if hasattr(v, 'items') and hasattr(v, 'lock'))
  return out


def trace(fn, config) -> dict:
  ids = _sections(config)
  holders: list[str] = []      # module of each call that holds the config, in order
  names: set[str] = set()

  def profile(frame, event, arg):
    if event != 'call':
      return
    module = frame.f_globals.get('__name__', '')
    if not module.startswith('lsei_jax'):
      return
    if any(id(v) in ids for v in frame.f_locals.values()):
      names.add(f'{module}.{frame.f_code.co_qualname}')
      holders.append(module)

  sys.setprofile(profile)
  try:
    fn()
  finally:
    sys.setprofile(None)
  rooms, returns, seen = [], 0, set()
  for m in holders:
    if rooms and rooms[-1] == m:
      continue
    returns += m in seen
    seen.add(m)
    rooms.append(m)
  return {'names': len(names), 'returns': returns, 'functions': sorted(names)}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--entry', choices=('train', 'evaluate'), default='train')
  args = ap.parse_args(argv)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  try:
    from lsei_jax.pipeline import evaluate, train  # pylint: disable=g-import-not-at-top
  except ImportError:   # before the run spec (lsei_jax < 0.2)
    from lsei_jax.reporting.evaluation import evaluate  # pylint: disable=g-import-not-at-top
    from lsei_jax.training.pipeline import train  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.sanity.enabled = False
  workdir = tempfile.mkdtemp(prefix='config_flow_')
  if args.entry == 'evaluate':
    train(config, workdir)
  fn = (lambda: train(config, workdir)) if args.entry == 'train' else \
      (lambda: evaluate(config, workdir))
  out = dict(entry=args.entry, **trace(fn, config))
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  main()
