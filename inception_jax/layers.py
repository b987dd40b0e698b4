"""Flax NNX modules that interpret the specs of ``specs.py``.

Every number-changing detail is carried by ``Numerics`` and set per network, never
hidden in a default: the padding rule of 'SAME' layers, ``count_include_pad`` of
average pools, BatchNorm epsilon/momentum/scale, and conv bias. Convolutions and
pools run XLA's ops or the XLA:CPU-tuned ones of ``kernels.py`` (``Numerics.kernels``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax import kernels as kernels_lib
from inception_jax import specs

Array = jax.Array


# Initialisers are data, and every variable records its own as ``initializer``
# metadata: ``create_model`` builds a network abstractly and then draws every
# random variable from one truncated-normal sample (one compiled program), where
# running each initialiser costs one XLA compile per parameter shape. In that
# abstract build the initialisers get ``key=None`` and return a
# ``jax.ShapeDtypeStruct``: the modules are constructed in plain Python, with no
# trace and no array (tracing the construction was half of the build's time).

# Standard deviation of a unit normal truncated to [-2, 2] (flax/jax variance_scaling).
_TRUNCATED_STD = 0.87962566103423978


@dataclasses.dataclass(frozen=True)
class Constant:
  """Every element ``value`` (biases, BatchNorm offsets and statistics)."""
  value: float

  def __call__(self, key, shape, dtype=jnp.float32) -> Array | jax.ShapeDtypeStruct:
    if key is None:  # the shape only (an abstract build; values are written later)
      return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
  """Truncated normal on [-2, 2] standard deviations, variance ``scale / fan_in``.

  flax ``variance_scaling(scale, 'fan_in', 'truncated_normal')``. ``fan_in_axes``
  input axes before the output axis: 3 for HWIO conv kernels (H, W, I), 1 for
  ``[in, out]`` linear ones; leading axes (the block axis of a stacked
  ``Repeat``) are not part of the fan-in.
  """
  scale: float
  fan_in_axes: int

  def std(self, shape) -> float:
    fan_in = math.prod(shape[-1 - self.fan_in_axes:-1])
    return math.sqrt(self.scale / fan_in) / _TRUNCATED_STD

  def __call__(self, key, shape, dtype=jnp.float32) -> Array | jax.ShapeDtypeStruct:
    if key is None:  # the shape only (an abstract build; values are drawn later)
      return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
    unit = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
    return (unit * self.std(shape)).astype(dtype)


ZEROS, ONES = Constant(0.0), Constant(1.0)
# He for ReLU convs; the residual up-projection and classifiers use LeCun.
RELU_CONV = VarianceScaling(2.0, fan_in_axes=3)
LINEAR_CONV = VarianceScaling(1.0, fan_in_axes=3)
LINEAR = VarianceScaling(1.0, fan_in_axes=1)


def param(init, key, shape, dtype) -> nnx.Param:
  """An ``nnx.Param`` of ``init``'s values (shapes for a ``None`` key) that records ``init``."""
  return nnx.Param(init(key, shape, dtype), initializer=init)


def init_args(kernel_init) -> dict[str, Any]:
  """``nnx.Conv`` / ``nnx.Linear`` initialiser arguments, recorded on the variables."""
  return dict(kernel_init=kernel_init, kernel_metadata={'initializer': kernel_init},
              bias_init=ZEROS, bias_metadata={'initializer': ZEROS})


