r"""Architecture study: a model summary computed from the architecture tables.

``summary(name_or_model, input_size=...)`` walks an ``ArchSpec`` (no model is
built, nothing is compiled) and returns a ``Summary``: one row per endpoint
(``features()`` name), one per block inside a ``Repeat`` stack (TF-slim's
``Repeat/block35_1`` ...), then the head (global pool, dropout, ``Logits``) and
the auxiliary heads, each with its output shape, parameters and multiply-adds.
``depth=1`` adds the branches of every module, ``depth=2`` every conv and pool.
Printed, it is the table::

  python -m inception_jax.summary inception_v3
  python -m inception_jax.summary inception_v3 --freeze=Mixed_6e --depth=1
  python -m inception_jax.summary inception_v1 --paper        # GoogLeNet Table 1 beside it
  python -m inception_jax.summary inception_v3 --endpoints    # features()/--freeze names, Keras names
  python -m inception_jax.summary --all --plot=top1.png       # every architecture
  python -m inception_jax.summary inception_v4 --diagram=v4_modules.png

Conventions (those of the papers' "ops" columns and of torchvision's GFLOPS):
multiply-adds (MACs) count the convolutions and linear layers only, every kernel
tap including taps on zero padding; FLOPs = 2 x MACs. Pooling, BatchNorm, ReLU,
LRN and residual additions are not counted (below 2% of the total for every
architecture here). Inference totals exclude the auxiliary heads, which run only
in training. ``Row.macs_valid`` excludes the taps on zero padding, which is what
XLA's cost analysis counts; the tests check both against XLA.

Depth is the number of parameterised layers (convolutions, linear) on the
longest path from the input to the logits: GoogLeNet's "22 layers deep" (paper
Section 5) is this count.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Sequence

from inception_jax import model as model_lib
from inception_jax.summary import paper_tables
from inception_jax import registry
from inception_jax import specs

# Keras layer names of the endpoints (keras.applications InceptionV3 and
# InceptionResNetV2, Keras 3). Keras leaves the stem layers unnamed (conv2d_N,
# activation_N depend on how many layers the session has built), so only named
# layers are mapped. The output of an Inception-ResNet block is its activation
# ``block35_1_ac``; the last block8 has no activation and ends in an unnamed
# ``CustomScaleLayer``.
KERAS_NAMES = {
    'inception_v3': {
        'Mixed_5b': 'mixed0', 'Mixed_5c': 'mixed1', 'Mixed_5d': 'mixed2',
        'Mixed_6a': 'mixed3', 'Mixed_6b': 'mixed4', 'Mixed_6c': 'mixed5',
        'Mixed_6d': 'mixed6', 'Mixed_6e': 'mixed7', 'Mixed_7a': 'mixed8',
        'Mixed_7b': 'mixed9', 'Mixed_7c': 'mixed10',
    },
    'inception_resnet_v2': {
        'Mixed_5b': 'mixed_5b',
        **{f'Repeat/block35_{i}': f'block35_{i}_ac' for i in range(1, 11)},
        'Mixed_6a': 'mixed_6a',
        **{f'Repeat_1/block17_{i}': f'block17_{i}_ac' for i in range(1, 21)},
        'Mixed_7a': 'mixed_7a',
        **{f'Repeat_2/block8_{i}': f'block8_{i}_ac' for i in range(1, 10)},
        'Conv2d_7b_1x1': 'conv_7b_ac',
    },
}


_KERAS_APP = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a summary: an endpoint, a block of a stack, a branch or an op.

  Attributes:
    name: scope path, e.g. ``Mixed_5b``, ``Repeat/block35_3``,
      ``Mixed_5b/Branch_1``, ``Mixed_5b/Branch_1/Conv2d_0b_5x5``, ``Logits``.
    kind: what it is, e.g. ``conv 3x3/2 V``, ``inception``, ``residual x0.17``.
    level: 0 for endpoints, stacked blocks and heads; 1 for branches (and the
      residual up-projection); 2 for the convs and pools inside branches.
    endpoint: the ``features()`` / ``--freeze`` name the row belongs to
      (``Repeat`` for ``Repeat/block35_3``); head rows carry the head's name.
    patch: kernel and stride of a single conv or pool (``3x3/2``), the dropout
      rate (``40%``), '' otherwise.
    input: input shape (H, W, C) per image.
    shape: output shape (H, W, C) per image.
    params: trainable parameters: kernels, biases, BN scale and offset.
    weights: kernel elements only (GoogLeNet Table 1 counts these).
    bn_stats: BatchNorm running means and variances.
    macs: multiply-adds per image, taps on zero padding included.
    macs_valid: multiply-adds per image on real input pixels (XLA's count).
    layers: parameterised layers on the longest path through the row.
    train_only: an auxiliary head: built and run only for training.
    trainable: with ``freeze``, whether the train step updates the row's
      parameters; None without ``freeze`` or for rows without parameters.
  """
  name: str
  kind: str
  level: int
  endpoint: str
  patch: str
  input: tuple[int, int, int]
  shape: tuple[int, int, int]
  params: int = 0
  weights: int = 0
  bn_stats: int = 0
  macs: int = 0
  macs_valid: int = 0
  layers: int = 0
  train_only: bool = False
  trainable: bool | None = None

  @property
  def flops(self) -> int:
    """2 x multiply-adds."""
    return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class Totals:
  """Whole-network numbers of a ``Summary``.

  Attributes:
    params: all trainable parameters (aux heads included when built).
    trainable: parameters the train step updates under ``freeze`` (= params
      without ``freeze``).
    frozen: parameters it leaves unchanged.
    bn_stats: BatchNorm running statistics (updated by BN in train mode, not by
      the optimizer; ``TrainConfig.freeze_bn`` keeps them).
    macs: inference multiply-adds per image (no aux heads).
    flops: 2 x ``macs``.
    train_only_macs: multiply-adds of the auxiliary heads (training only).
    layers: network depth, see the module docstring.
  """
  params: int
  trainable: int
  frozen: int
  bn_stats: int
  macs: int
  flops: int
  train_only_macs: int
  layers: int


