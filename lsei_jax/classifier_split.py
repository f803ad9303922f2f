"""A classifier given as two functions, cut at a hidden layer: c(x) = head(embed(x)).

`ClassifierSplit(embed, head, params)` is what the pipeline explains (docs/method.md §1):
`embed(params, x [B, H, W, 3]) -> h [B, d]` and `head(params, h [B, d]) -> logits [B, C]`,
both pure and jit-able. d and C are read from the functions (`dims`), never from a config
field. Constructors: `from_module` (a Flax linen module with `embed` / `head` methods, such
as `models.Classifier`), `split_at` (any Flax module cut after a named submodule), or the
dataclass itself for any pure function pair.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsei_jax import errors, fingerprints

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ClassifierSplit:
  """c = head ∘ embed with its parameters.

  embed: (params, images [B, H, W, 3] float32 in [0, 1]) → h [B, d].
  head: (params, h [B, d]) → logits [B, C]. Eval mode: rows independent, no dropout.
  params: any pytree both functions take (e.g. Flax variables with batch_stats).
  full: optional (params, images) → logits of the uncut model; `check_cut` compares it with
    head(embed(x)).
  name: what messages call the cut (e.g. "layer 'pool'").
  identity: for params computed from other inputs (the sanity check's random head), a hash
    of those inputs: what identifies the split in a workdir instead of the params' bytes,
    whose last bits depend on the device (training/given.py). '' for given weights.
  """
  embed: Callable[[Any, Array], Array]
  head: Callable[[Any, Array], Array]
  params: Any
  full: Callable[[Any, Array], Array] | None = None
  name: str = 'the cut'
  identity: str = ''

  def __call__(self, images: Array) -> Array:
    """Logits [B, C] = head(embed(images))."""
    return self.head(self.params, self.embed(self.params, images))

  def dims(self, input_shape: tuple[int, ...], dtype=jnp.float32) -> tuple[int, int]:
    """(d, C) from the functions' output shapes on one input of `input_shape` (no compute)."""
    x = jax.ShapeDtypeStruct((2,) + tuple(input_shape), dtype)
    h = _output_shape(self.embed, 'embed', '(params, images)', 'h [B, d]', self.params, x)
    if len(h.shape) != 2 or h.shape[0] != 2:
      raise errors.UserError(f'the classifier\'s embed returns shape {tuple(h.shape)} for 2 '
                             f'inputs; it must return h [B, d] (pool or flatten before '
                             f'{self.name})')
    logits = _output_shape(self.head, 'head', '(params, h)', 'logits [B, C]', self.params, h)
    if len(logits.shape) != 2 or logits.shape[0] != 2 or logits.shape[1] < 2:
      raise errors.UserError(f'the classifier\'s head returns shape {tuple(logits.shape)} for '
                             f'2 embeddings; it must return logits [B, C] with C ≥ 2 classes')
    return int(h.shape[1]), int(logits.shape[1])

  def check_cut(self, images: Array, *, tolerance: float = 1e-4) -> None:
    """Raises ValueError when head(embed(x)) is not the uncut model's output on `images`
    (e.g. the layers after the cut still read the input through a skip connection)."""
    if self.full is None:
      return
    _output_shape(self.full, 'model', '(params, images)', 'logits [B, C]', self.params, images)
    want = np.asarray(jax.jit(self.full)(self.params, images), np.float64)
    got = np.asarray(jax.jit(lambda p, x: self.head(p, self.embed(p, x)))(self.params, images),
                     np.float64)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if got.shape != want.shape or not err <= tolerance * (1.0 + np.max(np.abs(want))):
      raise ValueError(
          f'{self.name} is not a cut of the model: head(embed(x)) differs from the model\'s '
          f'output by {err:.3g} on a batch, so the layers after it still read the input (or '
          f'an activation before it) through another path, e.g. a skip connection; cut at a '
          f'layer every path goes through (e.g. after the last residual block or the pooling)')


def _describe(out: Any) -> str:
  if isinstance(out, (tuple, list)):
    return f'a {type(out).__name__} of {len(out)} outputs'
  if isinstance(out, dict):
    return f'a dict with keys {sorted(map(str, out))[:4]}'
  return f'a {type(out).__name__}'


def _output_shape(fn: Callable, what: str, args: str, want: str, *inputs
                  ) -> jax.ShapeDtypeStruct:
  """fn's output shape on `inputs` (no compute); a UserError naming the fix when fn does not
  take `args` (2 positional arguments), reads params it was not given, or returns other
  than one array `want`."""
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):   # a builtin or C function: let the call say
    sig = None
  if sig is not None:
    try:
      sig.bind(*([None] * len(inputs)))
    except TypeError:
      raise errors.UserError(
          f'the classifier\'s {what} must take {len(inputs)} arguments {args}, but it is '
          f'{getattr(fn, "__name__", "a function")}{sig}; e.g. lambda params, x: f(x) for a '
          f'function without params') from None
  try:
    out = jax.eval_shape(fn, *inputs)
  except KeyError as e:
    raise errors.UserError(f'the classifier\'s {what} reads the entry {e} of its params, '
                           f'which the params given lack; pass the params it was written '
                           f'for') from e
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise errors.UserError(
        f'the classifier\'s {what} returns {_describe(out)}, not one array {want}; return '
        f'that alone, e.g. for a model returning (logits, aux): lambda p, x: f(p, x)[0], or '
        f'split_at(…, method=…) naming a method that returns the logits alone')
  return out


