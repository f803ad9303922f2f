"""Training metrics to WORKDIR/<stage>/metrics.jsonl and TensorBoard event files (process 0)."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Mapping

import jax

from lsei_jax.errors import UserError, disk_full, disk_full_message


@contextlib.contextmanager
def _naming(directory: str):
  """A full disk while writing metrics is reported with the directory (the OSErrors of
  file objects and of tensorboardX carry no file name)."""
  try:
    yield
  except OSError as e:
    if disk_full(e) is None:
      raise
    raise UserError(disk_full_message(e, f'metrics in {directory}')) from e


class MetricWriter:

  def __init__(self, directory: str, tensorboard: bool = True):
    self._directory = directory
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._active:
      return
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(directory, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._active:
      return
    with _naming(self._directory):
      self._write(step, metrics)

  def _write(self, step: int, metrics: Mapping[str, float]) -> None:
    scalars = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    with _naming(self._directory):
      if self._jsonl is not None:
        self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