# ------------------------------------------------------------------ the walker


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _valid_taps(size: int, kernel: int, stride: int, padding: str, style: str) -> int:
  """Kernel taps that land inside the input, summed over the output positions."""
  from inception_jax import layers  # pylint: disable=g-import-not-at-top
  lo, _ = layers.window_pads(size, kernel, stride, padding, style)
  out = specs.window_out_size(size, kernel, stride, padding, style)
  total = 0
  for o in range(out):
    start = o * stride - lo
    total += max(0, min(kernel, size - start) - max(0, -start))
  return total


@dataclasses.dataclass
class _Node:
  name: str
  kind: str
  patch: str
  input: tuple[int, int, int]
  shape: tuple[int, int, int]
  params: int = 0
  weights: int = 0
  bn_stats: int = 0
  macs: int = 0
  macs_valid: int = 0
  layers: int = 0
  children: list = dataclasses.field(default_factory=list)

  def add(self, child: '_Node') -> None:
    self.children.append(child)
    for f in ('params', 'weights', 'bn_stats', 'macs', 'macs_valid'):
      setattr(self, f, getattr(self, f) + getattr(child, f))


def _patch(kh, kw, stride) -> str:
  return f'{kh}x{kw}/{stride}'


class _Walker:
  """Shapes, parameters and multiply-adds of spec entries, under resolved options."""

  def __init__(self, opts: dict):
    self.opts = opts
    self.style = opts['padding']

  def conv(self, op: specs.Conv, name: str, hwc, kind_extra: str = '') -> _Node:
    h, w, c = hwc
    kh, kw = _pair(op.kernel)
    oh, ow = op.out_size(h, self.style), op.out_size_w(w, self.style)
    use_bn = self.opts['batch_norm'] if op.batch_norm is None else op.batch_norm
    if op.bias is not None:
      use_bias = op.bias
    elif self.opts['conv_bias'] is not None:
      use_bias = self.opts['conv_bias']
    else:
      use_bias = not use_bn
    taps_h = _valid_taps(h, kh, op.stride, op.padding, self.style)
    taps_w = _valid_taps(w, kw, op.stride, op.padding, self.style)
    n = op.filters
    if isinstance(op, specs.SeparableConv):
      mid = c * op.depth_multiplier
      weights = kh * kw * mid + mid * n
      macs = oh * ow * weights
      macs_valid = taps_h * taps_w * mid + oh * ow * mid * n
      kind = f'sep conv {kh}x{kw}'
    else:
      weights = kh * kw * c * n
      macs = oh * ow * weights
      macs_valid = taps_h * taps_w * c * n
      kind = f'conv {kh}x{kw}'
    if op.stride > 1:
      kind += f'/{op.stride}'
    if op.padding == 'VALID':
      kind += ' V'
    if isinstance(op, specs.SeparableConv):
      kind += f' x{op.depth_multiplier}'
    if not op.activation:
      kind += ' linear'
    kind += kind_extra
    params = weights + (n if use_bias else 0) + (
        n * (2 if self.opts['bn_scale'] else 1) if use_bn else 0)
    return _Node(name, kind, _patch(kh, kw, op.stride), hwc, (oh, ow, n), params=params,
                 weights=weights, bn_stats=2 * n if use_bn else 0, macs=macs,
                 macs_valid=macs_valid, layers=1)

  def pool(self, op: specs.Pool, name: str, hwc) -> _Node:
    h, w, c = hwc
    kind = f'{op.kind} pool {op.kernel}x{op.kernel}'
    if op.stride > 1:
      kind += f'/{op.stride}'
    if op.padding == 'VALID':
      kind += ' V'
    return _Node(name, kind, _patch(op.kernel, op.kernel, op.stride), hwc,
                 (op.out_size(h, self.style), op.out_size_w(w, self.style), c))

  def op(self, op, name: str, hwc) -> _Node:
    if isinstance(op, specs.Conv):
      return self.conv(op, name, hwc)
    if isinstance(op, specs.Pool):
      return self.pool(op, name, hwc)
    if isinstance(op, specs.LRN):
      return _Node(name, f'LRN {op.size}', '', hwc, hwc)
    raise TypeError(f'no summary rule for {op!r}')

  def branch(self, ops, name: str, hwc) -> _Node:
    node = _Node(name, '', '', hwc, hwc)
    parts = []
    for op in ops:
      if isinstance(op, specs.Fork):
        outs = [self.conv(sub, f'{name}/{sub.name}', node.shape, ' (fork)') for sub in op.ops]
        for sub in outs:
          node.add(sub)
        h, w, _ = outs[0].shape
        node.shape = (h, w, sum(s.shape[2] for s in outs))
        node.layers += 1
        parts.append('{' + ', '.join(
            f'{s.kind.split()[1]} {s.shape[2]}' for s in outs) + '}')
        continue
      child = self.op(op, f'{name}/{op.name}', node.shape)
      node.add(child)
      node.shape = child.shape
      node.layers += child.layers
      if isinstance(op, specs.Conv):
        parts.append(child.kind.replace('conv ', '').replace(' linear', '') +
                     f' {child.shape[2]}')
      else:
        parts.append(child.kind.replace(' pool', ''))
    node.kind = ' > '.join(parts)
    return node

  def mixed(self, spec: specs.Mixed, name: str, hwc) -> _Node:
    node = _Node(name, '', '', hwc, hwc)
    branches = [self.branch(ops, f'{name}/Branch_{i}', hwc)
                for i, ops in enumerate(spec.branches)]
    for b in branches:
      node.add(b)
    h, w, _ = branches[0].shape
    node.shape = (h, w, sum(b.shape[2] for b in branches))
    node.layers = max(b.layers for b in branches)
    strided = any(getattr(op, 'stride', 1) > 1 for b in spec.branches for op in b)
    if isinstance(spec, specs.Residual):
      up = self.conv(spec.up_conv(hwc[2]), f'{name}/{spec.up_name}', node.shape,
                     ' (up-projection)')
      node.add(up)
      node.layers += 1
      node.shape = up.shape
      node.kind = f'residual x{spec.scale:g}' + ('' if spec.activation else ', no ReLU')
    else:
      node.kind = 'reduction' if strided else 'inception'  # a stride-2 branch
    node.kind += f' ({len(spec.branches)} branches)'
    return node

  def layer(self, layer, hwc) -> list[_Node]:
    """Level-0 nodes of one table entry: one, or one per block of a Repeat."""
    if isinstance(layer, specs.Repeat):
      out = []
      for i in range(layer.count):
        block = self.mixed(layer.block, f'{layer.name}/{layer.block.name}_{i + 1}', hwc)
        hwc = block.shape
        out.append(block)
      return out
    if isinstance(layer, specs.Mixed):
      return [self.mixed(layer, layer.name, hwc)]
    return [self.op(layer, layer.name, hwc)]

  def linear(self, name: str, c_in: int, c_out: int, hwc_in) -> _Node:
    w = c_in * c_out
    return _Node(name, 'linear', '', hwc_in, (1, 1, c_out), params=w + c_out, weights=w,
                 macs=w, macs_valid=w, layers=1)

  def bottleneck(self, name: str, c_in: int, c_out: int, hwc_in) -> _Node:
    """FaceNet's embedding layer: linear without bias, then BatchNorm."""
    w = c_in * c_out
    bn = c_out * (2 if self.opts['bn_scale'] else 1)
    return _Node(name, 'linear (no bias) + BN', '', hwc_in, (1, 1, c_out), params=w + bn,
                 weights=w, bn_stats=2 * c_out, macs=w, macs_valid=w, layers=1)

  def aux_head(self, head: specs.AuxHead, hwc, num_classes: int) -> _Node:
    h, w, c = hwc
    node = _Node(head.name, f'aux head ({head.kind}) on {head.endpoint}', '', hwc, hwc)
    if head.kind == 'googlenet':
      if head.pool == 'adaptive4':
        pool = _Node(f'{head.name}/pool', 'adaptive avg pool to 4x4', '', hwc, (4, 4, c))
      else:
        pool = self.pool(specs.Pool('pool', 'avg', 5, 3, 'VALID'), f'{head.name}/pool', hwc)
      node.add(pool)
      conv = self.conv(specs.Conv('conv', 128, 1), f'{head.name}/conv', pool.shape)
      node.add(conv)
      # Averaged to 4x4 after the conv (the identity at the paper's input size).
      node.add(self.linear(f'{head.name}/fc1', 4 * 4 * 128, 1024, (4, 4, 128)))
      node.add(_Node(f'{head.name}/dropout', 'dropout', '70%', (1, 1, 1024), (1, 1, 1024)))
      node.add(self.linear(f'{head.name}/fc2', 1024, num_classes, (1, 1, 1024)))
      node.layers = 4
    else:
      pool = self.pool(specs.Pool('pool', 'avg', 5, 3, 'VALID'), f'{head.name}/pool', hwc)
      node.add(pool)
      a = self.conv(specs.Conv('Conv2d_1b_1x1', 128, 1), f'{head.name}/Conv2d_1b_1x1',
                    pool.shape)
      node.add(a)
      b = self.conv(specs.Conv('Conv2d_2a_5x5', 768, 5, padding='VALID'),
                    f'{head.name}/Conv2d_2a_5x5', a.shape)
      node.add(b)
      node.add(_Node(f'{head.name}/global_pool', 'avg pool (global)', '', b.shape,
                     (1, 1, 768)))
      node.add(self.linear(f'{head.name}/Logits', 768, num_classes, (1, 1, 768)))
      node.layers = 3
    node.shape = node.children[-1].shape
    return node