def _accepted(fn: Callable, kwargs: dict) -> dict:
  """The keyword arguments `fn` accepts (all of them if it takes **kwargs)."""
  params = inspect.signature(fn).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return dict(kwargs)
  return {k: v for k, v in kwargs.items() if k in params}


def _check_variables(variables: Any) -> None:
  if not hasattr(variables, 'keys') or 'params' not in variables:
    got = list(variables.keys()) if hasattr(variables, 'keys') else type(variables).__name__
    raise ValueError(f"variables must be Flax variables {{'params': …, 'batch_stats': …}}, "
                     f'got {got}')


def from_module(module: nn.Module, variables: Any, *, embed: str = 'embed',
                head: str = 'head', **apply_kwargs) -> ClassifierSplit:
  """A split from a module's own `embed(x)` and `head(h)` methods (e.g. `models.Classifier`).

  apply_kwargs (e.g. train=False) go to each method that accepts them, and to __call__,
  which `check_cut` compares with.
  """
  _check_variables(variables)
  cls = type(module)
  for m in (embed, head):
    if not callable(getattr(cls, m, None)):
      raise ValueError(f'{cls.__name__} has no method {m!r}; use split_at(module, variables, '
                       f"layer='…') to cut it at a named submodule")
  try:
    fns = _module_fns(module, embed, head, tuple(sorted(apply_kwargs.items())))
  except TypeError:  # unhashable module or kwargs: the same functions, not shared
    fns = _module_fns.__wrapped__(module, embed, head, tuple(sorted(apply_kwargs.items())))
  return ClassifierSplit(*fns[:2], params=variables, full=fns[2],
                         name=f'{cls.__name__}.{embed}/{head}')


@functools.lru_cache(maxsize=32)
def _module_fns(module: nn.Module, embed: str, head: str, kwargs: tuple) -> tuple:
  """(embed, head, full) apply functions of a module, one set per (module, methods, kwargs):
  the same function objects each time, so jitted code built from them is reused."""
  cls, apply_kwargs = type(module), dict(kwargs)
  kw = {m: _accepted(getattr(cls, m), apply_kwargs) for m in (embed, head, '__call__')}
  return (lambda v, x: module.apply(v, x, method=embed, **kw[embed]),
          lambda v, h: module.apply(v, h, method=head, **kw[head]),
          lambda v, x: module.apply(v, x, **kw['__call__']))


