"""Convolution and pooling kernels: XLA's standard ops, or versions tuned for XLA:CPU.

A model's ``kernels`` option (``create_model(..., kernels=...)``,
``layers.Numerics.kernels``) chooses them:

* ``'xla'``: ``lax.conv_general_dilated`` (``nnx.Conv``) and ``lax.reduce_window``
  pools (``nnx.max_pool``, ``nnx.avg_pool``) with JAX's own derivatives: the
  portable choice, what GPUs and TPUs run.
* ``'cpu'``: the same functions written for XLA:CPU, each measured A/B in one
  process on a 2-core Xeon (batch 8, 299x299, float32):

  - a 1x1 stride-1 convolution is a matmul (``cpu_conv``): for a convolution's
    kernel gradient XLA:CPU transposes the activations to channels-first,
    batch-last, which it runs badly at small batch (8 x 17 x 17 x 1088 in
    Inception-ResNet-v2: ~0.3 s each); the gradient of a dot needs no transpose
    (IR-v2 train step 0.84 -> 1.47 img/s);
  - other convolutions go through ``conv2d``, whose gradients are convolutions in
    the canonical layout: XLA:CPU computes a kernel gradient as a convolution over
    the batch, and when it can transpose the operands to the canonical layout
    first it uses its fast convolution, but inside a while loop (the rolled
    Inception-ResNet block loop, ``scan_blocks=True``) it did not and ran a
    generic one, ~100x slower (the rolled IR-v2 train step 7x slower);
  - max and average pools are the maximum / sum of k*k strided slices
    (``cpu_max_pool``, ``cpu_avg_pool``), which XLA:CPU runs several times faster
    than reduce-window (inception_v3 inference +13%); their gradients are
    reduce-window's (select-and-scatter, pad + reduce-window), which XLA:CPU runs
    faster than the transpose of the slices.

* ``'auto'`` (the default): ``'cpu'`` when the computation runs on CPU
  (``jax.default_backend() == 'cpu'`` when the model is traced), else ``'xla'``.
  On a machine with an accelerator, a model run on the CPU anyway (e.g. under
  ``jax.default_device``) keeps XLA's ops unless built with ``kernels='cpu'``.

Both choices compute the same values (float rounding apart: the 1x1 matmul may
sum in another order) and the same derivatives, and both work with
every JAX transformation: ``jax.grad``/``vjp``/``jacrev``, ``jax.jvp``/``jacfwd``,
``jax.hessian``, ``vmap``, ``jit``. The CPU kernels are ``jax.custom_jvp``
functions: the primal is the tuned computation and the tangent is a linear map
that JAX transposes, for reverse mode, into exactly the gradient above. For
``conv2d`` that tangent is itself written as the transpose (``jax.linear_transpose``)
of the hand-written canonical-layout gradient, so reverse mode, a transpose of the
transpose, is that gradient again (the compiled train step is the one a
``jax.custom_vjp`` gave); the pools' tangents are reduce-window's own. Max-pool
derivatives go to the first maximum of a window on both choices (XLA's
select-and-scatter order).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.custom_derivatives import SymbolicZero

Array = jax.Array

KERNELS = ('auto', 'xla', 'cpu')


def check(kernels: str) -> str:
  """Returns ``kernels`` or raises ``ValueError`` naming the valid choices."""
  if kernels not in KERNELS:
    raise ValueError(f"kernels must be 'auto', 'xla' or 'cpu', got {kernels!r}")
  return kernels


def resolve(kernels: str) -> str:
  """'xla' or 'cpu': ``kernels``, with 'auto' decided by the default backend now."""
  if check(kernels) == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return kernels


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


# ------------------------------------------------------------------ dispatch


def conv(module: nnx.Conv, x: Array, kernels: str) -> Array:
  """``module(x)``: XLA's convolution, or ``cpu_conv`` (same parameters and numbers)."""
  if resolve(kernels) == 'cpu':
    return cpu_conv(module, x)
  return module(x)


def max_pool(x: Array, k: int, s: int, pads, kernels: str) -> Array:
  """k x k max pooling, stride s, NHWC, ``pads`` = ((top, bottom), (left, right))."""
  pads = tuple(map(tuple, pads))
  if resolve(kernels) == 'cpu':
    return cpu_max_pool(x, k, s, pads)
  return xla_max_pool(x, k, s, pads)


