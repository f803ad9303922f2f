"""The one exception type for mistakes the user can fix (printed by the CLI as one line),
and helpers that turn the errors of input checking into it.

Anything that is not a UserError (or a disk-full OSError, or an interrupt) is a bug and
keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import sys
from typing import Iterator


class UserError(ValueError):
  """A bad input, config value or workdir state; the message names it and the fix.

  Subclasses ValueError so that code catching ValueError from input checks keeps working.
  """


class Interrupted(KeyboardInterrupt):
  """SIGINT / SIGTERM while a stage trained; says where it stopped and how to resume."""


# What input checking raises for a bad value (each of our checks names the field).
_INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
                 IsADirectoryError, PermissionError)
_MARK = '_lsei_user_error'


def mark(e: BaseException) -> BaseException:
  """Marks an exception of another type (FileNotFoundError, …) as the user's to fix,
  keeping its type for callers that catch it."""
  setattr(e, _MARK, True)
  return e


def is_user_error(e: BaseException) -> bool:
  return isinstance(e, UserError) or getattr(e, _MARK, False)


@contextlib.contextmanager
def as_user_errors() -> Iterator[None]:
  """Inside, a failed input check (ValueError, missing file, …) is marked as a user error
  (printed as one line by the CLI) and re-raised unchanged.

  Use only around code whose every such error is about the user's input (config
  validation, data loading), never around computations, where it would hide a bug.
  """
  try:
    yield
  except _INPUT_ERRORS as e:
    raise mark(e)


def disk_full(e: BaseException) -> OSError | None:
  """The ENOSPC / EDQUOT OSError in e's chain of causes (libraries wrap it), or None.

  `e.__cause__ or e.__context__`: the explicit cause, else the error being handled.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return e
    # TensorStore (Orbax's array writer) reports it as a ValueError with the OS message.
    text = str(e)
    if 'No space left on device' in text or (
        'RESOURCE_EXHAUSTED' in text and 'rror writing' in text):
      return OSError(errno.ENOSPC, 'No space left on device')
    e = e.__cause__ or e.__context__
  return None


def disk_full_message(e: OSError, path: str | None = None) -> str:
  where = path or e.filename or 'the output directory'
  return (f'no space left on the device writing {where} ({e.strerror or "disk full"}); '
          f'free some space and rerun: what was saved before is intact')


def resume_command() -> str:
  """The command line this process was started with, to rerun it."""
  return 'python ' + ' '.join(sys.argv) if sys.argv and sys.argv[0] else 'the same command'
