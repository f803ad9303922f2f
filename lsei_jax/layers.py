"""Convolution layers written in the form XLA:CPU runs fastest, same parameters and outputs
as their flax.linen counterparts (checkpoints are interchangeable).

- `Conv` / `conv2d_same`: nn.Conv with 'SAME' padding. For stride > 1 the input gradient
  is computed as stride-1 "phase" convolutions instead of XLA's convolution over a
  zero-dilated input (measured on the 2-core CPU at batch 64: the 32→32 stride-2 layer's
  forward + backward 70 → 35 ms).
- `Upsample2x`: nn.ConvTranspose(k=4, s=2, 'SAME') as four stride-1 phase convolutions,
  each a `canonical_conv`: its gradients (every reverse-mode order) stay in the one conv
  form XLA:CPU runs fast inside loops too (the Fisher estimator's chunks).
- `Dense`: nn.Dense, optionally with bfloat16 matmul operands and float32 accumulation
  (`compute_dtype`, config.model.compute_dtype): mixed precision where it pays on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
_DN = ('NHWC', 'HWIO', 'NHWC')
COMPUTE_DTYPES = ('float32', 'bfloat16')


def mixed_matmul(x: Array, kernel: Array, compute_dtype: str = 'float32') -> Array:
  """x [..., n] @ kernel [n, m] → [..., m] float32.

  'float32': exactly nn.Dense's dot. 'bfloat16': both operands rounded to bfloat16, products
  accumulated in float32 (preferred_element_type), so only the operands lose precision;
  on this project's 2-core CPU a large bf16 dot runs ≈ 2× f32, small ones (< ~10⁸ MACs)
  gain nothing. Reverse mode gives float32 cotangents rounded to bfloat16 at the cast.
  """
  dims = (((x.ndim - 1,), (0,)), ((), ()))
  if compute_dtype == 'float32':
    return lax.dot_general(x, kernel, dims)
  if compute_dtype != 'bfloat16':
    raise ValueError(f'compute_dtype {compute_dtype!r}: expected one of {COMPUTE_DTYPES}')
  return lax.dot_general(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), dims,
                         preferred_element_type=jnp.float32)


def _conv(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  return lax.conv_general_dilated(x, kernel, strides, 'SAME', dimension_numbers=_DN)


def conv_by_phases(x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
  """The same as lax's strided 'SAME' conv, as a sum of stride-1 'VALID' convs.

  With x zero-padded as 'SAME' pads it, output (i, j) reads padded rows s·i + a. Taps with
  a ≡ u (mod s) read the u-th row phase x_pad[u::s] at rows i + m (a = u + s·m), so each
  (row phase, column phase) pair is an ordinary stride-1 conv of that phase with the
  kernel's taps kernel[u::s, v::s]. Every tap is used once: no extra FLOPs, and the
  reverse-mode gradient w.r.t. x is stride-1 convs plus an interleave.
  x [B, H, W, C], kernel [kh, kw, C, O] → [B, ceil(H/s), ceil(W/s), O].
  """
  (sh, sw), (kh, kw) = strides, kernel.shape[:2]
  b, h, w, c = x.shape
  (plh, phh), (plw, phw) = lax.padtype_to_pads((h, w), (kh, kw), strides, 'SAME')
  ho, wo = -(-h // sh), -(-w // sw)
  # Extra s rows/cols of zeros so every phase slice below is in range.
  xp = jnp.pad(x, ((0, 0), (plh, phh + sh), (plw, phw + sw), (0, 0)))
  out = None
  for u in range(min(sh, kh)):
    for v in range(min(sw, kw)):
      taps = kernel[u::sh, v::sw]
      mh, mw = taps.shape[:2]
      phase = lax.slice(xp, (0, u, v, 0),
                        (b, u + sh * (ho + mh - 2) + 1, v + sw * (wo + mw - 2) + 1, c),
                        (1, sh, sw, 1))                       # [B, ho + mh - 1, wo + mw - 1, C]
      y = lax.conv_general_dilated(phase, taps, (1, 1), 'VALID', dimension_numbers=_DN)
      out = y if out is None else out + y
  return out


_strided_conv = jax.custom_jvp(_conv, nondiff_argnums=(2,))


def _strided_conv_jvp(strides, primals, tangents):
  # The primal is XLA's strided conv (fast forward). The tangent is linear in (dx, dk);
  # reverse mode transposes it, so writing the dx term by phases makes the input gradient
  # stride-1 convs. The dk term stays XLA's: its transpose (the weight gradient) is
  # already fast. The rule is itself differentiable, so every order of jvp/vjp works.
  x, kernel = primals
  dx, dk = tangents
  y = _conv(x, kernel, strides)
  t = None
  if not isinstance(dx, SymbolicZero):
    t = conv_by_phases(dx, kernel, strides)
  if not isinstance(dk, SymbolicZero):
    tk = _conv(x, dk, strides)
    t = tk if t is None else t + tk
  return y, (jnp.zeros_like(y) if t is None else t)


_strided_conv.defjvp(_strided_conv_jvp, symbolic_zeros=True)


def conv2d_same(x: Array, kernel: Array, strides: int | Sequence[int] = 1) -> Array:
  """lax.conv_general_dilated(x, kernel, strides, 'SAME') in NHWC/HWIO, any order of
  differentiation. x [B, H, W, C], kernel [kh, kw, C, O] → [B, ceil(H/s), ceil(W/s), O]."""
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  if strides == (1, 1):
    return _conv(x, kernel, strides)
  return _strided_conv(x, kernel, strides)


Pads = tuple[tuple[int, int], tuple[int, int]]


def canonical_conv(x: Array, kernel: Array, padding: Pads) -> Array:
  """Stride-1 conv, x [B, H, W, C] * kernel [kh, kw, C, O] with explicit padding ((lo, hi),
  (lo, hi)) → [B, H', W', O], whose derivatives of every reverse-mode order are again
  stride-1 NHWC/HWIO/NHWC convolutions of explicitly transposed operands.

  Why: XLA:CPU hands a convolution to Eigen only in that canonical form, and the pass that
  rewrites other forms into it (ConvCanonicalization) only visits top-level convolutions
  (the entry computation). JAX writes the input gradient as a conv with the kernel's
  feature dimensions swapped (dim_labels b01f_01oi) and the kernel gradient with batch and
  features swapped (f01b_i01o); inside a lax.scan / while body or a cond branch XLA:CPU
  emits those as naive loops (an `…_elemental_kernel_module` per conv): the explainer's
  Fisher gradient in chunks (fisher_information(chunk_size=…)) ran 8-22× slower than
  unchunked. Here the transposes are explicit, and top level or not every conv is Eigen's.
  Reverse mode only (jax.custom_vjp, any order): jax.jvp of it raises. The matmul
  precision in force at the call (jax.default_matmul_precision) is fixed for the gradients
  too, as for lax's own convolutions, although a custom VJP's backward pass is traced later,
  outside the caller's context (the Fisher estimator's 'highest').
  """
  precision = jax.config.jax_default_matmul_precision
  return _canonical_conv(x, kernel, tuple(tuple(p) for p in padding), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical_conv(x: Array, kernel: Array, padding: Pads, precision: str | None) -> Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DN,
                                  precision=precision)


def _canonical_conv_fwd(x: Array, kernel: Array, padding: Pads, precision: str | None):
  return _canonical_conv(x, kernel, padding, precision), (x, kernel)


def _canonical_conv_bwd(padding: Pads, precision: str | None, residuals, dy: Array):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (lo_h, hi_h), (lo_w, hi_w) = padding
  # dx: the full correlation of dy with the flipped kernel, its features swapped → [kh, kw, O, C].
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  dx = _canonical_conv(dy, flipped, ((kh - 1 - lo_h, kh - 1 - hi_h),
                                     (kw - 1 - lo_w, kw - 1 - hi_w)), precision)
  # dkernel[h, w, c, o] = Σ_{b, i, j} x_pad[b, i + h, j + w, c] dy[b, i, j, o]: a conv with
  # x's channels as its batch, x's batch as its features and dy as the kernel.
  dk = _canonical_conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)),
                       padding, precision)                # [C, kh, kw, O]
  return dx, jnp.transpose(dk, (1, 2, 0, 3))


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


class Conv(nn.Module):
  """nn.Conv(features, kernel_size, strides, padding='SAME') on NHWC images.

  Same parameters ('kernel' [kh, kw, C_in, C_out], 'bias' [C_out]), initialisers and
  outputs as nn.Conv; computed by `conv2d_same`.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    return conv2d_same(x, kernel, self.strides) + bias


