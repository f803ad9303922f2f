"""Orbax checkpoints per stage, linked to the upstream checkpoints they were trained on.

Layout: WORKDIR/<stage>/<step>/{state, meta}. `meta` (JSON) records the stage name, the
total steps, whether the stage is complete, a fingerprint of the parameters, the
identity {step, fingerprint} of every upstream stage it was trained on, and the
config fields that shape the checkpoint (signature.py): a change is refused by name.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp

from lsei_jax.data import fingerprint as fingerprint_lib
from lsei_jax.fingerprints import params as fingerprint  # noqa: F401  (a stage's params)
from lsei_jax.training import signature as signature_lib
from lsei_jax.errors import UserError, disk_full, disk_full_message


class CheckpointError(UserError, RuntimeError):
  """A checkpoint is missing, from another stage, or inconsistent with its upstream."""


def _jsonable(tree: Any) -> Any:
  return json.loads(json.dumps(tree, default=lambda x: list(x) if isinstance(x, tuple) else str(x)))


class StageCheckpoints:
  """CheckpointManager for one stage under WORKDIR/<stage>."""

  def __init__(self, workdir: str, stage: str, *, max_to_keep: int = 2,
               read_only: bool = False):
    self.stage = stage
    self.read_only = read_only
    self.directory = os.path.join(os.path.abspath(workdir), stage)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_meta(self, step: int) -> dict:
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta['meta']
    if meta.get('stage') != self.stage:
      raise CheckpointError(f'{self.directory}/{step} holds a checkpoint of stage '
                            f'{meta.get("stage")!r}, not {self.stage!r}')
    return meta

  def restore(self, step: int, template: Any) -> tuple[Any, dict]:
    """(state, meta) at `step`; `template` gives structure, shapes and shardings."""
    meta = self.read_meta(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out['state'], meta

  def save(self, step: int, state: Any, meta: dict) -> None:
    meta = _jsonable(dict(meta, stage=self.stage, step=int(step)))
    with signals_held():
      self._save(step, state, meta)

  def _save(self, step: int, state: Any, meta: dict) -> None:
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      full = disk_full(e)
      if full is None:
        raise
      # Orbax writes into a temporary directory first: older steps are intact.
      raise CheckpointError(disk_full_message(full, os.path.join(self.directory, str(step))))


  def set_aside(self, step: int) -> str:
    """Renames an unreadable step directory to <step>.unreadable-<n> (kept, never deleted),
    so that training can go on from an older step and save this step again."""
    src = os.path.join(self.directory, str(step))
    n = 0
    while os.path.exists(dst := f'{src}.unreadable-{n}'):
      n += 1
    if jax.process_index() == 0:
      os.rename(src, dst)
    self.manager.reload()
    return dst

  def close(self) -> None:
    self.manager.close()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
  """SIGINT and SIGTERM that arrive inside the block are delivered when it ends.

  A KeyboardInterrupt raised inside orbax's save leaves its asynchronous machinery half torn
  down: the checkpoint may be lost and the process prints 'RuntimeError: Event loop is
  closed' after the CLI's one-line error. Held, the signal stops training right after the
  save, which then counts as the last checkpoint. Signal handlers can only be set in the
  main thread; elsewhere the block runs as it is.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught: list[int] = []
  previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for s, handler in previous.items():  # None: a handler not set from Python
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    if caught:  # the restored handler runs now (the CLI's SIGTERM, Python's Ctrl-C)
      signal.raise_signal(caught[0])


def identity(meta: dict) -> dict:
  """What a downstream stage records about this checkpoint."""
  return {'step': meta['step'], 'fingerprint': meta['fingerprint']}


def check_upstream(stage: str, directory: str, recorded: dict, current: dict) -> None:
  """Refuses a stage checkpoint trained on other upstream checkpoints than the current ones."""
  for name, now in current.items():
    was = recorded.get(name)
    if was != now:
      raise CheckpointError(
          f'{stage} checkpoint in {directory} was trained on {name} {was}, but the '
          f'{name} checkpoint now in the workdir is {now}. Move {directory} away to '
          f'retrain {stage} on the current {name}, or restore the original {name}.')


def check_config(stage: str, directory: str, recorded: dict, current: dict) -> None:
  """Refuses a stage checkpoint whose signature (signature.stage_signature) differs from
  the current config's; names the fields."""
  if '_signature' in current and (legacy := signature_lib.legacy_message(stage, directory,
                                                                          recorded)):
    raise CheckpointError(legacy)
  current = _jsonable(current)
  # A harmless field the stage no longer pins (a stage's signature_fix may pin one: inn's
  # fit on the validation split pins data.num_test) is not compared.
  recorded = {k: v for k, v in recorded.items()
              if k in current or k not in signature_lib.HARMLESS}
  changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
  data = fingerprint_lib.changed_parts(changed)
  # A changed data field (data.rho, …) changes the content too: then the field is named.
  changed = [k for k in changed if not k.startswith(fingerprint_lib.PREFIX)]
  if data and not changed:
    raise CheckpointError(
        f'the training data changed since stage {stage} in {directory} was trained: its '
        f'{", ".join(data)} differ (content hashes, data/fingerprint.py); restore the '
        f'original data, or train in a new workdir')
  if changed:
    detail = ', '.join(f'{k}: {recorded.get(k)!r} → {current.get(k)!r}' for k in changed)
    raise CheckpointError(
        f'config changed incompatibly for stage {stage} in {directory} ({detail}); use '
        f'the original values or a new workdir')