def split_at(module: nn.Module, variables: Any, layer: str, *, example: Array,
             method: str = '__call__', **apply_kwargs) -> ClassifierSplit:
  """Cuts `module` after the submodule at path `layer` ('pool', 'backbone/block3'): embed is
  everything up to that submodule's output (flattened to [B, d]), head the rest.

  Works through Flax method interception, so the module needs no changes. The head runs the
  module with the layer's output replaced by h; the layers before it see zeros and, under
  jit, are dropped as dead code — unless the head still reads them (a skip connection
  around the cut), which the check on `example` (a batch of inputs) refuses by name.
  variables may hold batch_stats: pass the kwargs that select inference mode (e.g.
  train=False), so BatchNorm uses its running averages.
  """
  _check_variables(variables)
  example = jnp.asarray(example)
  in_shape, in_dtype = tuple(example.shape[1:]), example.dtype
  cls = type(module).__name__

  def run(v, x, replace=None):
    seen, captured = [], []

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name != '__call__':
        return next_fun(*args, **kwargs)
      path = '/'.join(context.module.path)
      seen.append(path)
      if path != layer:
        return next_fun(*args, **kwargs)
      out = next_fun(*args, **kwargs) if replace is None else replace(args)
      captured.append(out)
      return out

    with nn.intercept_methods(interceptor):
      y = module.apply(v, x, method=method, **apply_kwargs)
    if len(captured) != 1:
      if not captured:
        called = ', '.join(sorted({p for p in seen if p})) or 'none'
        raise ValueError(f'split_at: {cls} calls no submodule {layer!r}; its submodules '
                         f'are: {called}')
      raise ValueError(f'split_at: submodule {layer!r} of {cls} is called {len(captured)} '
                       f'times (a shared module); cut at a layer called once')
    return y, captured[0]

  out = jax.eval_shape(lambda v, x: run(v, x)[1], variables, example[:1])
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise ValueError(f'split_at: layer {layer!r} returns {type(out).__name__}, not one array')
  out_shape = tuple(out.shape[1:])

  def embed(v, x):
    h = run(v, x)[1]
    return h.reshape(h.shape[0], -1)

  def head(v, h):
    x0 = jnp.zeros((h.shape[0],) + in_shape, in_dtype)
    return run(v, x0, replace=lambda _: h.reshape((h.shape[0],) + out_shape).astype(out.dtype))[0]

  split = ClassifierSplit(embed=embed, head=head, params=variables,
                          full=lambda v, x: module.apply(v, x, method=method, **apply_kwargs),
                          name=f'layer {layer!r} of {cls}')
  split.check_cut(example)
  return split


# ----------------------------------------------------------------------- independent rows
# Rows of one image embedded in batches of other sizes or orders differ by float rounding
# only: XLA may block a matmul or convolution differently by batch size, and a GPU's TF32
# keeps 10 mantissa bits (relative error ≈ 5e-4 per rounding, a few layers deep). A row
# that reads the rest of its batch (batch statistics, dropout) differs by O(its scale).
ROW_TOLERANCE = 2e-3
_FIX = ('evaluate it in inference mode: pass train=False (or deterministic=True), no '
        'dropout, BatchNorm with its running averages (use_running_average=True), nothing '
        'computed over the batch')


