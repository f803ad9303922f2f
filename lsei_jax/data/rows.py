"""Arrays on disk read by rows: a split whose images never live in host memory whole.

`Rows` is an .npy file (or a subset of its rows) that indexing reads with `os.pread`, only
the rows asked for: a training batch `rows[idx]` costs its own bytes, whatever the size of
the split. Not a np.memmap: pages touched through a mapping count in the process's resident
memory until the kernel reclaims them, so over a long run a mapping grows to the file size.

`spill` writes rows produced in chunks (decoded images) to an unlinked temporary .npy file
and returns them as `Rows`: disk, not memory, holds the split, and nothing is left behind;
`spill_at` does the same for rows that arrive out of order with their indices.
`Rows.open(path, start)` reads an .npy that starts `start` bytes into a file: an uncompressed
member of an .npz (`npz_member`); `npz_rows` reads a stored member in place and inflates a
compressed one into a temporary file.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from typing import Iterable

import numpy as np


class Rows:
  """Rows of a C-ordered .npy array [N, …] read on demand; `rows` selects and orders a
  subset of the file's rows (default: all). Indexing with an int, slice or index array
  returns a NumPy array; np.asarray(rows) reads everything (for whole-split consumers)."""

  def __init__(self, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype,
               rows: np.ndarray | None = None, owner: object | None = None):
    self._fd, self._offset, self._file_shape, self.dtype = fd, offset, shape, np.dtype(dtype)
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    self._owner = owner   # keeps the file open as long as any view of it lives
    self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

  @classmethod
  def open(cls, path: str, rows: np.ndarray | None = None, start: int = 0) -> 'Rows':
    """The .npy array (any dtype but object, C order) that starts at byte `start` of the
    file at `path` (0: an .npy file; an .npz member's offset: see npz_member)."""
    with open(path, 'rb') as f:   # the header alone
      f.seek(start)
      version = np.lib.format.read_magic(f)
      shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
      offset = f.tell()
    if fortran or dtype.hasobject or not shape:
      raise ValueError(f'{path}: expected a C-ordered numeric array [N, …], got '
                       f'{"Fortran order" if fortran else dtype}')
    handle = _File(os.open(path, os.O_RDONLY))
    return cls(handle.fd, offset, tuple(shape), dtype, rows, handle)

  @property
  def shape(self) -> tuple[int, ...]:
    n = self._file_shape[0] if self._rows is None else len(self._rows)
    return (n,) + tuple(self._file_shape[1:])

  @property
  def ndim(self) -> int:
    return len(self._file_shape)

  def __len__(self) -> int:
    return self.shape[0]

  def subset(self, rows: np.ndarray) -> 'Rows':
    """These rows (indices into this view), without reading them."""
    rows = np.asarray(rows, np.int64)
    base = rows if self._rows is None else self._rows[rows]
    return Rows(self._fd, self._offset, self._file_shape, self.dtype, base, self._owner)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, tuple):   # rows first, then the rest in memory
      return self[key[0]][(slice(None),) + key[1:]]
    n = len(self)
    if isinstance(key, (int, np.integer)):
      return self._read(np.array([int(key) % n if key < 0 else int(key)]))[0]
    idx = np.arange(n)[key] if isinstance(key, slice) else np.asarray(key)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    return self._read(idx.astype(np.int64).reshape(-1)).reshape(
        np.shape(idx) + self.shape[1:])

  def _read(self, idx: np.ndarray) -> np.ndarray:
    if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
      raise IndexError(f'row index out of range for {len(self)} rows')
    idx = np.where(idx < 0, idx + len(self), idx)
    file_rows = idx if self._rows is None else self._rows[idx]
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)
    flat = out.reshape(len(idx), self._row_bytes // self.dtype.itemsize).view(np.uint8)
    for i, r in enumerate(file_rows):
      got = os.preadv(self._fd, [flat[i]], self._offset + int(r) * self._row_bytes)
      if got != self._row_bytes:
        raise OSError(f'short read of row {r}: {got} of {self._row_bytes} bytes')
    return out

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class _File:
  """An open file descriptor closed when the last view of it is gone."""

  def __init__(self, fd: int):
    self.fd = fd

  def __del__(self, _close=os.close):   # bound now: at exit the module's globals are gone
    try:
      _close(self.fd)
    except OSError:
      pass


def spill_dir_of(data_config) -> str | None:
  """Where a run's rows spill (`spill`'s directory): config.data.cache_dir, or None (the
  system's temp dir) where it is unset or ''."""
  return data_config.get('cache_dir', '') or None


def spill(chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype,
          directory: str | None = None) -> Rows:
  """Writes `chunks` (arrays [n_i, …] whose rows add up to shape[0]) to an unlinked
  temporary .npy file under `directory` (default: the system's temp dir) → its Rows."""
  written = 0

  def pairs():
    nonlocal written
    for chunk in chunks:
      yield np.arange(written, written + len(chunk)), chunk
      written += len(chunk)
  out = spill_at(pairs(), shape, dtype, directory)
  if written != shape[0]:
    raise ValueError(f'spill: {written} rows written, {shape[0]} announced')
  return out


def npz_member(path: str, name: str) -> tuple[int, bool]:
  """(byte offset of member `name`.npy's data in the .npz at `path`, whether it is stored
  uncompressed): a stored member is an .npy file at that offset (np.savez), a deflated one
  (np.savez_compressed) cannot be read by rows."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(f'{name}.npy')
  with open(path, 'rb') as f:   # the local header's name and extra field precede the data
    f.seek(info.header_offset)
    local = f.read(30)
  if local[:4] != b'PK\x03\x04':
    raise ValueError(f'{path}: bad zip local header for {name}.npy')
  name_len, extra_len = struct.unpack('<HH', local[26:30])
  return info.header_offset + 30 + name_len + extra_len, info.compress_type == zipfile.ZIP_STORED


def spill_at(batches: Iterable[tuple[np.ndarray, np.ndarray]], shape: tuple[int, ...], dtype,
             directory: str | None = None, path: str | None = None) -> Rows:
  """Writes (indices int [b], rows [b, …]) pairs, in any order, into an .npy file of
  `shape` → its Rows. path None: an unlinked temporary file under `directory` (nothing left
  behind); else the file `path` (kept, e.g. a cache). Rows no pair writes read as zeros."""
  if path is None:
    fd, tmp = tempfile.mkstemp(suffix='.npy', prefix='lsei_jax_rows_', dir=directory or None)
    os.unlink(tmp)   # the open descriptor keeps the data until the last view is gone
  else:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    with os.fdopen(os.dup(fd), 'wb') as f:
      np.lib.format.write_array_header_1_0(
          f, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
              'shape': tuple(shape)})
      offset = f.tell()
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    os.ftruncate(fd, offset + shape[0] * row_bytes)
    for idx, values in batches:
      idx = np.asarray(idx, np.int64)
      if not len(idx):
        continue
      values = np.ascontiguousarray(values, dtype).reshape(len(idx), -1).view(np.uint8)
      bad = idx[(idx < 0) | (idx >= shape[0])]
      if len(bad):
        raise IndexError(f'spill_at: row {bad[0]} outside [0, {shape[0]})')
      # One write per run of consecutive rows (a chunk in order is one run), not per row.
      cuts = np.flatnonzero(np.diff(idx) != 1) + 1
      for lo, hi in zip([0, *cuts], [*cuts, len(idx)]):
        os.pwrite(fd, values[lo:hi].data, offset + int(idx[lo]) * row_bytes)
  except BaseException:
    os.close(fd)
    raise
  handle = _File(fd)
  return Rows(fd, offset, tuple(shape), dtype, None, handle)


def npz_rows(path: str, name: str, spill_dir: str | None = None) -> Rows | None:
  """uint8 member `name` of the .npz at `path` as Rows: read in place when stored (np.savez),
  inflated once, INFLATE_CHUNK rows at a time, into an unlinked temporary file under
  `spill_dir` when deflated (np.savez_compressed). None for any other dtype or layout (the
  caller reads it whole)."""
  try:
    offset, stored = npz_member(path, name)
  except (KeyError, ValueError, zipfile.BadZipFile):
    return None
  if stored:
    try:
      r = Rows.open(path, start=offset)
    except ValueError:   # Fortran order or a scalar
      return None
    return r if r.dtype == np.uint8 else None
  with zipfile.ZipFile(path) as z, z.open(f'{name}.npy') as member:
    version = np.lib.format.read_magic(member)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(member))
    if fortran or dtype != np.uint8 or not shape:
      return None
    row = int(np.prod(shape[1:], dtype=np.int64))

    def chunks():
      for s in range(0, shape[0], INFLATE_CHUNK):
        k = min(INFLATE_CHUNK, shape[0] - s)
        buf = member.read(k * row)
        if len(buf) != k * row:
          raise ValueError(f'{path}: {name}.npy is truncated ({len(buf)} of {k * row} bytes)')
        yield np.frombuffer(buf, np.uint8).reshape((k,) + tuple(shape[1:]))
    return spill(chunks(), tuple(shape), np.uint8, spill_dir)


# Rows inflated (and held) at a time from a compressed .npz member into its on-disk copy.
INFLATE_CHUNK = 1024
