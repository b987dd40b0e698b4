"""The architecture description language: frozen dataclasses, no Flax.

Every network of the family is a table of these specs (see ``inception_v1.py`` ...
``inception_resnet.py``). Names are the TF-slim checkpoint scope names, so a spec's
``name`` becomes the Flax attribute name and the ``features()`` endpoint name.

Spatial arithmetic lives here too (``out_size``), so the smallest valid input of
every network is derived from its table rather than written down by hand.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Union

PaddingSpec = Literal['SAME', 'VALID']


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def window_out_size(size: int, kernel: int, stride: int, padding: PaddingSpec,
                    style: str = 'tf', ceil_pool: bool = False) -> int:
  """Output length of one spatial axis of a conv or pool window.

  Args:
    size: input length.
    kernel: window length.
    stride: window stride.
    padding: 'SAME' or 'VALID' as written in the architecture table.
    style: 'tf' (TF/XLA SAME rule) or 'symmetric' (PyTorch ``padding=k//2``).
    ceil_pool: in 'symmetric' style, a strided SAME max pool is PyTorch's
      ``ceil_mode=True`` with no padding (torchvision GoogLeNet).

  Returns:
    The output length; zero or negative when the input is too small.
  """
  if padding == 'VALID':
    return (size - kernel) // stride + 1 if size >= kernel else 0
  if style == 'tf':
    return math.ceil(size / stride)
  if ceil_pool and stride > 1:
    # PyTorch ceil_mode: the last window may run past the end (even when the input
    # is smaller than the window) but must start inside the input.
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:
      out -= 1
    return max(out, 0)
  p = (kernel - 1) // 2
  return (size + 2 * p - kernel) // stride + 1 if size + 2 * p >= kernel else 0


@dataclasses.dataclass(frozen=True)
class Conv:
  """Conv -> BatchNorm -> ReLU (the unit of every Inception network).

  Attributes:
    name: checkpoint scope name, e.g. ``Conv2d_0a_1x1``.
    filters: output channels.
    kernel: kernel size (int or (h, w)).
    stride: stride.
    padding: 'SAME' or 'VALID' as in the TF-slim source.
    batch_norm: None follows the network's ``batch_norm`` option; False forces a
      plain conv (the residual up-projections).
    bias: None follows the network's ``conv_bias`` option (default: bias only
      when there is no BatchNorm).
    activation: ReLU after the conv/BN.
  """
  name: str
  filters: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: PaddingSpec = 'SAME'
  batch_norm: bool | None = None
  bias: bool | None = None
  activation: bool = True

  def out_channels(self, in_channels: int) -> int:
    del in_channels
    return self.filters

  def out_size(self, size: int, style: str) -> int:
    kh, _ = _pair(self.kernel)
    return window_out_size(size, kh, self.stride, self.padding, style)

  def out_size_w(self, size: int, style: str) -> int:
    _, kw = _pair(self.kernel)
    return window_out_size(size, kw, self.stride, self.padding, style)


@dataclasses.dataclass(frozen=True)
class SeparableConv(Conv):
  """Depthwise (multiplier ``depth_multiplier``) then pointwise conv, then BN/ReLU.

  BN-Inception's first layer in TF-slim (``Conv2d_1a_7x7``, multiplier 8).
  """
  depth_multiplier: int = 8


@dataclasses.dataclass(frozen=True)
class Pool:
  """Max or average pooling (``count_include_pad`` is a network option)."""
  name: str
  kind: Literal['max', 'avg']
  kernel: int
  stride: int
  padding: PaddingSpec = 'SAME'

  def out_channels(self, in_channels: int) -> int:
    return in_channels

  def out_size(self, size: int, style: str) -> int:
    return window_out_size(size, self.kernel, self.stride, self.padding, style,
                           ceil_pool=self.kind == 'max')

  out_size_w = out_size


@dataclasses.dataclass(frozen=True)
class LRN:
  """Cross-channel local response normalisation (GoogLeNet paper, Figure 3).

  Caffe/AlexNet formula: ``x / (k + alpha / size * sum_window(x^2)) ** beta``.
  """
  name: str
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0

  def out_channels(self, in_channels: int) -> int:
    return in_channels

  def out_size(self, size: int, style: str) -> int:
    return size

  out_size_w = out_size


@dataclasses.dataclass(frozen=True)
class Fork:
  """Parallel convs on the same input, concatenated (v3 Figure 7 'expanded filter bank')."""
  ops: tuple[Conv, ...]

  def out_channels(self, in_channels: int) -> int:
    return sum(op.out_channels(in_channels) for op in self.ops)

  def out_size(self, size: int, style: str) -> int:
    return min(op.out_size(size, style) for op in self.ops)

  def out_size_w(self, size: int, style: str) -> int:
    return min(op.out_size_w(size, style) for op in self.ops)


BranchOp = Union[Conv, Pool, Fork]


def _branch_channels(branch: tuple[BranchOp, ...], in_channels: int) -> int:
  c = in_channels
  for op in branch:
    c = op.out_channels(c)
  return c


def _branch_size(branch, size, style, axis):
  for op in branch:
    size = op.out_size(size, style) if axis == 0 else op.out_size_w(size, style)
    if size <= 0:
      return 0
  return size


@dataclasses.dataclass(frozen=True)
class Mixed:
  """An Inception module: parallel branches ``Branch_0..n`` concatenated on channels.

  A branch that is a single pool (reduction modules) passes its input through.
  """
  name: str
  branches: tuple[tuple[BranchOp, ...], ...]

  def out_channels(self, in_channels: int) -> int:
    return sum(_branch_channels(b, in_channels) for b in self.branches)

  def _sizes(self, size, style, axis):
    return {_branch_size(b, size, style, axis) for b in self.branches}

  def out_size(self, size: int, style: str) -> int:
    sizes = self._sizes(size, style, 0)
    return sizes.pop() if len(sizes) == 1 else 0

  def out_size_w(self, size: int, style: str) -> int:
    sizes = self._sizes(size, style, 1)
    return sizes.pop() if len(sizes) == 1 else 0


@dataclasses.dataclass(frozen=True)
class Residual(Mixed):
  """Inception-ResNet block: ``act(x + scale * up(concat(branches)))``.

  ``up`` is a 1x1 conv back to the input width, with bias and without BN
  (TF-slim ``Conv2d_1x1``; Keras ``*_conv``; timm ``conv2d``).
  """
  scale: float = 1.0
  activation: bool = True
  up_name: str = 'Conv2d_1x1'

  def out_channels(self, in_channels: int) -> int:
    return in_channels

  def up_conv(self, in_channels: int) -> Conv:
    return Conv(self.up_name, in_channels, 1, batch_norm=False, bias=True,
                activation=False)


@dataclasses.dataclass(frozen=True)
class Repeat:
  """``count`` identical residual blocks, stored stacked and applied with ``scan``.

  TF-slim scopes them ``Repeat/block35_1 .. block35_10``; here they are
  ``Repeat.block35`` with a leading axis of length ``count`` (index i is
  ``block35_{i+1}``).
  """
  name: str
  block: Residual
  count: int

  def out_channels(self, in_channels: int) -> int:
    return in_channels

  def out_size(self, size: int, style: str) -> int:
    return self.block.out_size(size, style)

  def out_size_w(self, size: int, style: str) -> int:
    return self.block.out_size_w(size, style)


Layer = Union[Conv, Pool, LRN, Mixed, Residual, Repeat]


@dataclasses.dataclass(frozen=True)
class AuxHead:
  """An auxiliary classifier attached to an endpoint (used only in training).

  Attributes:
    name: module name (``AuxLogits``; GoogLeNet's are ``aux1``/``aux2`` as in
      torchvision, the only checkpoint that carries GoogLeNet aux weights).
    endpoint: the layer whose output feeds the head.
    kind: 'googlenet' (5x5/3 avg pool or adaptive 4x4 pool, 1x1 conv 128, FC 1024,
      dropout 0.7, FC) or 'slim' (5x5/3 avg pool, 1x1 conv 128, 5x5 conv 768,
      global average, FC) as in TF-slim v3/v4/IR-v2.
    pool: for 'googlenet': 'avg5x5s3' (paper) or 'adaptive4' (torchvision).
    loss_weight: weight of this head's loss in the training loss (the main
      head's weight is 1), as the architecture's source trains it; None: not
      stated (training then needs an explicit ``aux_loss_weight``).
  """
  name: str
  endpoint: str
  kind: Literal['googlenet', 'slim']
  pool: Literal['avg5x5s3', 'adaptive4'] = 'avg5x5s3'
  loss_weight: float | None = None

  def fits(self, size: int, style: str) -> bool:
    """Whether an endpoint map of this spatial size can feed the head."""
    if self.kind == 'googlenet' and self.pool == 'adaptive4':
      return size >= 1
    s = window_out_size(size, 5, 3, 'VALID')
    if self.kind == 'googlenet':
      return s >= 1
    return s >= 5  # the 5x5 VALID conv


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A whole network: the stem-to-top layer table, aux heads and defaults.

  Attributes:
    name: registry name.
    layers: top-level layers in order; each name is a ``features()`` endpoint.
    aux_heads: auxiliary classifiers (built only when ``aux_logits=True``).
    default_size: the paper's input resolution.
    defaults: default values of the network options for this architecture
      (``dropout_rate``, ``batch_norm``, ``padding`` ...).
    reference: the paper table/figure and code the table follows.
  """
  name: str
  layers: tuple[Layer, ...]
  default_size: int
  defaults: dict
  aux_heads: tuple[AuxHead, ...] = ()
  reference: str = ''

  def endpoint_sizes(self, size: int, style: str) -> dict[str, tuple[int, int]]:
    """Spatial size of every endpoint for a square input; stops at the first empty one."""
    h = w = size
    out = {}
    for layer in self.layers:
      h, w = layer.out_size(h, style), layer.out_size_w(w, style)
      out[layer.name] = (h, w)
      if h <= 0 or w <= 0:
        break
    return out

  def min_input_size(self, style: str, aux: bool = False) -> int:
    """Smallest square input for which every layer (and aux head) has output."""
    for size in range(1, 2048):
      sizes = self.endpoint_sizes(size, style)
      if len(sizes) < len(self.layers) or min(min(s) for s in sizes.values()) <= 0:
        continue
      if aux and not all(h.fits(min(sizes[h.endpoint]), style) for h in self.aux_heads):
        continue
      return size
    raise ValueError(f'{self.name}: no input size below 2048 is valid')

  def channels(self, in_channels: int = 3) -> dict[str, int]:
    """Output channels of every endpoint."""
    out = {}
    c = in_channels
    for layer in self.layers:
      c = layer.out_channels(c)
      out[layer.name] = c
    return out