# ------------------------------------------------------------------- options


# Options the table walk takes into account, and options that change no count.
_MODELLED = ('num_classes', 'include_top', 'pooling', 'in_channels', 'aux_logits',
             'padding', 'batch_norm', 'bn_scale', 'conv_bias', 'dropout_rate',
             'embedding_size')
_NO_EFFECT = ('dtype', 'param_dtype', 'scan_blocks', 'kernels', 'bn_eps', 'bn_momentum',
              'count_include_pad')


def _check_modelled(spec: specs.ArchSpec, opts: dict, default: dict) -> None:
  """Refuses an option the walk does not model (rather than miscount silently)."""
  other = [k for k in opts if k not in _MODELLED + _NO_EFFECT + ('arch',)
           and opts[k] != default.get(k)]
  if other:
    raise ValueError(f'{spec.name}: summary() does not model option(s) '
                     f'{", ".join(f"{k}={opts[k]!r}" for k in other)}; '
                     'leave them at their defaults')


def _resolve_options(spec: specs.ArchSpec, options: dict) -> dict:
  """The network options ``create_model`` would build ``spec`` with."""
  default = model_lib.ModelConfig.for_arch(spec).to_dict()
  opts = model_lib.ModelConfig.for_arch(spec, **options).to_dict()
  _check_modelled(spec, opts, default)
  return opts


def _model_options(model) -> dict:
  """The options of a built ``Inception`` (enough to redo its table walk)."""
  options = model.config.to_dict()
  options.pop('arch')
  return options


# ------------------------------------------------------------------- Summary


def _fmt_int(n: int) -> str:
  return f'{n:,}' if n else '0'


def _fmt_macs(n: int) -> str:
  if n == 0:
    return '0'
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:.{2 if unit == "G" else 1}f}{unit}'
  return str(n)


def _fmt_shape(shape) -> str:
  h, w, c = shape
  return f'{c}' if (h, w) == (1, 1) else f'{h}x{w}x{c}'


