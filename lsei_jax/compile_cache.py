"""JAX's persistent compilation cache, on by default for the CLI and library entry points,
the quicker XLA options for jits that only initialise parameters, and the CLI's garbage
collector setting that keeps tracing quick.

A second run of the same stage (or the same evaluation) loads its executables from disk
instead of compiling them again (each explainer step takes seconds to compile on CPU).
"""
from __future__ import annotations

import gc
import os
from typing import Any

import jax
from absl import logging
from jax._src import compilation_cache as _jax_internal
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

DEFAULT_DIR = os.path.expanduser('~/.cache/lsei_jax/xla')
ENV = 'LSEI_JAX_COMPILATION_CACHE'
# Compilations faster than this are not stored (a load costs milliseconds). At 0.5 s a warm
# demo still compiled 37 of its 61 executables (3.7 s); at 0.05 s, 20 (0.6 s):
# benchmarks/time_to_explanation.py's cache columns, docs/performance.md § Compilation.
MIN_COMPILE_SECS = 0.05


def resolve(cache_dir: str | None = None) -> str:
  """The directory to use: cache_dir, else $LSEI_JAX_COMPILATION_CACHE, else a directory
  JAX is already configured with, else DEFAULT_DIR. '' means off."""
  if cache_dir is not None:
    return cache_dir
  if ENV in os.environ:
    return os.environ[ENV]
  return jax.config.jax_compilation_cache_dir or DEFAULT_DIR


def enable(cache_dir: str | None = None) -> str:
  """Turns the persistent cache on (see `resolve` for the directory; '' leaves it off).

  Does nothing where JAX's own switch is off (jax_enable_compilation_cache=False). Works
  after earlier compilations too: JAX decides once whether to use a cache, so that
  decision is reset when the directory changes. Returns the directory in use ('' if none).
  """
  path = resolve(cache_dir)
  if not path or not jax.config.jax_enable_compilation_cache:
    return ''
  _replace_corrupt_entries()
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
    _jax_cache.reset_cache()
  return path


def init_compiler_options() -> dict[str, Any]:
  """XLA options for jitting parameter initialisation (`model.init`, initial train states:
  threefry bits and the initialisers' elementwise maths, run once): on CPU they compile
  3-6× faster at LLVM -O1 than at the default -O3 (configs/shapes.py's classifier
  4.2 → 1.2 s, explainer 4.6 → 0.8 s) into bitwise the same values (at -O0 they differ).
  Empty off CPU. Not for steps: they run many times, and reduce floats in an order the
  optimiser may change.
  """
  return {'xla_backend_optimization_level': 1} if jax.default_backend() == 'cpu' else {}


def _replace_corrupt_entries() -> None:
  """Makes an unreadable cache entry (truncated, garbage, from another JAX) a miss that is
  deleted, so the fresh compilation is written in its place: JAX alone warns and recompiles
  on every run, since its cache never overwrites an existing key. Installed once."""
  read = _jax_internal.get_executable_and_time
  if getattr(read, '_lsei_replaces_corrupt', False):
    return

  def get_executable_and_time(cache_key, compile_options, backend, *args, **kwargs):
    try:
      return read(cache_key, compile_options, backend, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (whatever a bad entry raises)
      cache = _jax_internal._get_cache(backend)  # pylint: disable=protected-access
      path = getattr(cache, 'path', None)
      if path is None:
        raise
      for suffix in ('-cache', '-atime'):
        try:
          os.remove(os.path.join(str(path), f'{cache_key}{suffix}'))
        except OSError:
          pass
      logging.info('replaced the unreadable compilation cache entry %s (%s: %s)', cache_key,
                   type(e).__name__, e)
      return None, None

  get_executable_and_time._lsei_replaces_corrupt = True  # pylint: disable=protected-access
  _jax_internal.get_executable_and_time = get_executable_and_time


def freeze_startup_objects() -> None:
  """Moves every object alive now (after the imports: about 180,000 of jax, flax, optax,
  TFDS) into the garbage collector's permanent generation, which its collections skip.

  Tracing and lowering allocate fast, so Python runs full collections during them, and
  each walked every imported object (0.15 s on 2 CPU cores): a warm demo spent 1.2 of its
  3.8 CPU seconds of tracing and lowering in them (benchmarks/time_to_explanation.py
  --by_function). For a process's entry point (train.py, eval.py), not for a library
  caller's process: what is frozen is never freed, which costs nothing for modules.
  """
  gc.freeze()
