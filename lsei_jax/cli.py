"""What train.py and eval.py share: logging, the XLA cache, and one-line errors."""
from __future__ import annotations

import logging as py_logging
import signal
import sys
import threading
from typing import Callable

import jax
from absl import flags, logging

from lsei_jax import compile_cache, errors

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



class _QuietLibraries(py_logging.Filter):
  """Without --verbose, no Orbax or asyncio logs: a failed save (a full disk, …) logs
  dozens of tracebacks from Orbax's threads, while the main thread raises the one error
  the user sees."""

  def filter(self, record):
    return not any(name in record.pathname for name in ('orbax', 'asyncio'))


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
  compile_cache.freeze_startup_objects()


def _sigterm(signum, frame):
  # Raised in the main thread wherever it is: training stops the way Ctrl-C stops it.
  raise KeyboardInterrupt(f'signal {signal.Signals(signum).name}')


def run_main(main: Callable[[], None]) -> None:
  """Runs main(); user errors, a full disk and interrupts become one 'error: …' line on
  stderr and exit status 1 (130 for an interrupt); anything else is a bug and keeps its
  traceback."""
  setup()
  in_main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, _sigterm) if in_main else None
  try:
    main()
  except KeyboardInterrupt as e:
    if FLAGS.verbose:
      raise
    how = str(e) if isinstance(e, errors.Interrupted) else (
        f'interrupted ({str(e) or "Ctrl-C"}) outside a training loop; saved '
        f'checkpoints are intact: rerun `{errors.resume_command()}` to go on')
    print(f'error: {how}', file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    full = errors.disk_full(e)
    if FLAGS.verbose or not (errors.is_user_error(e) or full is not None):
      raise
    if errors.is_user_error(e):  # its message names the path of a full disk, if any
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    else:
      msg = errors.disk_full_message(full)
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(1)
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, previous)
    if jax.process_count() > 1:
      jax.distributed.shutdown()