def avg_pool(x: Array, k: int, s: int, pads, count_include_pad: bool,
             kernels: str) -> Array:
  """k x k average pooling, stride s, NHWC, zero padding ``pads``.

  Divides the window sum by k*k or, with ``count_include_pad=False``, by the
  number of real pixels in the window (TF 'SAME'; timm/torchvision
  ``count_include_pad=False``). The output has the input's dtype.
  """
  pads = tuple(map(tuple, pads))
  if resolve(kernels) == 'cpu':
    return cpu_avg_pool(x, k, s, pads, count_include_pad)
  return xla_avg_pool(x, k, s, pads, count_include_pad)


# ------------------------------------------------------------------ XLA's ops


def xla_max_pool(x: Array, k: int, s: int, pads) -> Array:
  """``lax.reduce_window`` max pool (``nnx.max_pool``), padding with -inf."""
  return nnx.max_pool(x, (k, k), (s, s), pads)


def xla_avg_pool(x: Array, k: int, s: int, pads, count_include_pad: bool) -> Array:
  """``lax.reduce_window`` average pool (``nnx.avg_pool``) in the input's dtype."""
  # nnx.avg_pool divides by a float32 count, so its output is float32 for bfloat16 x.
  return nnx.avg_pool(x, (k, k), (s, s), pads,
                      count_include_pad=count_include_pad).astype(x.dtype)


# ------------------------------------------------------------------ CPU kernels


def cpu_conv(module: nnx.Conv, x: Array) -> Array:
  """``module(x)`` with the same parameters and numbers, written for XLA:CPU.

  A 1x1 stride-1 convolution is a matmul; other ungrouped, undilated
  convolutions go through ``conv2d`` (module docstring: why); the rest (grouped
  or dilated) is ``module(x)``.
  """
  kernel = module.kernel[...]
  if module.feature_group_count != 1:
    return module(x)
  dtype = module.dtype or jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  strides = _pair(module.strides)
  if kernel.shape[:2] == (1, 1) and strides == (1, 1):
    y = jnp.einsum('nhwc,cd->nhwd', x, kernel[0, 0], precision=module.precision)
  elif (module.kernel_dilation in (None, 1, (1, 1))
        and module.input_dilation in (None, 1, (1, 1))):
    padding = module.padding
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    y = conv2d(x, kernel, strides, tuple(tuple(p) for p in padding))
  else:
    return module(x)
  if module.bias is not None:
    y = y + module.bias[...].astype(dtype)
  return y


def _nhwc_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(x: Array, kernel: Array, strides, padding) -> Array:
  """NHWC x HWIO convolution whose gradients are convolutions in the canonical layout.

  The values of ``lax.conv_general_dilated``. ``strides`` = (sh, sw), ``padding`` =
  ((top, bottom), (left, right)). Reverse mode computes ``conv2d_input_grad`` and
  ``conv2d_kernel_grad``; forward mode their transposes (module docstring).
  """
  return _nhwc_conv(x, kernel, strides, padding)