@dataclasses.dataclass(frozen=True)
class Numerics:
  """How a network computes: the options that make ports numerically exact.

  Attributes:
    padding: 'tf' pads 'SAME' layers by the TF/XLA rule (extra pixel at the
      bottom/right); 'symmetric' pads ``(k-1)//2`` on both sides and makes strided
      'SAME' max pools PyTorch ``ceil_mode=True`` pools (torchvision GoogLeNet).
    count_include_pad: average pools divide by the full window (PyTorch default,
      torchvision/timm Inception-v3) instead of the valid part (TF, Keras, timm
      v4/IR-v2).
    batch_norm: conv -> BN -> ReLU (all released checkpoints) or conv+bias -> ReLU
      (the 2014 GoogLeNet).
    bn_eps: BatchNorm epsilon (1e-3 in every Inception checkpoint).
    bn_momentum: decay of the running statistics (0.99 Keras, 0.9 PyTorch,
      0.9997 TF-slim).
    bn_scale: learn a BN scale (gamma); TF-slim and Keras checkpoints have none.
    conv_bias: bias on BN convs; None means bias exactly when there is no BN.
    dtype: compute dtype (inputs are cast once at the stem).
    param_dtype: parameter storage dtype.
    scan_blocks: keep the loop over stacked Inception-ResNet blocks rolled (a
      train step compiles ~2.3x faster, same speed); False unrolls it. See ``Repeat``.
    kernels: 'xla' (XLA's convolution and reduce-window ops), 'cpu' (the
      XLA:CPU-tuned kernels) or 'auto' ('cpu' when the default backend is the
      CPU at trace time); same numbers and derivatives. See ``kernels.py``.
  """
  padding: str = 'tf'
  count_include_pad: bool = False
  batch_norm: bool = True
  bn_eps: float = 1e-3
  bn_momentum: float = 0.99
  bn_scale: bool = True
  conv_bias: bool | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_blocks: bool = True
  kernels: str = 'auto'


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BatchNorm(nnx.Module):
  """BatchNorm over N, H, W (or N) with statistics in float32, applied as ``x * a + b``.

  Same variables as ``nnx.BatchNorm`` (``scale`` (optional), ``bias``, ``mean``,
  ``var``) and the same switch: ``use_running_average``, flipped by
  ``model.train()`` / ``model.eval()``. Batch variance is the biased one (TF,
  Keras, Flax). Under a data-sharded ``jit`` the reductions run over the global
  batch (synchronised BN).

  Written here rather than using ``nnx.BatchNorm`` because its in-place statistic
  update (``var[...] = ...``) inspects the tracer's sharding on every write, which
  made tracing a train step quadratic in depth (v4: 25 s instead of 2 s).
  """

  def __init__(self, num_features: int, *, momentum: float, epsilon: float,
               use_scale: bool, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    n = (num_features,)
    key = rngs.params()  # constants need no key; None marks the abstract build
    self.scale = param(ONES, key, n, param_dtype) if use_scale else None
    self.bias = param(ZEROS, key, n, param_dtype)
    self.mean = nnx.BatchStat(ZEROS(key, n, jnp.float32), initializer=ZEROS)
    self.var = nnx.BatchStat(ONES(key, n, jnp.float32), initializer=ONES)
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.use_running_average = True

  def __call__(self, x: Array) -> Array:
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))  # N, H, W (or N: FaceNet's bottleneck)
      mean = jnp.mean(xf, axis=axes)
      var = jnp.maximum(jnp.mean(jnp.square(xf), axis=axes) - jnp.square(mean), 0.0)
      m = self.momentum
      self.mean.set_value(jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean))
      self.var.set_value(jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var))
    a = jax.lax.rsqrt(var + self.epsilon)
    if self.scale is not None:
      a = a * self.scale[...].astype(jnp.float32)
    b = self.bias[...].astype(jnp.float32) - mean * a
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * a.astype(dtype) + b.astype(dtype)


def window_pads(size: int, kernel: int, stride: int, padding: str, style: str,
                ceil_pool: bool = False) -> tuple[int, int]:
  """(low, high) padding of one spatial axis; see ``specs.window_out_size``."""
  if padding == 'VALID':
    return (0, 0)
  if style == 'tf':
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)
  if ceil_pool and stride > 1:
    out = specs.window_out_size(size, kernel, stride, padding, style, ceil_pool)
    return (0, max((out - 1) * stride + kernel - size, 0))
  p = (kernel - 1) // 2
  return (p, p)


