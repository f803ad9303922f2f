"""Training metrics to WORKDIR/<stage>/metrics.jsonl and TensorBoard event files (process 0)."""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax


class MetricWriter:

  def __init__(self, directory: str, tensorboard: bool = True):
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
    scalars = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