@dataclasses.dataclass(frozen=True)
class Summary:
  """The study of one network at one input size; ``print()`` it for the table.

  Attributes:
    arch: architecture name.
    spec: the table it was computed from.
    input_shape: (H, W, C) of one image.
    options: the resolved network options.
    rows: every row, all levels (``table(depth)`` filters by level).
    freeze: the ``TrainConfig.freeze`` value the marks follow, or None.
    depth: default display depth of ``str()``.
    tag: the pretrained tag whose options were used, if any.
  """
  arch: str
  spec: specs.ArchSpec
  input_shape: tuple[int, int, int]
  options: dict
  rows: tuple[Row, ...]
  freeze: str | None = None
  depth: int = 0
  tag: str | None = None

  @property
  def totals(self) -> Totals:
    top = [r for r in self.rows if r.level == 0]
    params = sum(r.params for r in top)
    frozen = sum(r.params for r in top if r.trainable is False)
    inference = [r for r in top if not r.train_only]
    macs = sum(r.macs for r in inference)
    return Totals(params=params, trainable=params - frozen, frozen=frozen,
                  bn_stats=sum(r.bn_stats for r in top), macs=macs, flops=2 * macs,
                  train_only_macs=sum(r.macs for r in top if r.train_only),
                  layers=sum(r.layers for r in inference))

  @property
  def endpoints(self) -> dict[str, tuple[int, int, int]]:
    """Output shape of every ``features()`` endpoint (what ``freeze`` accepts)."""
    out = {}
    for r in self.rows:
      if r.level == 0 and r.endpoint in self.layer_names:
        out[r.endpoint] = r.shape  # a Repeat's last block gives the stack's output
    return out

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(layer.name for layer in self.spec.layers)

  def row(self, name: str) -> Row:
    """The row called ``name`` (e.g. ``Mixed_5b``, ``Repeat/block35_2``, ``Logits``)."""
    for r in self.rows:
      if r.name == name:
        return r
    raise KeyError(f'no row {name!r} in the summary of {self.arch}; rows: '
                   f'{", ".join(r.name for r in self.rows if r.level == 0)}')

  def group(self, endpoint: str) -> list[Row]:
    """Level-0 rows of one endpoint (one, or the blocks of a Repeat)."""
    return [r for r in self.rows if r.level == 0 and r.endpoint == endpoint]

  def header(self) -> str:
    h, w, c = self.input_shape
    name = f'{self.arch}.{self.tag}' if self.tag else self.arch
    o = self.options
    parts = [f"padding '{o['padding']}'", 'BN' if o['batch_norm'] else 'no BN']
    if o['batch_norm'] and not o['bn_scale']:
      parts[-1] += ' without scale'
    if o['aux_logits']:
      parts.append('aux heads')
    if not o['include_top']:
      parts.append(f"no top, pooling {o['pooling']}")
    elif o['num_classes'] != 1000:
      parts.append(f"{o['num_classes']} classes")
    return f'{name} at {h}x{w}x{c} ({", ".join(parts)}); table: {self.spec.reference}'

  def table(self, depth: int | None = None) -> str:
    """The summary as text; ``depth`` 0 (endpoints), 1 (+ branches) or 2 (+ ops)."""
    depth = self.depth if depth is None else depth
    rows = [r for r in self.rows if r.level <= depth]
    show_marks = self.freeze is not None
    head = ['name', 'kind', 'output', 'params', 'MACs']
    if show_marks:
      head.append(f'freeze={self.freeze}')
    lines = []
    for r in rows:
      name = '  ' * r.level + r.name.rsplit('/', 1)[-1] if r.level else r.name
      if r.train_only and r.level == 0:
        name += ' (train)'
      line = [name, r.kind, _fmt_shape(r.shape), _fmt_int(r.params), _fmt_macs(r.macs)]
      if show_marks:
        line.append('' if r.trainable is None else ('train' if r.trainable else 'frozen'))
      lines.append(line)
    text = [self.header(), _render(head, lines, right=(3, 4))]
    text.append(self.totals_text())
    return '\n'.join(text)

  def totals_text(self) -> str:
    t = self.totals
    lines = [f'params {t.params:,}' + (
        f' (trainable {t.trainable:,}, frozen {t.frozen:,})' if self.freeze else '') +
             f'; BN statistics {t.bn_stats:,} (not trained by the optimizer)']
    lines.append(f'inference per image: {t.macs:,} multiply-adds = {t.flops / 1e9:.3f} '
                 f'GFLOPs; depth {t.layers} layers')
    if t.train_only_macs:
      lines.append(f'auxiliary heads (training only): {t.train_only_macs:,} multiply-adds')
    return '\n'.join(lines)

  def paper_comparison(self) -> list[PaperComparison]:
    """Every row of the paper's table beside the model's rows (``--paper``).

    The comparison is of the architecture: at the paper's input size with the
    architecture's default options, whatever this summary's size and options.
    """
    table = self._paper_table()
    base = self._paper_base()
    return [_compare(base, table, row) for row in table.rows]

  def _paper_base(self) -> 'Summary':
    default = summary(self.spec)
    same = (self.input_shape == default.input_shape and self.options == default.options)
    return self if same else default

  def _paper_table(self) -> paper_tables.PaperTable:
    table = paper_tables.paper_table(self.arch)
    if table is None:
      have = [a for a in registry.list_models() if paper_tables.paper_table(a)]
      raise ValueError(f'no paper table for {self.arch}; there are tables for '
                       f'{", ".join(have)}')
    return table

  def paper_text(self) -> str:
    """The ``--paper`` view: the paper's rows, the model's values, marks and notes."""
    table = self._paper_table()
    base = self._paper_base()
    comps = base.paper_comparison()
    keys = [k for k in ('size', 'patch', 'depth', 'params', 'ops', 'count', 'filters')
            if any(getattr(c.paper, {'params': 'params_k', 'ops': 'ops_m'}.get(k, k))
                   not in (None, '') for c in comps)]
    size_word = 'input' if table.size_is_input else 'output'
    head = ['paper row']
    for k in keys:
      head += [size_word if k == 'size' else k, '(model)']
    head += ['model rows', 'mark']
    notes: dict[tuple[str, str], int] = {}

    def note(kind, text):
      number = notes.setdefault((kind, text), len(notes) + 1)
      return f'[{number}]'

    lines = []
    for c in comps:
      p = c.paper
      printed = dict(size=p.size, patch=p.patch, depth=p.depth, params=p.params_k,
                     ops=p.ops_m, count=p.count, filters=p.filters)
      line = [p.label]
      for k in keys:
        shown = c.rows and (k == 'size' or printed[k] not in (None, ''))
        got = _fmt_value(k, c.model.get(k)) if shown else ''
        if k in c.mismatches:
          got += ' *'
        line += [_fmt_value(k, printed[k]), got]
      refs = []
      for kind, text in (('paper error', p.erratum), ('released network', p.released),
                         ('note', p.note)):
        if text:
          refs.append(note(kind, text))
      marks = [m for m, on in (('paper error', p.erratum), ('differs', p.released),
                               ('absent', not c.rows)) if on]
      if c.status == 'unexplained':
        marks = ['UNEXPLAINED']
      mark = ', '.join(marks) or 'same'
      line += [_endpoint_list(p.endpoints), f'{mark} {" ".join(refs)}'.strip()]
      lines.append(line)
    covered = {e for c in comps for e in c.paper.endpoints}
    for name, why in table.extra:
      if name in covered:
        continue
      r = base.group(name)
      line = ['(not in the table)']
      for k in keys:
        line += ['', _fmt_shape((r[0].input if table.size_is_input else r[-1].shape))
                 if (k == 'size' and r) else '']
      line += [name, f'extra {note("model row without a paper row", why)}']
      lines.append(line)
    text = [f'{table.title}', f'model: {base.header()}']
    if base is not self:
      text.append('(compared at the paper\'s input size with the default options)')
    text.append(_render(head, lines))
    text.append('* the model value differs from the printed one')
    text += [f'[{n}] {kind}: {why}' for (kind, why), n in notes.items()]
    return '\n'.join(text)

  def endpoints_text(self) -> str:
    """``--endpoints``: names for ``features()`` / ``freeze`` with shapes (and Keras')."""
    keras = KERAS_NAMES.get(self.arch, {})
    head = ['endpoint', 'output', 'params', 'Keras layer' if keras else '']
    lines = []
    for name in self.layer_names:
      group = self.group(name)
      last = group[-1]
      if len(group) > 1 or group[0].name != name:  # a Repeat: its blocks follow
        lines.append([name, _fmt_shape(last.shape), _fmt_int(sum(r.params for r in group)),
                      keras.get(last.name, '')])
        for r in group:
          lines.append(['  ' + r.name, _fmt_shape(r.shape), _fmt_int(r.params),
                        keras.get(r.name, '')])
      else:
        lines.append([name, _fmt_shape(last.shape), _fmt_int(last.params),
                      keras.get(name, '')])
    text = [f'{self.header()}',
            "features() returns these endpoints in order; TrainConfig.freeze / --freeze "
            "takes one of them (it and everything before it are frozen), 'backbone' or "
            "'none'. Indented rows are the blocks of a Repeat stack (one endpoint)."]
    if keras:
      text.append(f'Keras: the layer of keras.applications with the same output '
                  f'({_KERAS_APP[self.arch]}); Keras leaves the stem layers unnamed.')
    text.append(_render(head, lines, right=(2,)))
    return '\n'.join(text)

  def __str__(self) -> str:
    return self.table()