class ConvBN(nnx.Module):
  """Conv -> BatchNorm -> ReLU, or any part of it, as the spec and Numerics say.

  Attributes ``conv`` and ``bn`` follow torchvision/timm ``BasicConv2d`` and the
  TF-slim ``weights`` / ``BatchNorm`` pair.
  """

  def __init__(self, spec: specs.Conv, in_channels: int, num: Numerics, *,
               rngs: nnx.Rngs):
    use_bn = num.batch_norm if spec.batch_norm is None else spec.batch_norm
    if spec.bias is not None:
      use_bias = spec.bias
    elif num.conv_bias is not None:
      use_bias = num.conv_bias
    else:
      use_bias = not use_bn
    self.activation = spec.activation
    self.stride = spec.stride
    self.kernels = num.kernels
    kernel_size = _pair(spec.kernel)
    # 'tf' is XLA's own SAME rule; 'symmetric' pads (k-1)//2 on both sides. Both are
    # static, so the padding goes into the conv (a separate pad op would survive in
    # the backward pass).
    if spec.padding == 'VALID':
      padding = 'VALID'
    elif num.padding == 'tf':
      padding = 'SAME'
    else:
      padding = tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel_size)
    init = RELU_CONV if spec.activation else LINEAR_CONV
    common = dict(use_bias=False, dtype=num.dtype, param_dtype=num.param_dtype,
                  rngs=rngs, **init_args(init))
    if isinstance(spec, specs.SeparableConv):
      mid = in_channels * spec.depth_multiplier
      self.depthwise = nnx.Conv(in_channels, mid, kernel_size, strides=spec.stride,
                                padding=padding, feature_group_count=in_channels,
                                **common)
      self.conv = nnx.Conv(mid, spec.filters, (1, 1), padding='VALID',
                           **{**common, 'use_bias': use_bias})
    else:
      self.depthwise = None
      self.conv = nnx.Conv(in_channels, spec.filters, kernel_size, strides=spec.stride,
                           padding=padding, **{**common, 'use_bias': use_bias})
    self.bn = BatchNorm(
        spec.filters, momentum=num.bn_momentum, epsilon=num.bn_eps,
        use_scale=num.bn_scale, dtype=num.dtype,
        param_dtype=num.param_dtype, rngs=rngs) if use_bn else None

  def __call__(self, x: Array) -> Array:
    if self.depthwise is not None:
      x = self.depthwise(x)
    x = kernels_lib.conv(self.conv, x, self.kernels)
    if self.bn is not None:
      x = self.bn(x)
    return jax.nn.relu(x) if self.activation else x


class Pool(nnx.Module):
  """Max or average pooling with explicit padding and ``count_include_pad``."""

  def __init__(self, spec: specs.Pool, num: Numerics):
    self.kind = spec.kind
    self.kernel = spec.kernel
    self.stride = spec.stride
    self.padding = spec.padding
    self.style = num.padding
    self.count_include_pad = num.count_include_pad
    self.kernels = num.kernels

  def __call__(self, x: Array) -> Array:
    k, s = self.kernel, self.stride
    pads = tuple(window_pads(n, k, s, self.padding, self.style,
                             ceil_pool=self.kind == 'max') for n in x.shape[1:3])
    if self.kind == 'max':
      return kernels_lib.max_pool(x, k, s, pads, self.kernels)
    return kernels_lib.avg_pool(x, k, s, pads, self.count_include_pad, self.kernels)


class LocalResponseNorm(nnx.Module):
  """Cross-channel LRN (Krizhevsky et al. 2012; GoogLeNet Figure 3)."""

  def __init__(self, spec: specs.LRN):
    self.size, self.alpha, self.beta, self.k = spec.size, spec.alpha, spec.beta, spec.k

  def __call__(self, x: Array) -> Array:
    sq = jnp.square(x.astype(jnp.float32))
    lo, hi = self.size // 2, (self.size - 1) // 2
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, self.size),
                                   (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (lo, hi)))
    div = (self.k + self.alpha / self.size * window) ** self.beta
    return (x / div).astype(x.dtype)


class Branch(nnx.Module):
  """One ``Branch_i`` of an Inception module: its ops in order.

  A ``Fork`` inside a branch puts its convs beside the others (TF-slim scopes them
  as siblings, e.g. ``Branch_1/Conv2d_0b_1x3`` and ``Branch_1/Conv2d_0b_3x1``).
  """

  def __init__(self, ops: tuple[specs.BranchOp, ...], in_channels: int,
               num: Numerics, *, rngs: nnx.Rngs):
    plan = []
    c = in_channels
    for op in ops:
      if isinstance(op, specs.Fork):
        for sub in op.ops:
          setattr(self, sub.name, ConvBN(sub, c, num, rngs=rngs))
        plan.append(tuple(sub.name for sub in op.ops))
      else:
        setattr(self, op.name, build_layer(op, c, num, rngs=rngs))
        plan.append(op.name)
      c = op.out_channels(c)
    self.plan = tuple(plan)

  def __call__(self, x: Array) -> Array:
    for step in self.plan:
      if isinstance(step, tuple):
        x = jnp.concatenate([getattr(self, n)(x) for n in step], axis=-1)
      else:
        x = getattr(self, step)(x)
    return x