class Upsample2x(nn.Module):
  """ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME'), computed as four
  stride-1 2×2 "phase" convolutions interleaved into the doubled grid.

  Same parameters ('kernel' [4, 4, C_in, C_out], 'bias'), initialisers and outputs as
  nn.ConvTranspose. The transposed convolution's gradients are convolutions with
  dilated inputs or kernels, which XLA:CPU runs far below peak; the phase form has none,
  which matters most in the Fisher regularizer's second-order gradients. The phase convs
  are `canonical_conv`s, so that those gradients also run fast inside a lax.scan.
  """
  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init, (4, 4, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    # lax.conv_transpose('SAME', k=4, s=2) pads the zero-dilated input by 2 on the left:
    # output row 2i + a reads input rows i + c_a + m with kernel taps t_a + 2m, m ∈ {0, 1}.
    taps, pads = {0: 0, 1: 1}, {0: (1, 0), 1: (0, 1)}
    rows = []
    for a in (0, 1):
      cols = [canonical_conv(x, kernel[taps[a]::2, taps[b]::2], (pads[a], pads[b]))
              for b in (0, 1)]
      rows.append(jnp.stack(cols, 3))                   # [B, H, W, 2 (b), C]
    y = jnp.stack(rows, 2)                              # [B, H, 2 (a), W, 2 (b), C]
    b_, h, _, w, _, c = y.shape
    return y.reshape(b_, 2 * h, 2 * w, c) + bias


class Dense(nn.Module):
  """nn.Dense(features) with the matmul in `compute_dtype` (see `mixed_matmul`).

  Same parameters ('kernel' [n, features], 'bias' [features], float32 whatever the compute
  dtype: the optimizer updates float32 weights), initialisers and, for 'float32', the same
  outputs as nn.Dense. The output is float32 in both modes, so activations, losses and the
  Fisher statistics downstream stay float32.
  """
  features: int
  compute_dtype: str = 'float32'
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    return mixed_matmul(x, kernel, self.compute_dtype) + bias