# ------------------------------------------------------------ paper tables


@dataclasses.dataclass(frozen=True)
class PaperComparison:
  """One paper row beside the model rows it corresponds to.

  Attributes:
    paper: the printed row.
    rows: the model's level-0 rows for it (empty when the network has none).
    model: the model's values of the printed quantities, in the paper's units:
      'size' (H, W, C), 'patch', 'depth', 'params' (K = 1024 weights), 'ops'
      (M multiply-adds), 'count', 'filters'.
    mismatches: the quantities whose model value differs from the printed one.
  """
  paper: paper_tables.PaperRow
  rows: tuple[Row, ...]
  model: dict
  mismatches: tuple[str, ...]

  @property
  def status(self) -> str:
    """'paper error', 'differs', 'same', 'absent' or 'unexplained' (a bug)."""
    p = self.paper
    if self.mismatches and not (p.erratum or p.released):
      return 'unexplained'
    if p.erratum:
      return 'paper error'
    if p.released:
      return 'differs'
    if not self.rows:
      return 'absent'
    return 'same'


def _norm_patch(p: str) -> str:
  if p.startswith('keep '):
    return f'{1 - float(p[5:]):.0%}'
  return p if ('/' in p or p.endswith('%') or not p) else p + '/1'


def _branch_ops(rows: Sequence[Row], endpoint: str) -> list[list[Row]]:
  """Level-2 rows of each branch of one module, in order."""
  out: dict[str, list[Row]] = {}
  for r in rows:
    parts = r.name.split('/')
    if r.level == 2 and parts[0] == endpoint and parts[1].startswith('Branch_'):
      out.setdefault(parts[1], []).append(r)
  return [out[k] for k in sorted(out, key=lambda b: int(b.split('_')[1]))]