class Mixed(nnx.Module):
  """Inception module: ``concat([Branch_0(x), ..., Branch_n(x)], channels)``."""

  def __init__(self, spec: specs.Mixed, in_channels: int, num: Numerics, *,
               rngs: nnx.Rngs):
    self.num_branches = len(spec.branches)
    for i, ops in enumerate(spec.branches):
      setattr(self, f'Branch_{i}', Branch(ops, in_channels, num, rngs=rngs))

  def __call__(self, x: Array) -> Array:
    return jnp.concatenate(
        [getattr(self, f'Branch_{i}')(x) for i in range(self.num_branches)], axis=-1)


class Residual(Mixed):
  """Inception-ResNet block: ``relu(x + scale * up(concat(branches)))``."""

  def __init__(self, spec: specs.Residual, in_channels: int, num: Numerics, *,
               rngs: nnx.Rngs):
    super().__init__(spec, in_channels, num, rngs=rngs)
    mid = specs.Mixed(spec.name, spec.branches).out_channels(in_channels)
    self.up_name = spec.up_name
    setattr(self, spec.up_name, ConvBN(spec.up_conv(in_channels), mid, num, rngs=rngs))
    self.scale = spec.scale
    self.activation = spec.activation

  def __call__(self, x: Array) -> Array:
    up = getattr(self, self.up_name)(super().__call__(x))
    x = x + self.scale * up
    return jax.nn.relu(x) if self.activation else x


class Repeat(nnx.Module):
  """``count`` identical residual blocks, parameters stacked on a leading axis.

  The blocks are applied with ``nnx.scan``. With ``Numerics.scan_blocks`` (the
  default) the loop stays rolled and the block is compiled once: an
  Inception-ResNet-v2 train step (batch 8, 299x299, 2-core CPU) compiles in 19 s
  instead of 44 s, at the same speed (1.34 vs 1.33 img/s, A/B in one process).
  On CPU that needs ``kernels.conv2d``'s gradients: with XLA's own, the rolled step
  ran 7x slower.
  Either way the parameters are the same stacked arrays.
  """

  def __init__(self, spec: specs.Repeat, in_channels: int, num: Numerics, *,
               rngs: nnx.Rngs):
    self.block_name = spec.block.name
    self.count = spec.count
    self.unroll = not num.scan_blocks
    block = Residual(spec.block, in_channels, num, rngs=rngs)
    graphdef, state = nnx.split(block)
    leaves = jax.tree.leaves(state)
    if all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves):  # an abstract build
      stacked = jax.tree.map(
          lambda v: jax.ShapeDtypeStruct((spec.count, *v.shape), v.dtype), state)
    else:  # real values: every block draws its own
      states = [state] + [nnx.state(Residual(spec.block, in_channels, num, rngs=rngs))
                          for _ in range(spec.count - 1)]
      stacked = jax.tree.map(lambda *vs: jnp.stack(vs), *states)
    setattr(self, spec.block.name, nnx.merge(graphdef, stacked))

  def __call__(self, x: Array) -> Array:
    # Tree mode (graph=False): graph mode refuses Variables created outside the
    # current trace, so a model called under plain jax.jit/jax.eval_shape failed.
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph=False,
              unroll=self.unroll)
    def step(h, block):
      return block(h)

    return step(x, getattr(self, self.block_name))


def build_layer(spec, in_channels: int, num: Numerics, *, rngs: nnx.Rngs) -> nnx.Module:
  """The module for one spec entry."""
  if isinstance(spec, specs.Conv):
    return ConvBN(spec, in_channels, num, rngs=rngs)
  if isinstance(spec, specs.Pool):
    return Pool(spec, num)
  if isinstance(spec, specs.LRN):
    return LocalResponseNorm(spec)
  if isinstance(spec, specs.Repeat):
    return Repeat(spec, in_channels, num, rngs=rngs)
  if isinstance(spec, specs.Residual):
    return Residual(spec, in_channels, num, rngs=rngs)
  if isinstance(spec, specs.Mixed):
    return Mixed(spec, in_channels, num, rngs=rngs)
  raise TypeError(f'no module for spec {spec!r}')


def global_pool(x: Array, kind: str) -> Array:
  """Global average or max pooling over H and W (in float32 for the mean)."""
  if kind == 'avg':
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
  if kind == 'max':
    return jnp.max(x, axis=(1, 2))
  raise ValueError(f"pooling must be 'avg' or 'max', got {kind!r}")


