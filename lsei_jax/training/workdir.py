"""A workdir is used by one run at a time: WORKDIR/.lock names the holder (host, pid).

A lock left by a crashed run on this host (its pid is gone) is stale and taken over; a
lock held by a live process, or by another host, is refused with a message naming it.
With several processes (jax.distributed), process 0 takes the lock and the others learn
the outcome from it (a broadcast), so they fail or go on together.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

import jax
import numpy as np

from lsei_jax.errors import UserError, disk_full, disk_full_message, mark

LOCK_NAME = '.lock'


def check_workdir(workdir: str) -> None:
  """A workdir must be (or become) a writable directory; says which it is not."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise mark(NotADirectoryError(f'--workdir={workdir} is a file, not a directory'))
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent, os.W_OK):
    raise mark(PermissionError(f'--workdir={workdir}: {parent} is not writable'))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # being written, or garbage: treated as held by an unknown process


def _try_acquire(workdir: str) -> tuple[bool, str]:
  """(owned, error): owned=True if this call created the lock; error '' on success."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'workdir {workdir} is a file, not a directory; pass the directory the '
                    f'run was trained in')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    full = disk_full(e)
    raise UserError(disk_full_message(full, workdir) if full else
                    f'cannot create workdir {workdir}: {e.strerror or e}; pass a writable '
                    f'directory') from e
  path = os.path.join(workdir, LOCK_NAME)
  me = {'host': socket.gethostname(), 'pid': os.getpid()}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder is None:
        continue  # released meanwhile
      if not holder and time.time() - os.path.getmtime(path) > 10:
        os.remove(path)  # unreadable for 10 s: not one being written, a broken one
        continue
      if holder.get('host') == me['host'] and holder.get('pid') == me['pid']:
        return False, ''  # already ours (nested call in this process)
      if holder.get('host') == me['host'] and isinstance(holder.get('pid'), int) \
          and not _alive(holder['pid']):
        os.remove(path)  # stale: its process died without releasing it
        continue
      since = holder.get('since', '?')
      return False, (f'workdir {workdir} is in use by pid {holder.get("pid", "?")} on host '
                     f'{holder.get("host", "?")} (since {since}, lock {path}); wait for that '
                     f'run to finish, or if it no longer runs, delete {path}')
    except OSError as e:   # read-only (EROFS, EACCES), or full
      full = disk_full(e)
      raise UserError(disk_full_message(full, path) if full else
                      f'workdir {workdir} is not writable (cannot create its lock {path}: '
                      f'{e.strerror or e}); make it writable, or copy the workdir to a '
                      f'writable place and pass that') from e
    try:
      with os.fdopen(fd, 'w') as f:
        json.dump(dict(me, since=time.strftime('%Y-%m-%d %H:%M:%S %Z')), f)
    except OSError as e:
      os.remove(path)  # never leave an empty lock behind
      full = disk_full(e)
      raise UserError(disk_full_message(full, path) if full else
                      f'cannot write the lock {path}: {e}') from e
    return True, ''
  return False, f'could not take the lock {path}; rerun'


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.lock for the duration (reentrant within one process)."""
  workdir = os.path.abspath(workdir)
  owned, error = False, ''
  if jax.process_index() == 0:
    try:
      owned, error = _try_acquire(workdir)
    except UserError as e:   # told to the other processes too, so none waits for it
      error = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error == ''))
    if not int(ok) and not error:
      error = f'workdir {workdir} is locked by another run (see process 0)'
  if error:
    raise UserError(error)
  try:
    yield
  finally:
    if owned:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, LOCK_NAME))
