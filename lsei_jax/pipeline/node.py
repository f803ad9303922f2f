"""A node of the stage graph, and the contexts that training and evaluation walk it with.

A `Node` owns everything the pipeline knows of one stage: its upstream stages, its config
section, the config sections its checkpoint signature pins, its train state template, its
step, its inputs (frozen arrays computed from upstream stages) and its evaluators
(`Context → dict` of metrics.json entries). `fit` trains it through the stage loop
(`trainer.run_stage`) and `load` restores its complete checkpoint; nodes that are not a
plain loop (the given classifier, the sanity check) override those two.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lsei_jax import concepts, data as data_lib
from lsei_jax.classifier_split import ClassifierSplit
from lsei_jax.data import fingerprint as data_fingerprint, rows
from lsei_jax.pipeline.spec import RunSpec
from lsei_jax.training import balance, checkpoints, parallel, signature as signature_lib
from lsei_jax.training.trainer import Stage, adopt_stage, load_complete, run_stage


@dataclasses.dataclass
class Context:
  """What a node reads while training or evaluating: the run spec, the workdir, a split
  (the train split in training, the test split in evaluation), finished stages' states and
  identities, and derived arrays computed once."""
  spec: RunSpec
  workdir: str
  data: data_lib.Dataset
  split: str = 'train'   # which split `data` is
  hooks: Sequence[Callable] = ()
  adopt: dict = dataclasses.field(default_factory=dict)  # {stage: (state, source workdir)}
  classifier: ClassifierSplit | None = None      # set once the classifier node is done
  states: dict = dataclasses.field(default_factory=dict)
  metas: dict = dataclasses.field(default_factory=dict)
  identities: dict = dataclasses.field(default_factory=dict)
  figures: dict = dataclasses.field(default_factory=dict)   # evaluation's arrays to draw
  _cache: dict = dataclasses.field(default_factory=dict)

  @property
  def mesh(self):
    return self.spec.mesh

  @property
  def mods(self):
    return self.spec.mods

  def derived(self, key: str, fn: Callable[[], Any]) -> Any:
    """A value computed once (from finished upstream stages) and reused."""
    if key not in self._cache:
      self._cache[key] = fn()
    return self._cache[key]

  def params(self, stage: str):
    return self.states[stage].params

  def record(self, name: str, state: Any, meta: dict) -> None:
    self.states[name], self.metas[name] = state, meta
    self.identities[name] = checkpoints.identity(meta) if 'fingerprint' in meta else meta

  def map(self, fn: Callable, params: Any, arrays: dict, desc: str | None = None) -> Any:
    """fn over `arrays` in batches of config.eval.batch_size on the mesh (NumPy out)."""
    return parallel.map_in_batches(fn, params, arrays, self.spec.config.eval.batch_size,
                                   self.mesh, desc)

  def map_to_disk(self, fn: Callable, params: Any, arrays: dict, desc: str | None = None
                  ) -> rows.Rows:
    """`map`'s rows (one array out) written to this host's disk as its batches come, never
    held whole: an unlinked temporary .npy under config.data.cache_dir (default the system's
    temp dir), read per batch (data.rows.Rows). Every host holds every row, as `map` gives
    every host all of them: the stages draw any row of the split on any host."""
    out = parallel.map_batches(fn, params, arrays, self.spec.config.eval.batch_size,
                               self.mesh, desc)
    n = len(next(iter(arrays.values())))
    first = next(out)
    return rows.spill(itertools.chain([first], out), (n,) + first.shape[1:], first.dtype,
                      rows.spill_dir_of(self.spec.config.data))


@dataclasses.dataclass(frozen=True)
class Node:
  """One stage. template: (spec, init key) → a fresh, unreplicated train state; step: ctx →
  the compiled data-parallel step; inputs: ctx → (arrays [N, …] batches are drawn from, host
  transform of a batch); weights: ctx → sampling weights [N] or None (uniform epochs);
  extra: ctx → replicated extra step arguments; signature_sections: config sections its
  checkpoint pins (training/signature.py); signature_fix: spec, signature → signature (what
  the sections alone do not say); stream: its random stream's name (default: its name);
  enabled: config → whether a full run trains it; present: ctx → whether evaluation
  loads it; evaluators: Context → dict of metrics.json entries (ctx.data: the test split)."""
  name: str
  upstream: tuple[str, ...]
  section: str
  signature_sections: tuple[str, ...] = ()
  template: Callable[[RunSpec, jax.Array], Any] | None = None
  step: Callable[[Context], Callable] | None = None
  inputs: Callable[[Context], tuple[dict, Callable[[dict], dict]]] | None = None
  weights: Callable[[Context], np.ndarray | None] = lambda ctx: None
  extra: Callable[[Context], tuple] = lambda ctx: ()
  signature_fix: Callable[[RunSpec, dict], dict] = lambda spec, sig: sig
  stream: str = ''
  enabled: Callable[[Any], bool] = lambda config: True
  evaluators: tuple[Callable[[Context], dict], ...] = ()
  trained: bool = True   # has a train loop with steps, batch_size and an optimizer
  present: Callable[[Context], bool] = lambda ctx: True   # evaluation loads it
  optional: bool = False   # its config section may be absent (enabled says whether it runs)

  @property
  def stream_name(self) -> str:
    return self.stream or self.name

  def signature(self, spec: RunSpec) -> dict:
    """Fields that must not change while a workdir holds this stage's checkpoints."""
    sig = signature_lib.stage_signature(spec.config, self.signature_sections)
    sig.update(data_fingerprint.signature_fields(spec.config.data))  # the data's content
    return self.signature_fix(spec, sig)

  def rngs(self, spec: RunSpec) -> tuple[jax.Array, jax.Array]:
    """(init key, step key) from the node's named stream."""
    init_key, step_key = jax.random.split(spec.stream(self.stream_name))
    return init_key, step_key

  def fit(self, ctx: Context, link: dict) -> tuple[Any, dict]:
    """Trains the stage in ctx.workdir (resuming), or adopts a state trained elsewhere on
    the same inputs (ctx.adopt); → (final state, meta)."""
    from lsei_jax.pipeline import templates  # pylint: disable=g-import-not-at-top
    spec, cfg = ctx.spec, ctx.spec.section(self.section)
    if self.name in ctx.adopt:   # trained already on the same inputs: stored, not retrained
      trained, source = ctx.adopt[self.name]
      return adopt_stage(Stage(self.name, cfg.steps, templates.restore_target(spec, self.name),
                               step=None, batch_fn=None, rng=None, upstream=link,
                               signature=self.signature(spec)),
                         ctx.workdir, trained, source, hooks=ctx.hooks)
    arrays, prepare = self.inputs(ctx)
    n = len(next(iter(arrays.values())))
    order_seed = spec.stream_seed(f'{self.stream_name}/batches')
    pi, pc = jax.process_index(), jax.process_count()
    weights = self.weights(ctx)
    if weights is None:
      indices = lambda step: data_lib.batch_indices(n, cfg.batch_size, step, order_seed, pi, pc)
    else:   # balanced stages: examples drawn ∝ weights (balance.py)
      indices = lambda step: balance.weighted_batch_indices(weights, cfg.batch_size, step,
                                                            order_seed, pi, pc)
    batch_fn = lambda step: prepare({k: v[indices(step)] for k, v in arrays.items()})
    init_key, step_key = self.rngs(spec)
    ck = spec.config.checkpoint
    return run_stage(
        Stage(self.name, cfg.steps, templates.initial_state(spec, self.name, init_key),
              self.step(ctx), batch_fn, step_key, extra=self.extra(ctx), upstream=link,
              signature=self.signature(spec)),
        ctx.workdir, spec.mesh, save_every=ck.every_steps, max_to_keep=ck.max_to_keep,
        log_every=spec.config.log_every,
        steps_per_dispatch=int(spec.config.get('steps_per_dispatch', 1)), hooks=ctx.hooks)

  def load(self, ctx: Context, link: dict) -> tuple[Any, dict]:
    """The stage's complete checkpoint in ctx.workdir, its upstream link checked."""
    from lsei_jax.pipeline import templates  # pylint: disable=g-import-not-at-top
    state, meta = load_complete(ctx.workdir, self.name,
                                templates.restore_target(ctx.spec, self.name),
                                self.signature(ctx.spec))
    check_link(self.name, meta, link, ctx.workdir)
    return state, meta


def check_link(stage: str, meta: dict, link: dict, workdir: str) -> None:
  """A checkpoint was trained on the upstream checkpoints (or given classifier) of now."""
  recorded = meta.get('upstream', {})
  was, now = recorded.get('classifier'), link.get('classifier')
  if now is not None and was != now and ('given' in now or 'given' in (was or {})):
    raise checkpoints.CheckpointError(
        f'{stage} checkpoint in {workdir}/{stage} was trained on classifier {was}, but the '
        f'classifier now is {now}: give the original classifier, or use a new workdir')
  checkpoints.check_upstream(stage, f'{workdir}/{stage}', recorded, link)


def concept_signature(spec: RunSpec, sig: dict) -> dict:
  """The concept learner's kind and sizes shape ĥ: every stage downstream of it pins them."""
  if concepts.kind_of(spec.config) != 'dvae':
    sig.update(concepts.signature(spec.config))
  return sig