def _filters(layout: str, group: Sequence[Row], all_rows: Sequence[Row]) -> tuple | None:
  """The model's filter columns of a GoogLeNet Table 1 / BN-Inception Figure 5 row."""
  if all(r.kind.startswith(('conv', 'sep conv')) for r in group):
    if len(group) != 2:
      return None
    return (None, group[0].shape[2], group[1].shape[2], None, None, None)
  if len(group) != 1:
    return None
  branches = _branch_ops(all_rows, group[0].endpoint)
  convs = [[r.shape[2] for r in b if 'conv' in r.kind] for b in branches]
  if layout == 'googlenet':
    return tuple(c for b in convs for c in b) if [len(b) for b in convs] == [1, 2, 2, 1] else None
  pool = branches[-1][0].kind.split()[0] if branches and 'pool' in branches[-1][0].kind else ''
  if len(branches) == 4:
    return (convs[0][0], *convs[1][:2], *convs[2][:2], f'{pool} + {convs[3][-1]}')
  if len(branches) == 3 and not convs[2]:
    return (None, *convs[0][:2], *convs[1][:2], f'{pool} + pass through')
  return None


def _compare(summ: 'Summary', table: paper_tables.PaperTable,
             row: paper_tables.PaperRow) -> PaperComparison:
  top = [r for r in summ.rows if r.level == 0 and not r.train_only]
  group = tuple(r for r in top if r.endpoint in row.endpoints)
  model, bad = {}, []
  if group:
    model['size'] = group[0].input if table.size_is_input else group[-1].shape
    model['patch'] = group[-1].patch
    model['depth'] = sum(r.layers for r in group)
    model['params'] = sum(r.weights for r in group) / 1024
    model['ops'] = sum(r.macs for r in group) / 1e6
    model['count'] = len(group)
    if table.columns:
      model['filters'] = _filters(table.columns, group, summ.rows)
    printed = dict(size=row.size, patch=row.patch, depth=row.depth, params=row.params_k,
                   ops=row.ops_m, count=row.count, filters=row.filters)
    for key, want in printed.items():
      if want is None or want == '':
        continue
      got = model.get(key)
      if key in ('params', 'ops'):
        ok = abs(got - want) <= 1  # the paper rounds loosely (3a: 159.5K printed 159)
      elif key == 'patch':
        ok = _norm_patch(got) == _norm_patch(want)
      else:
        ok = got == tuple(want) if isinstance(want, tuple) else got == want
      if not ok:
        bad.append(key)
  return PaperComparison(row, group, model, tuple(bad))


def _fmt_value(key: str, v) -> str:
  if v is None or v == '':
    return ''
  if key == 'size':
    return _fmt_shape(v)
  if key == 'params':
    return f'{v:.1f}K' if isinstance(v, float) and v != int(v) else f'{v:g}K'
  if key == 'ops':
    return f'{v:.1f}M' if isinstance(v, float) and v != int(v) else f'{v:g}M'
  if key == 'filters':
    return ' '.join('-' if x is None else str(x) for x in v)
  return str(v)


def _endpoint_list(names: Sequence[str]) -> str:
  if not names:
    return '-'
  if len(names) > 2:
    return f'{names[0]}..{names[-1]} ({len(names)})'
  return ' + '.join(names)