def conv2d_input_grad(kernel: Array, g: Array, x_shape, strides, padding) -> Array:
  """d(sum(conv2d(x, kernel) * g)) / dx as one canonical-layout convolution."""
  kh, kw = kernel.shape[:2]
  # g dilated by the stride, convolved with the flipped kernel, I and O swapped
  # (lax's own transpose rule, with the kernel transposed to HWIO here).
  pads = []
  for size, k, s, (lo, _), out in zip(x_shape[1:3], (kh, kw), strides, padding, g.shape[1:3]):
    before = k - 1 - lo
    pads.append((before, size + k - 1 - ((out - 1) * s + 1) - before))
  return jax.lax.conv_general_dilated(
      g, jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2)), (1, 1), pads,
      lhs_dilation=strides, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv2d_kernel_grad(x: Array, g: Array, kernel_shape, strides, padding) -> Array:
  """d(sum(conv2d(x, kernel) * g)) / dkernel as one canonical-layout convolution."""
  kh, kw = kernel_shape[:2]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  # dk[i, j, c, d] = sum_{n, a, b} xp[n, a*s + i, b*s + j, c] g[n, a, b, d]: a conv
  # with C as batch, N as features, and g as a kernel dilated by the stride.
  dk = jax.lax.conv_general_dilated(
      jnp.transpose(xp, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), 'VALID',
      rhs_dilation=strides, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.transpose(dk[:, :kh, :kw, :], (1, 2, 0, 3))


def _conv2d_tangent(x, kernel, tx, tk, strides, padding):
  """conv2d's tangent, linear in (tx, tk) (None: a zero tangent).

  Written as the transpose of the gradient, so that reverse mode transposes it
  back into conv2d_input_grad / conv2d_kernel_grad.
  """
  out = jax.eval_shape(lambda: _nhwc_conv(x, kernel, strides, padding))
  ty = None
  if tx is not None:
    ty = jax.linear_transpose(
        lambda g: conv2d_input_grad(kernel, g, x.shape, strides, padding), out)(tx)[0]
  if tk is not None:
    t = jax.linear_transpose(
        lambda g: conv2d_kernel_grad(x, g, kernel.shape, strides, padding), out)(tk)[0]
    ty = t if ty is None else ty + t
  return ty


def _conv2d_jvp(strides, padding, primals, tangents):
  x, kernel = primals
  tx, tk = (None if type(t) is SymbolicZero else t for t in tangents)
  y = conv2d(x, kernel, strides, padding)
  if tx is None and tk is None:
    return y, jnp.zeros_like(y)
  # Under jax.checkpoint the tangent keeps x and kernel themselves as the residuals
  # of reverse mode, and the flips, pads and transposes of the gradient run in the
  # backward pass, as a custom_vjp's would (saved per step, they made the rolled
  # Inception-ResNet loop stack extra arrays).
  tangent = jax.checkpoint(
      functools.partial(_conv2d_tangent, strides=strides, padding=padding),
      prevent_cse=False)
  return y, tangent(x, kernel, tx, tk)


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _windows(xp: Array, k: int, s: int) -> list[Array]:
  """``xp[:, i::s, j::s]`` cropped to the output grid, for each window offset (i, j)."""
  n, h, w, c = xp.shape
  oh, ow = (h - k) // s + 1, (w - k) // s + 1
  return [jax.lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * s + 1, j + (ow - 1) * s + 1, c),
                        (1, s, s, 1))
          for i in range(k) for j in range(k)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def cpu_max_pool(x: Array, k: int, s: int, pads) -> Array:
  """``xla_max_pool``'s values as the maximum of k*k strided slices, its derivatives."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  views = _windows(xp, k, s)
  out = views[0]
  for v in views[1:]:
    out = jnp.maximum(out, v)
  return out


@cpu_max_pool.defjvp
def _cpu_max_pool_jvp(k, s, pads, primals, tangents):
  (x,), (tx,) = primals, tangents
  # reduce-window's tangent (select-and-gather: the first maximum's), whose
  # transpose is select-and-scatter. Its own primal output is unused (removed by XLA).
  _, ty = jax.jvp(lambda x: xla_max_pool(x, k, s, pads), (x,), (tx,))
  return cpu_max_pool(x, k, s, pads), ty


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def cpu_avg_pool(x: Array, k: int, s: int, pads, count_include_pad: bool) -> Array:
  """``xla_avg_pool``'s values as the sum of k*k strided slices (same order), its derivatives."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  views = _windows(xp, k, s)
  total = views[0]
  for v in views[1:]:
    total = total + v
  if count_include_pad:
    return total / jnp.asarray(k * k, x.dtype)
  # Pixels per window, a trace-time constant of shape (1, OH, OW, 1).
  ones = np.pad(np.ones(x.shape[1:3], np.float32), pads)
  oh, ow = (ones.shape[0] - k) // s + 1, (ones.shape[1] - k) // s + 1
  count = sum(ones[i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s]
              for i in range(k) for j in range(k))[None, :, :, None]
  return total / jnp.asarray(count, x.dtype)


@cpu_avg_pool.defjvp
def _cpu_avg_pool_jvp(k, s, pads, count_include_pad, primals, tangents):
  (x,), (tx,) = primals, tangents
  # Linear: the tangent is reduce-window's pool of the tangent, transposed (reverse
  # mode) into pad + reduce-window.
  return (cpu_avg_pool(x, k, s, pads, count_include_pad),
          xla_avg_pool(tx, k, s, pads, count_include_pad))