def _row_error(a, b) -> float:
  """max |a − b| relative to 1 + max |a| (rows [B, k] as float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return float('inf')
  return float(np.max(np.abs(a - b)) / (1.0 + np.max(np.abs(a)))) if a.size else 0.0


def check_independent_rows(split: ClassifierSplit, images: Array, *,
                           tolerance: float = ROW_TOLERANCE) -> None:
  """Raises UserError unless embed and head give each row regardless of its batch.

  images: [B, H, W, 3] float in [0, 1], B ≥ 2 (the first 8 are used). The rows of one
  batch are compared (relative to 1 + max |row|, see ROW_TOLERANCE) with a second call on
  it (deterministic), the batch in reverse order, and its first image alone; head is
  checked the same way on the batch's h. Evaluation batches the test split at
  config.eval.batch_size, so a row that reads its batch changes every metric with it.
  """
  x = jnp.asarray(images, jnp.float32)[:8]
  if len(x) < 2:
    raise errors.UserError('check_independent_rows needs at least 2 images')
  embed = jax.jit(split.embed)
  h = embed(split.params, x)
  for what, f, rows in (('embed', embed, x), ('head', jax.jit(split.head), h)):
    want = h if what == 'embed' else f(split.params, rows)
    trials = (('a second call on the same batch', f(split.params, rows)),
              (f'the batch of {len(rows)} in reverse order',
               f(split.params, rows[::-1])[::-1]),
              (f'a batch of 1 instead of {len(rows)}', f(split.params, rows[:1])))
    for how, got in trials:
      err = _row_error(want[:len(got)], got)
      if not err <= tolerance:
        raise errors.UserError(
            f'{split.name}: its {what} gives other rows for the same inputs in '
            f'{how} (relative difference {err:.3g} > {tolerance:g}), so its outputs depend '
            f'on the rest of the batch (or on chance); {_FIX}')


# ----------------------------------------------------------------------- a random head
def logit_spread(logits: Array) -> Array:
  """Std of logits [B, C] after removing each row's mean over the classes (a shift softmax
  ignores): the scale that sets how confident softmax(logits) is. → scalar."""
  return jnp.std(logits - jnp.mean(logits, -1, keepdims=True))


def _linear_head(p, h: Array) -> Array:
  """h [B, d] @ kernel [d, C] + bias [C] → logits [B, C]."""
  return h @ p['random_head']['kernel'] + p['random_head']['bias']


@functools.lru_cache(maxsize=32)
def _given_embed(embed: Callable) -> Callable:
  """The given embed on the 'classifier' entry of a random-head split's params; one
  function per embed, so jitted code built from it is reused."""
  return lambda p, x: embed(p['classifier'], x)


def random_head(split: ClassifierSplit, key: Array, images: Array) -> ClassifierSplit:
  """`split` with its head replaced by a random linear one on the same embedding:
  head_rand(h) = (h − h̄) @ W, W = s·W0, W0 ~ N(0, 1/d) [d, C] drawn from `key`.

  The model-randomisation sanity check for any classifier (Adebayo et al. 2018, the top-layer
  step of their cascade): it needs only the functions, never the structure of the params.
  On the probe batch `images` [N, H, W, 3] (h = embed(images), h̄ its mean [d]):
  s makes logit_spread of the random logits equal to the real head's (comparable softmax
  temperatures), and the bias −h̄ @ W centres each class's logit, so the random head is not
  one class for every image (h ≥ 0 after a ReLU would give every logit the same random
  offset h̄ @ W). params = {'classifier': split.params, 'random_head': {kernel, bias}}.
  """
  images = jnp.asarray(images, jnp.float32)
  h = jax.jit(split.embed)(split.params, images)
  real = jax.jit(split.head)(split.params, h)
  target = float(logit_spread(real))
  if not np.isfinite(target):
    raise ValueError(f'the classifier gives non-finite logits on the probe batch of '
                     f'{len(images)} training images; check its params and {split.name}')
  d, num_classes = int(h.shape[1]), int(real.shape[1])
  w0 = jax.random.normal(key, (d, num_classes), jnp.float32) / np.sqrt(d)
  hbar = jnp.mean(h, 0)
  spread = float(logit_spread((h - hbar) @ w0))
  # A constant embedding leaves nothing to scale: the random head is then constant too.
  w = w0 * (target / spread if spread > 0 else 0.0)
  params = {'classifier': split.params,
            'random_head': {'kernel': w, 'bias': -(hbar @ w)}}
  return ClassifierSplit(embed=_given_embed(split.embed), head=_linear_head, params=params,
                         name=f'a random head on {split.name}',
                         identity=_random_head_identity(split, key, images))


def _random_head_identity(split: ClassifierSplit, key: Array, images: Array) -> str:
  """What a random head is a pure function of: the classifier (its own identity, or its
  params' and functions' hash), the key and the probe images' bytes."""
  digest = hashlib.sha256(fingerprints.split(split).encode())
  digest.update(np.asarray(jax.random.key_data(key)).tobytes())
  digest.update(np.ascontiguousarray(np.asarray(images, np.float32)).tobytes())
  return digest.hexdigest()[:16]


# Also reachable as constructors of the type: ClassifierSplit.from_module(…), .split_at(…).
ClassifierSplit.from_module = staticmethod(from_module)
ClassifierSplit.split_at = staticmethod(split_at)


def load_source(config) -> ClassifierSplit | None:
  """The classifier config.classifier.source names ('my_pkg.my_model:load'), or None.

  The loader is called with the config if it takes an argument, else with none, and must
  return a ClassifierSplit.
  """
  section = config.get('classifier') if hasattr(config, 'get') else None
  source = (section.get('source', '') if section is not None else '') or ''
  if not source:
    return None
  module_name, sep, fn_name = source.partition(':')
  if not sep or not module_name or not fn_name:
    raise ValueError(f"config.classifier.source={source!r} must be 'module.path:function'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'config.classifier.source={source!r}: cannot import {module_name!r} '
                     f'({e}); is its directory on PYTHONPATH?') from e
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise ValueError(f'config.classifier.source={source!r}: {module_name} has no function '
                     f'{fn_name!r}')
  split = fn(config) if inspect.signature(fn).parameters else fn()
  if not isinstance(split, ClassifierSplit):
    raise ValueError(f'config.classifier.source={source!r} returned {type(split).__name__}, '
                     f'not a lsei_jax.ClassifierSplit')
  return split