def adaptive_avg_pool(x: Array, out: int) -> Array:
  """PyTorch ``adaptive_avg_pool2d(x, (out, out))`` for NHWC inputs."""
  h, w = x.shape[1:3]
  if (h, w) == (out, out):
    return x

  def bins(n):
    return [(i * n // out, -(-(i + 1) * n // out)) for i in range(out)]

  rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in bins(h)]
  x = jnp.concatenate(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in bins(w)]
  return jnp.concatenate(cols, axis=2)


class GoogLeNetAux(nnx.Module):
  """GoogLeNet auxiliary classifier (paper Section 5; torchvision ``InceptionAux``).

  Paper: 5x5/3 average pool (14x14 -> 4x4), 1x1 conv 128 + ReLU, FC 1024 + ReLU,
  dropout 0.7, linear. torchvision replaces the pool with an adaptive 4x4 average.
  After the conv the map is averaged to 4x4 (the identity at the paper's 224
  input) so that the FC width does not depend on the input size.
  """

  def __init__(self, spec: specs.AuxHead, in_channels: int, num_classes: int,
               num: Numerics, *, rngs: nnx.Rngs):
    self.pool = spec.pool
    self.conv = ConvBN(specs.Conv('conv', 128, 1), in_channels, num, rngs=rngs)
    lin = dict(dtype=num.dtype, param_dtype=num.param_dtype, rngs=rngs, **init_args(LINEAR))
    self.fc1 = nnx.Linear(4 * 4 * 128, 1024, **lin)
    self.dropout = nnx.Dropout(0.7, rngs=rngs)
    self.fc2 = nnx.Linear(1024, num_classes, **lin)

  def __call__(self, x: Array) -> Array:
    if self.pool == 'adaptive4':
      x = adaptive_avg_pool(x, 4)
    else:
      x = nnx.avg_pool(x, (5, 5), (3, 3), 'VALID')
    x = adaptive_avg_pool(self.conv(x), 4)
    x = x.reshape(x.shape[0], -1)
    x = self.dropout(jax.nn.relu(self.fc1(x)))
    return self.fc2(x)


class SlimAux(nnx.Module):
  """The BN auxiliary head of v3 (paper Figure 8, "BN-auxiliary"), v4 and IR-v2.

  TF-slim ``AuxLogits``: 5x5/3 VALID average pool, ``Conv2d_1b_1x1`` (128),
  ``Conv2d_2a_5x5`` (768, VALID), then the classifier. The map after the 5x5 conv
  is 1x1 at 299 input; it is averaged (as torchvision does) so larger inputs work.
  """

  def __init__(self, spec: specs.AuxHead, in_channels: int, num_classes: int,
               num: Numerics, *, rngs: nnx.Rngs):
    del spec
    self.Conv2d_1b_1x1 = ConvBN(specs.Conv('Conv2d_1b_1x1', 128, 1), in_channels, num,
                                rngs=rngs)
    self.Conv2d_2a_5x5 = ConvBN(specs.Conv('Conv2d_2a_5x5', 768, 5, padding='VALID'),
                                128, num, rngs=rngs)
    self.Logits = nnx.Linear(768, num_classes, dtype=num.dtype,
                             param_dtype=num.param_dtype, rngs=rngs, **init_args(LINEAR))

  def __call__(self, x: Array) -> Array:
    x = nnx.avg_pool(x, (5, 5), (3, 3), 'VALID')
    x = self.Conv2d_2a_5x5(self.Conv2d_1b_1x1(x))
    return self.Logits(global_pool(x, 'avg'))


class Bottleneck(nnx.Module):
  """FaceNet's embedding layer: a linear map without bias, then BatchNorm.

  davidsandberg/facenet ``Bottleneck`` (a ``slim.fully_connected`` with BatchNorm,
  epsilon 1e-3); facenet-pytorch ``last_linear`` + ``last_bn``. Its output,
  L2-normalised, is the face embedding.
  """

  def __init__(self, in_features: int, size: int, num: Numerics, *, rngs: nnx.Rngs):
    self.fc = nnx.Linear(in_features, size, use_bias=False, dtype=num.dtype,
                         param_dtype=num.param_dtype, rngs=rngs, **init_args(LINEAR))
    self.bn = BatchNorm(size, momentum=num.bn_momentum, epsilon=num.bn_eps,
                        use_scale=num.bn_scale, dtype=num.dtype,
                        param_dtype=num.param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.bn(self.fc(x))


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


AUX_HEADS = {'googlenet': GoogLeNetAux, 'slim': SlimAux}
