"""Outputs written whole or not at all: into a temporary file in the same directory, then
renamed over the target (os.replace is atomic on POSIX), so a crash or a full disk never
leaves a truncated file in place of a good one."""
from __future__ import annotations

import json
import os
from typing import Any, Callable

from lsei_jax.errors import UserError, disk_full, disk_full_message


def write_with(path: str, write: Callable[[str], Any]) -> None:
  """Calls write(tmp_path) for a temporary path with path's extension, then renames it to
  `path`. On failure the temporary file is removed and `path` is left as it was; a full
  disk is reported as a UserError naming `path`."""
  directory, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  # Same directory (same file system, so the rename is atomic); the extension is kept
  # because writers such as matplotlib's savefig pick the format from it.
  tmp = os.path.join(directory, f'.{stem}.tmp-{os.getpid()}{ext}')
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    full = disk_full(e)
    if full is not None:
      raise UserError(disk_full_message(full, path)) from e
    raise


def write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  write_with(path, write)


def write_json(path: str, obj: Any, indent: int = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent))