def _render(head: list[str], lines: list[list[str]], right=()) -> str:
  widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

  def fmt(cells):
    return '  '.join((str(c).rjust(w) if i in right else str(c).ljust(w))
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  sep = '  '.join('-' * w for w in widths)
  return '\n'.join([fmt(head), sep] + [fmt(c) for c in lines])


def _flatten(node: _Node, level: int, endpoint: str, train_only: bool) -> list[Row]:
  row = Row(name=node.name, kind=node.kind, level=level, endpoint=endpoint,
            patch=node.patch, input=node.input, shape=node.shape, params=node.params,
            weights=node.weights, bn_stats=node.bn_stats, macs=node.macs,
            macs_valid=node.macs_valid, layers=node.layers, train_only=train_only)
  rows = [row]
  for child in node.children:
    rows += _flatten(child, level + 1, endpoint, train_only)
  return rows


def _freeze_marks(freeze: str, tops: Sequence[str], layer_names: tuple[str, ...],
                  heads: tuple[str, ...], arch: str) -> dict[str, bool]:
  """Top-level name -> updated by the train step, from ``train.param_labels`` itself.

  ``tops``: every top-level module with parameters (endpoints, heads, and what is
  neither, such as FaceNet's ``Bottleneck``).
  """
  if freeze not in ('none', 'backbone') and freeze not in layer_names:
    raise ValueError(f"unknown freeze {freeze!r}: use 'none', 'backbone' or an endpoint "
                     f"of {arch}: {', '.join(layer_names)}")
  # The training module decides (optax is a training dependency, imported here).
  from inception_jax import train  # pylint: disable=g-import-not-at-top
  labels = train.param_labels({n: 0 for n in tops}, train.TrainConfig(freeze=freeze),
                              dict(arch=arch, layer_names=layer_names, heads=heads))
  return {n: labels[n] != 'frozen' for n in tops}


def _sizes(input_size) -> tuple[int, int]:
  if isinstance(input_size, int):
    return input_size, input_size
  h, w = input_size
  return int(h), int(w)


def summary(name_or_model: Any, input_size: int | tuple[int, int] | None = None, *,
            freeze: str | None = None, depth: int = 0, **options: Any) -> Summary:
  """The summary of a network, computed from its architecture table.

  Args:
    name_or_model: an architecture name (``inception_v3``), a pretrained tag
      (``inception_v3.keras``: its options, e.g. Keras' BN without scale), a
      model from ``create_model`` (its options), or an ``ArchSpec``.
    input_size: square size or (H, W); default the architecture's (a tag's: the
      weights' input size).
    freeze: mark rows as the train step with ``TrainConfig(freeze=...)`` treats
      them: 'none', 'backbone' or an endpoint name.
    depth: display depth of ``str()``: 0 endpoints, 1 + branches, 2 + ops.
    **options: network options as for ``create_model`` (``num_classes``,
      ``aux_logits``, ``include_top``, ``bn_scale``, ``padding`` ...).

  Returns:
    A ``Summary``; ``print()`` it, or read ``rows`` and ``totals``.
  """
  tag = None
  if isinstance(name_or_model, specs.ArchSpec):
    spec = name_or_model
  elif isinstance(name_or_model, str):
    arch, _, tag = name_or_model.partition('.')
    spec = registry.get_arch(arch)
    if tag:
      from inception_jax import pretrained  # pylint: disable=g-import-not-at-top
      cfg = pretrained.get_pretrained_cfg(name_or_model)
      options = {**dict(cfg.options), 'num_classes': cfg.num_classes, **options}
      if input_size is None:
        input_size = cfg.input_size  # the weights' resolution (FaceNet: 160)
    tag = tag or None
  elif isinstance(name_or_model, model_lib.Inception):
    spec = registry.get_arch(name_or_model.arch)
    options = {**_model_options(name_or_model), **options}
  else:
    raise TypeError('summary() takes an architecture name, a pretrained tag, an '
                    f'Inception model or an ArchSpec, got {type(name_or_model).__name__}')
  if depth not in (0, 1, 2):
    raise ValueError(f'depth must be 0 (endpoints), 1 (+ branches) or 2 (+ ops), got {depth}')
  opts = _resolve_options(spec, options)
  h, w = _sizes(spec.default_size if input_size is None else input_size)
  need = spec.min_input_size(opts['padding'])
  if min(h, w) < need:
    raise ValueError(f'{spec.name} needs inputs of at least {need}x{need}, got {h}x{w} '
                     f'(default {spec.default_size})')
  walker = _Walker(opts)
  hwc = (h, w, opts['in_channels'])
  rows: list[Row] = []
  outputs = {}
  for layer in spec.layers:
    for node in walker.layer(layer, hwc):
      rows += _flatten(node, 0, layer.name, False)
      hwc = node.shape
    outputs[layer.name] = hwc
  heads: tuple[str, ...] = ()
  if opts['pooling'] is not None:
    kind = f"{opts['pooling']} pool (global)"
    rows.append(Row('global_pool', kind, 0, 'global_pool', f'{hwc[0]}x{hwc[1]}/1', hwc,
                    (1, 1, hwc[2])))
  emb = opts.get('embedding_size')
  if opts['include_top'] or emb:
    c = hwc[2]
    rate = opts['dropout_rate']
    rows.append(Row('dropout', 'dropout', 0, 'dropout', f'{rate:.0%}', (1, 1, c), (1, 1, c)))
  if emb:  # FaceNet: pooled -> dropout -> Bottleneck (-> Logits)
    rows += _flatten(walker.bottleneck('Bottleneck', hwc[2], emb, (1, 1, hwc[2])), 0,
                     'Bottleneck', False)
    hwc = (1, 1, emb)
  if opts['include_top']:
    c = hwc[2]
    rows += _flatten(walker.linear('Logits', c, opts['num_classes'], (1, 1, c)), 0,
                     'Logits', False)
    heads = ('Logits',)
  if opts['aux_logits']:
    for head in spec.aux_heads:
      hh, hw, _ = outputs[head.endpoint]
      if not head.fits(min(hh, hw), opts['padding']):
        raise ValueError(f'{spec.name} with aux_logits=True needs inputs of at least '
                         f'{spec.min_input_size(opts["padding"], aux=True)} (the '
                         f'{head.name} head on {head.endpoint}), got {h}x{w}')
      rows += _flatten(walker.aux_head(head, outputs[head.endpoint], opts['num_classes']),
                       0, head.name, True)
      heads += (head.name,)
  if freeze is not None:
    layer_names = tuple(layer.name for layer in spec.layers)
    tops = list(dict.fromkeys(r.endpoint for r in rows if r.level == 0 and r.params))
    marks = _freeze_marks(freeze, tops, layer_names, heads, spec.name)
    rows = [dataclasses.replace(r, trainable=marks[r.endpoint]) if r.params and
            r.endpoint in marks else r for r in rows]
  return Summary(arch=spec.name, spec=spec, input_shape=(h, w, opts['in_channels']),
                 options=opts, rows=tuple(rows), freeze=freeze, depth=depth, tag=tag)


def model_flops(name_or_model: Any, input_size: int | tuple[int, int] | None = None,
                **options: Any) -> int:
  """Inference FLOPs per image (2 x multiply-adds), for model-FLOPs utilisation.

  The convention of the papers and torchvision: every kernel tap counts, padding
  included; elementwise work (BN, ReLU, pools) does not. XLA's cost analysis of
  the same network reads a few percent lower (it skips taps on zero padding and
  adds the elementwise work; see ``Row.macs_valid``), and counts a rolled
  ``nnx.scan`` loop body once.

  Args:
    name_or_model: as for ``summary``.
    input_size: square size or (H, W); default the architecture's.
    **options: network options, as for ``summary``.
  """
  return summary(name_or_model, input_size, **options).totals.flops


# ----------------------------------------------------------------- the family


@dataclasses.dataclass(frozen=True)
class WeightsPoint:
  """One set of pretrained weights: its reported top-1 and the cost at its size."""
  name: str
  top1: float
  input_size: int
  gflops: float


@dataclasses.dataclass(frozen=True)
class FamilyRow:
  """One architecture in ``--all``.

  Attributes:
    arch: registered name.
    params: parameters with the 1000-class classifier, no aux heads.
    gflops: inference GFLOPs (2 x multiply-adds) at ``default_size``.
    layers: depth (parameterised layers on the longest path).
    min_input: smallest valid square input (TF padding).
    default_size: the paper's input size.
    weights: the available pretrained weights with a reported ImageNet top-1.
    other_weights: tags of weights without one (another label space or task).
  """
  arch: str
  params: int
  gflops: float
  layers: int
  min_input: int
  default_size: int
  weights: tuple[WeightsPoint, ...]
  other_weights: tuple[str, ...] = ()


def family() -> list[FamilyRow]:
  """Every registered architecture at its default size, with its weights' top-1."""
  from inception_jax import pretrained  # pylint: disable=g-import-not-at-top
  out = []
  for arch in registry.list_models():
    s = summary(arch, aux_logits=False)
    points, others = [], []
    for name in pretrained.list_pretrained(arch + '.*'):
      cfg = pretrained.get_pretrained_cfg(name)
      top1 = getattr(cfg, 'top1', None)
      if top1 is None or cfg.num_classes != 1000:
        others.append(name.split('.', 1)[1])  # not ImageNet-1k classification
        continue
      size = cfg.input_size
      flops = (s.totals.flops if size == s.input_shape[0] else
               summary(arch, size, aux_logits=False).totals.flops)
      points.append(WeightsPoint(name, float(top1), size, flops / 1e9))
    spec = registry.get_arch(arch)
    out.append(FamilyRow(arch, s.totals.params, s.totals.flops / 1e9, s.totals.layers,
                         spec.min_input_size(s.options['padding']), spec.default_size,
                         tuple(points), tuple(others)))
  return out


def family_text(rows: Sequence[FamilyRow] | None = None) -> str:
  """``--all``: the cross-family table."""
  rows = family() if rows is None else rows
  head = ['architecture', 'params', 'GMACs', 'GFLOPs', 'depth', 'min input', 'input',
          'reported top-1 (weights)']
  lines = []
  for r in rows:
    if r.weights:
      best = max(r.weights, key=lambda p: p.top1)
      more = f' (+{len(r.weights) - 1} more)' if len(r.weights) > 1 else ''
      top1 = f'{best.top1:.3f} {best.name.split(".", 1)[1]}{more}'
    else:
      top1 = '-'
    if r.other_weights:
      top1 += f' (no top-1: {", ".join(r.other_weights)})'
    elif not r.weights:
      top1 += ' (no weights)'
    lines.append([r.arch, f'{r.params / 1e6:.2f}M', f'{r.gflops / 2:.3f}', f'{r.gflops:.2f}',
                  str(r.layers), str(r.min_input), str(r.default_size), top1])
  notes = ('params: 1000 classes, no aux heads; GMACs: multiply-adds (10^9) of the '
           'convolutions and linear layers at the default input, GFLOPs = 2 x GMACs; '
           'depth: parameterised '
           'layers on the longest path; top-1: reported by the weights\' publisher '
           '(ImageNet-1k val, single crop)')
  return '\n'.join([_render(head, lines, right=(1, 2, 3, 4, 5, 6)), notes])


# ------------------------------------------------------------------------ CLI


def _parse_size(text: str):
  if 'x' in text:
    h, w = text.lower().split('x')
    return int(h), int(w)
  return int(text)


def _parse_value(text: str):
  low = text.lower()
  if low in ('true', 'false'):
    return low == 'true'
  if low == 'none':
    return None
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m inception_jax.summary',
      description='Per-endpoint shapes, parameters and multiply-adds of an Inception '
      'network, from its architecture table (nothing is built or compiled).')
  p.add_argument('arch', nargs='?', help='architecture (inception_v3) or pretrained tag '
                 '(inception_v3.keras: its options)')
  p.add_argument('--input_size', type=_parse_size, default=None,
                 help='square size or HxW (default: the architecture\'s)')
  p.add_argument('--depth', type=int, default=0, choices=(0, 1, 2),
                 help='0: endpoints, 1: + branches, 2: + every conv and pool')
  p.add_argument('--freeze', default=None,
                 help="mark what TrainConfig(freeze=...) trains: 'backbone', 'none' or an "
                 'endpoint')
  p.add_argument('--paper', action='store_true', help="the paper's table beside the model")
  p.add_argument('--endpoints', action='store_true',
                 help='endpoint names and shapes (features(), --freeze), Keras names')
  p.add_argument('--diagram', metavar='PATH', default=None,
                 help='draw one module of each kind to PATH (.png or .svg; needs matplotlib)')
  p.add_argument('--all', action='store_true',
                 help='every architecture: params, GFLOPs, depth, minimum input, top-1')
  p.add_argument('--plot', metavar='PATH', default=None,
                 help='with --all: top-1 against GFLOPs as PATH (.png or .svg)')
  p.add_argument('--aux_logits', action='store_true', help='include the auxiliary heads')
  p.add_argument('--num_classes', type=int, default=None)
  p.add_argument('--option', action='append', default=[], metavar='NAME=VALUE',
                 help='any create_model option, e.g. --option bn_scale=false (repeatable)')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Command line; returns the exit status (2 for a user error, with no traceback)."""
  args = _parser().parse_args(argv)
  try:
    if args.all:
      rows = family()
      print(family_text(rows))
      if args.plot:
        from inception_jax.summary import plots  # pylint: disable=g-import-not-at-top
        plots.plot_family(rows, args.plot)
        print(f'wrote {args.plot}')
      return 0
    if not args.arch:
      raise ValueError('name an architecture (one of '
                       f'{", ".join(registry.list_models())}) or pass --all')
    if args.plot:
      raise ValueError('--plot goes with --all (top-1 against GFLOPs of every architecture)')
    options = {}
    for item in args.option:
      if '=' not in item:
        raise ValueError(f'--option takes NAME=VALUE, got {item!r}')
      k, v = item.split('=', 1)
      options[k.strip()] = _parse_value(v.strip())
    if args.aux_logits:
      options['aux_logits'] = True
    if args.num_classes is not None:
      options['num_classes'] = args.num_classes
    s = summary(args.arch, args.input_size, freeze=args.freeze, depth=args.depth, **options)
    if args.endpoints:
      print(s.endpoints_text())
    elif args.paper:
      print(s.paper_text())
    elif not args.diagram:
      print(s.table())
    if args.diagram:
      from inception_jax.summary import plots  # pylint: disable=g-import-not-at-top
      kinds = plots.draw_modules(s, args.diagram)
      print(f'wrote {args.diagram}: {", ".join(kinds)}')
  except (ValueError, KeyError, ImportError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0

