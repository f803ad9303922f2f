"""What train.py and eval.py share: logging, the XLA cache, and one-line errors."""
from __future__ import annotations

import logging as py_logging
import sys
from typing import Callable

import jax
from absl import flags, logging

from lsei_jax import compile_cache
from lsei_jax.checkpoints import CheckpointError
from lsei_jax.trainer import NonFiniteError

flags.DEFINE_bool('verbose', False, 'Show full tracebacks and library (Orbax) logs.')
flags.DEFINE_string('compilation_cache', None,
                    'Persistent XLA compilation cache directory ("" disables); default '
                    f'${compile_cache.ENV}, else {compile_cache.DEFAULT_DIR}.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-process runs: host:port of process 0 (jax.distributed). Unset on '
                    'Cloud TPU pods and SLURM, where JAX finds its peers itself with '
                    '--distributed.')
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process\'s index.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (implied by '
                  '--coordinator_address).')
FLAGS = flags.FLAGS

# Errors that are the user's to fix: one line, no traceback.
USER_ERRORS = (ValueError, KeyError, CheckpointError, NonFiniteError, FileNotFoundError,
               PermissionError, OSError)


class _QuietLibraries(py_logging.Filter):
  def filter(self, record):
    return 'orbax' not in record.pathname or record.levelno >= py_logging.ERROR


def parse_flags(argv):
  """absl's parser, with mistyped --config.* overrides as one-line errors (no traceback)."""
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError, TypeError, ValueError, flags.Error) as e:
    if '--verbose' in argv:
      raise
    msg = str(e.args[0] if e.args else e)
    # ml_collections reports an unknown field as a repr'd KeyError inside the flag error.
    msg = msg.replace('\\n', ' ').replace("\\'", "'").strip('\'" ')
    msg = ' '.join(msg.split())  # one line
    if 'Did you mean' in msg or isinstance(e, KeyError):
      msg = 'unknown config field ' + msg.replace("'", '')
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(1)


def setup() -> None:
  if not FLAGS.verbose:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.set_verbosity(logging.INFO)
  if FLAGS.distributed or FLAGS.coordinator_address:
    kwargs = {}
    if FLAGS.coordinator_address:
      kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                    num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                    initialization_timeout=120)
    jax.distributed.initialize(**kwargs)
    logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  compile_cache.enable(FLAGS.compilation_cache)


def run_main(main: Callable[[], None]) -> None:
  """Runs main(); user errors become 'error: …' on stderr and exit status 1."""
  setup()
  try:
    main()
  except USER_ERRORS as e:
    if FLAGS.verbose:
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  finally:
    if jax.process_count() > 1:
      jax.distributed.shutdown()
