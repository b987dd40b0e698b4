"""Keras Applications ``.h5`` weights -> the project format.

Sources: ``inception_v3_weights_tf_dim_ordering_tf_kernels{,_notop}.h5`` and
``inception_resnet_v2_weights_tf_dim_ordering_tf_kernels{,_notop}.h5``
(keras-applications releases v0.5 / v0.7, loaded by ``keras.applications``), and
files written by Keras 3's legacy writer
(``keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group``).

Layout of those files (Keras "legacy h5"): root attribute ``layer_names`` lists every
layer of the model in ``model.layers`` order; the group of each layer has an
attribute ``weight_names`` (trainable then non-trainable weights) naming its
datasets. Keras 2 names them ``conv2d_1/kernel:0`` (process-global, 1-based
counters), Keras 3 ``conv2d/kernel`` (counters from 0, or wherever the process's
counter stood). Names therefore say nothing reliable about *which* conv a layer is;
Keras itself loads these files by position (``load_weights_from_hdf5_group``): the
k-th layer with weights in the file goes to the k-th layer with weights of the
model. This module does the same without importing Keras: ``_v3`` and ``_ir_v2``
replay ``keras/src/applications/inception_v3.py`` and ``inception_resnet_v2.py``
call by call into a small graph tagged with TF-slim scopes, and ``_keras_order``
orders it exactly as ``keras.src.ops.function.map_graph`` orders ``model.layers``
(by decreasing depth from the output, ties by first visit of a depth-first walk from
the output). Every array is checked against the shape the replay predicts.

Keras layers -> project keys: ``Conv2D`` kernel (HWIO) -> ``{scope}/conv/kernel``
(plus ``/conv/bias`` for the Inception-ResNet up-projection), ``BatchNormalization``
(``scale=False``: beta, moving mean, moving variance) -> ``{scope}/bn/{bias,mean,var}``,
``Dense`` ``predictions`` -> ``Logits/{kernel,bias}``. Blocks of a ``Repeat`` are
stacked on a leading axis. Keras BN has no gamma, epsilon 1e-3; its average pools
exclude padding and pad 'SAME' the TF way: load into a model built with
``bn_scale=False, count_include_pad=False, padding='tf'``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np

TAGS = ('inception_v3.keras', 'inception_resnet_v2.keras')


class KerasWeightsError(ValueError):
  """A Keras ``.h5`` file cannot be converted for the requested architecture."""


@dataclasses.dataclass
class _Node:
  """One Keras layer call of the replayed model (each layer is called once)."""
  kind: str  # conv | bn | dense | other
  inputs: tuple[int, ...]
  channels: int
  scope: str = ''  # TF-slim scope of conv/bn/dense layers
  repeat: int | None = None  # block index inside a Repeat (stacked axis)
  shape: tuple[int, ...] = ()  # conv kernel HWIO; bn (channels,); dense (in,)
  bias: bool = False


class _Graph:
  """The Keras functional graph of an application, replayed layer call by layer call."""

  def __init__(self):
    self.nodes: list[_Node] = []
    self.repeat: int | None = None

  def add(self, kind, inputs, channels, **kw) -> int:
    self.nodes.append(_Node(kind, tuple(inputs), channels, repeat=self.repeat, **kw))
    return len(self.nodes) - 1

  def c(self, x: int) -> int:
    return self.nodes[x].channels

  def input(self) -> int:
    return self.add('other', (), 3)

  def op(self, x: int) -> int:
    """A weightless single-input layer keeping the channels (pool, activation)."""
    return self.add('other', (x,), self.c(x))

  def concat(self, xs) -> int:
    return self.add('other', xs, sum(self.c(x) for x in xs))

  def conv(self, x, scope, filters, kernel, bias=False) -> int:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return self.add('conv', (x,), filters, scope=scope,
                    shape=(kh, kw, self.c(x), filters), bias=bias)

  def conv_bn(self, x, scope, filters, kernel, activation=True) -> int:
    """``conv2d_bn`` of both Keras files: Conv2D(no bias) -> BN(scale=False) -> ReLU."""
    x = self.conv(x, scope, filters, kernel)
    x = self.add('bn', (x,), filters, scope=scope, shape=(filters,))
    return self.op(x) if activation else x

  def head(self, x, include_top) -> int:
    """GlobalAveragePooling2D 'avg_pool' -> Dense 'predictions' (or nothing)."""
    if not include_top:
      return x
    x = self.op(x)
    return self.add('dense', (x,), 0, scope='Logits', shape=(self.c(x),))


def _stem(g: _Graph):
  """The stem both applications share (the Inception-v3 stem, to 35x35x192)."""
  cb = g.conv_bn
  x = g.input()
  x = cb(x, 'Conv2d_1a_3x3', 32, 3)
  x = cb(x, 'Conv2d_2a_3x3', 32, 3)
  x = cb(x, 'Conv2d_2b_3x3', 64, 3)
  x = g.op(x)  # MaxPooling2D
  x = cb(x, 'Conv2d_3b_1x1', 80, 1)
  x = cb(x, 'Conv2d_4a_3x3', 192, 3)
  return g.op(x)  # MaxPooling2D


def _v3(include_top: bool) -> _Graph:
  """keras/src/applications/inception_v3.py ``InceptionV3``, with slim scopes."""
  g = _Graph()
  cb = g.conv_bn
  x = _stem(g)

  # mixed0..2 = Mixed_5b..5d (35x35)
  for name, pool, b1 in (('Mixed_5b', 32, ('Conv2d_0a_1x1', 'Conv2d_0b_5x5')),
                         ('Mixed_5c', 64, ('Conv2d_0b_1x1', 'Conv_1_0c_5x5')),
                         ('Mixed_5d', 64, ('Conv2d_0a_1x1', 'Conv2d_0b_5x5'))):
    branch1x1 = cb(x, f'{name}/Branch_0/Conv2d_0a_1x1', 64, 1)
    branch5x5 = cb(x, f'{name}/Branch_1/{b1[0]}', 48, 1)
    branch5x5 = cb(branch5x5, f'{name}/Branch_1/{b1[1]}', 64, 5)
    branch3x3dbl = cb(x, f'{name}/Branch_2/Conv2d_0a_1x1', 64, 1)
    branch3x3dbl = cb(branch3x3dbl, f'{name}/Branch_2/Conv2d_0b_3x3', 96, 3)
    branch3x3dbl = cb(branch3x3dbl, f'{name}/Branch_2/Conv2d_0c_3x3', 96, 3)
    branch_pool = g.op(x)  # AveragePooling2D
    branch_pool = cb(branch_pool, f'{name}/Branch_3/Conv2d_0b_1x1', pool, 1)
    x = g.concat((branch1x1, branch5x5, branch3x3dbl, branch_pool))

  # mixed3 = Mixed_6a (reduction to 17x17)
  branch3x3 = cb(x, 'Mixed_6a/Branch_0/Conv2d_1a_1x1', 384, 3)
  branch3x3dbl = cb(x, 'Mixed_6a/Branch_1/Conv2d_0a_1x1', 64, 1)
  branch3x3dbl = cb(branch3x3dbl, 'Mixed_6a/Branch_1/Conv2d_0b_3x3', 96, 3)
  branch3x3dbl = cb(branch3x3dbl, 'Mixed_6a/Branch_1/Conv2d_1a_1x1', 96, 3)
  branch_pool = g.op(x)  # MaxPooling2D
  x = g.concat((branch3x3, branch3x3dbl, branch_pool))

  # mixed4..7 = Mixed_6b..6e (17x17)
  for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160),
                   ('Mixed_6e', 192)):
    branch1x1 = cb(x, f'{name}/Branch_0/Conv2d_0a_1x1', 192, 1)
    branch7x7 = cb(x, f'{name}/Branch_1/Conv2d_0a_1x1', c7, 1)
    branch7x7 = cb(branch7x7, f'{name}/Branch_1/Conv2d_0b_1x7', c7, (1, 7))
    branch7x7 = cb(branch7x7, f'{name}/Branch_1/Conv2d_0c_7x1', 192, (7, 1))
    branch7x7dbl = cb(x, f'{name}/Branch_2/Conv2d_0a_1x1', c7, 1)
    branch7x7dbl = cb(branch7x7dbl, f'{name}/Branch_2/Conv2d_0b_7x1', c7, (7, 1))
    branch7x7dbl = cb(branch7x7dbl, f'{name}/Branch_2/Conv2d_0c_1x7', c7, (1, 7))
    branch7x7dbl = cb(branch7x7dbl, f'{name}/Branch_2/Conv2d_0d_7x1', c7, (7, 1))
    branch7x7dbl = cb(branch7x7dbl, f'{name}/Branch_2/Conv2d_0e_1x7', 192, (1, 7))
    branch_pool = g.op(x)  # AveragePooling2D
    branch_pool = cb(branch_pool, f'{name}/Branch_3/Conv2d_0b_1x1', 192, 1)
    x = g.concat((branch1x1, branch7x7, branch7x7dbl, branch_pool))

  # mixed8 = Mixed_7a (reduction to 8x8)
  branch3x3 = cb(x, 'Mixed_7a/Branch_0/Conv2d_0a_1x1', 192, 1)
  branch3x3 = cb(branch3x3, 'Mixed_7a/Branch_0/Conv2d_1a_3x3', 320, 3)
  branch7x7x3 = cb(x, 'Mixed_7a/Branch_1/Conv2d_0a_1x1', 192, 1)
  branch7x7x3 = cb(branch7x7x3, 'Mixed_7a/Branch_1/Conv2d_0b_1x7', 192, (1, 7))
  branch7x7x3 = cb(branch7x7x3, 'Mixed_7a/Branch_1/Conv2d_0c_7x1', 192, (7, 1))
  branch7x7x3 = cb(branch7x7x3, 'Mixed_7a/Branch_1/Conv2d_1a_3x3', 192, 3)
  branch_pool = g.op(x)  # MaxPooling2D
  x = g.concat((branch3x3, branch7x7x3, branch_pool))

  # mixed9, mixed10 = Mixed_7b, Mixed_7c (8x8)
  for name, second_3x1 in (('Mixed_7b', 'Conv2d_0b_3x1'), ('Mixed_7c', 'Conv2d_0c_3x1')):
    branch1x1 = cb(x, f'{name}/Branch_0/Conv2d_0a_1x1', 320, 1)
    branch3x3 = cb(x, f'{name}/Branch_1/Conv2d_0a_1x1', 384, 1)
    branch3x3_1 = cb(branch3x3, f'{name}/Branch_1/Conv2d_0b_1x3', 384, (1, 3))
    branch3x3_2 = cb(branch3x3, f'{name}/Branch_1/{second_3x1}', 384, (3, 1))
    branch3x3 = g.concat((branch3x3_1, branch3x3_2))  # mixed9_i
    branch3x3dbl = cb(x, f'{name}/Branch_2/Conv2d_0a_1x1', 448, 1)
    branch3x3dbl = cb(branch3x3dbl, f'{name}/Branch_2/Conv2d_0b_3x3', 384, 3)
    branch3x3dbl_1 = cb(branch3x3dbl, f'{name}/Branch_2/Conv2d_0c_1x3', 384, (1, 3))
    branch3x3dbl_2 = cb(branch3x3dbl, f'{name}/Branch_2/Conv2d_0d_3x1', 384, (3, 1))
    branch3x3dbl = g.concat((branch3x3dbl_1, branch3x3dbl_2))
    branch_pool = g.op(x)  # AveragePooling2D
    branch_pool = cb(branch_pool, f'{name}/Branch_3/Conv2d_0b_1x1', 192, 1)
    x = g.concat((branch1x1, branch3x3, branch3x3dbl, branch_pool))

  g.head(x, include_top)
  return g


def _ir_block(g: _Graph, x: int, scope: str, block_type: str, activation=True) -> int:
  """``inception_resnet_block``: branches -> concat -> 1x1 conv with bias -> scale -> ReLU."""
  cb = g.conv_bn
  if block_type == 'block35':
    branch_0 = cb(x, f'{scope}/Branch_0/Conv2d_1x1', 32, 1)
    branch_1 = cb(x, f'{scope}/Branch_1/Conv2d_0a_1x1', 32, 1)
    branch_1 = cb(branch_1, f'{scope}/Branch_1/Conv2d_0b_3x3', 32, 3)
    branch_2 = cb(x, f'{scope}/Branch_2/Conv2d_0a_1x1', 32, 1)
    branch_2 = cb(branch_2, f'{scope}/Branch_2/Conv2d_0b_3x3', 48, 3)
    branch_2 = cb(branch_2, f'{scope}/Branch_2/Conv2d_0c_3x3', 64, 3)
    branches = (branch_0, branch_1, branch_2)
  elif block_type == 'block17':
    branch_0 = cb(x, f'{scope}/Branch_0/Conv2d_1x1', 192, 1)
    branch_1 = cb(x, f'{scope}/Branch_1/Conv2d_0a_1x1', 128, 1)
    branch_1 = cb(branch_1, f'{scope}/Branch_1/Conv2d_0b_1x7', 160, (1, 7))
    branch_1 = cb(branch_1, f'{scope}/Branch_1/Conv2d_0c_7x1', 192, (7, 1))
    branches = (branch_0, branch_1)
  else:  # block8
    branch_0 = cb(x, f'{scope}/Branch_0/Conv2d_1x1', 192, 1)
    branch_1 = cb(x, f'{scope}/Branch_1/Conv2d_0a_1x1', 192, 1)
    branch_1 = cb(branch_1, f'{scope}/Branch_1/Conv2d_0b_1x3', 224, (1, 3))
    branch_1 = cb(branch_1, f'{scope}/Branch_1/Conv2d_0c_3x1', 256, (3, 1))
    branches = (branch_0, branch_1)
  mixed = g.concat(branches)  # {block_name}_mixed
  up = g.conv(mixed, f'{scope}/Conv2d_1x1', g.c(x), 1, bias=True)  # {block_name}_conv
  x = g.add('other', (x, up), g.c(x))  # CustomScaleLayer([x, up])
  return g.op(x) if activation else x  # {block_name}_ac


def _ir_v2(include_top: bool) -> _Graph:
  """keras/src/applications/inception_resnet_v2.py ``InceptionResNetV2``, slim scopes."""
  g = _Graph()
  cb = g.conv_bn
  x = _stem(g)

  # mixed_5b
  branch_0 = cb(x, 'Mixed_5b/Branch_0/Conv2d_1x1', 96, 1)
  branch_1 = cb(x, 'Mixed_5b/Branch_1/Conv2d_0a_1x1', 48, 1)
  branch_1 = cb(branch_1, 'Mixed_5b/Branch_1/Conv2d_0b_5x5', 64, 5)
  branch_2 = cb(x, 'Mixed_5b/Branch_2/Conv2d_0a_1x1', 64, 1)
  branch_2 = cb(branch_2, 'Mixed_5b/Branch_2/Conv2d_0b_3x3', 96, 3)
  branch_2 = cb(branch_2, 'Mixed_5b/Branch_2/Conv2d_0c_3x3', 96, 3)
  branch_pool = g.op(x)  # AveragePooling2D
  branch_pool = cb(branch_pool, 'Mixed_5b/Branch_3/Conv2d_0b_1x1', 64, 1)
  x = g.concat((branch_0, branch_1, branch_2, branch_pool))

  for i in range(10):  # block35_1..10 = Repeat/block35[i]
    g.repeat = i
    x = _ir_block(g, x, 'Repeat/block35', 'block35')
  g.repeat = None

  # mixed_6a
  branch_0 = cb(x, 'Mixed_6a/Branch_0/Conv2d_1a_3x3', 384, 3)
  branch_1 = cb(x, 'Mixed_6a/Branch_1/Conv2d_0a_1x1', 256, 1)
  branch_1 = cb(branch_1, 'Mixed_6a/Branch_1/Conv2d_0b_3x3', 256, 3)
  branch_1 = cb(branch_1, 'Mixed_6a/Branch_1/Conv2d_1a_3x3', 384, 3)
  branch_pool = g.op(x)  # MaxPooling2D
  x = g.concat((branch_0, branch_1, branch_pool))

  for i in range(20):  # block17_1..20 = Repeat_1/block17[i]
    g.repeat = i
    x = _ir_block(g, x, 'Repeat_1/block17', 'block17')
  g.repeat = None

  # mixed_7a
  branch_0 = cb(x, 'Mixed_7a/Branch_0/Conv2d_0a_1x1', 256, 1)
  branch_0 = cb(branch_0, 'Mixed_7a/Branch_0/Conv2d_1a_3x3', 384, 3)
  branch_1 = cb(x, 'Mixed_7a/Branch_1/Conv2d_0a_1x1', 256, 1)
  branch_1 = cb(branch_1, 'Mixed_7a/Branch_1/Conv2d_1a_3x3', 288, 3)
  branch_2 = cb(x, 'Mixed_7a/Branch_2/Conv2d_0a_1x1', 256, 1)
  branch_2 = cb(branch_2, 'Mixed_7a/Branch_2/Conv2d_0b_3x3', 288, 3)
  branch_2 = cb(branch_2, 'Mixed_7a/Branch_2/Conv2d_1a_3x3', 320, 3)
  branch_pool = g.op(x)  # MaxPooling2D
  x = g.concat((branch_0, branch_1, branch_2, branch_pool))

  for i in range(9):  # block8_1..9 = Repeat_2/block8[i]
    g.repeat = i
    x = _ir_block(g, x, 'Repeat_2/block8', 'block8')
  g.repeat = None
  x = _ir_block(g, x, 'Block8', 'block8', activation=False)  # block8_10: scale 1, no ReLU

  x = cb(x, 'Conv2d_7b_1x1', 1536, 1)  # conv_7b
  g.head(x, include_top)
  return g


_GRAPHS = {'inception_v3.keras': _v3, 'inception_resnet_v2.keras': _ir_v2}
_KERAS_NAMES = {'inception_v3.keras': 'InceptionV3',
                'inception_resnet_v2.keras': 'InceptionResNetV2'}


def _keras_order(g: _Graph) -> list[int]:
  """Node ids in ``model.layers`` order (``keras.src.ops.function.map_graph``).

  The output is the last node. A depth-first walk from it numbers each layer at its
  first visit and lists nodes inputs-first; a layer's depth is its longest path to
  the output. Layers are sorted by decreasing depth, ties by visit number.
  """
  out = len(g.nodes) - 1
  visit: dict[int, int] = {}
  post: list[int] = []
  done: set[int] = set()
  stack = [(out, iter(g.nodes[out].inputs))]
  visit[out] = 0
  while stack:  # iterative form of keras' recursive _build_map_helper
    node, parents = stack[-1]
    for p in parents:
      if p not in done:
        visit.setdefault(p, len(visit))
        stack.append((p, iter(g.nodes[p].inputs)))
        break
    else:
      stack.pop()
      done.add(node)
      post.append(node)
  depth: dict[int, int] = {}
  for node in reversed(post):
    d = depth.setdefault(node, 0)
    for p in g.nodes[node].inputs:
      depth[p] = max(d + 1, depth.get(p, 0))
  return sorted(post, key=lambda n: (-depth[n], visit[n]))


@dataclasses.dataclass(frozen=True)
class KerasLayer:
  """One Keras layer with weights: its weights' names, target keys and shapes."""
  scope: str
  repeat: int | None
  weights: tuple[tuple[str, str, tuple[int | None, ...]], ...]  # (keras name, key, shape)

  @property
  def label(self) -> str:
    return self.scope if self.repeat is None else f'{self.scope}[{self.repeat}]'


def layer_plan(tag: str, include_top: bool) -> list[KerasLayer]:
  """The layers with weights of the Keras model, in ``model.layers`` order.

  Args:
    tag: ``'inception_v3.keras'`` or ``'inception_resnet_v2.keras'``.
    include_top: with the ``predictions`` classifier.

  Returns:
    One ``KerasLayer`` per layer: TF-slim scope, block index in a ``Repeat`` (or None)
    and ``(keras weight name, project key, shape)`` per weight in the file's order;
    ``None`` in a shape is the class count.
  """
  g = _GRAPHS[tag](include_top)
  plan = []
  for i in _keras_order(g):
    n = g.nodes[i]
    if n.kind == 'conv':
      w = [('kernel', f'{n.scope}/conv/kernel', n.shape)]
      if n.bias:
        w.append(('bias', f'{n.scope}/conv/bias', (n.shape[-1],)))
    elif n.kind == 'bn':
      w = [('beta', f'{n.scope}/bn/bias', n.shape),
           ('moving_mean', f'{n.scope}/bn/mean', n.shape),
           ('moving_variance', f'{n.scope}/bn/var', n.shape)]
    elif n.kind == 'dense':
      # the class count (None) is whatever the file holds (1000 for ImageNet)
      w = [('kernel', 'Logits/kernel', n.shape + (None,)), ('bias', 'Logits/bias', (None,))]
    else:
      continue
    plan.append(KerasLayer(n.scope, n.repeat, tuple(w)))
  return plan


def layer_counts() -> dict[tuple[str, bool], int]:
  """Number of layers with weights of each Keras model: (tag, include_top) -> count."""
  return {(tag, top): len(layer_plan(tag, top)) for tag in TAGS for top in (True, False)}


def _attr_list(group, name: str) -> list[str]:
  """A string-list attribute, joining the chunks ``name0, name1...`` of long lists."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, i = [], 0
    while f'{name}{i}' in group.attrs:
      values.extend(group.attrs[f'{name}{i}'])
      i += 1
  return [v.decode('utf8') if isinstance(v, bytes) else str(v) for v in values]


def _weight_suffix(name: str) -> str:
  """'conv2d_1/kernel:0' -> 'kernel'; 'batch_normalization/moving_mean' -> 'moving_mean'."""
  return re.sub(r':\d+$', '', name).rsplit('/', 1)[-1]


def read_layers(path: str) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
  """The layers with weights of a Keras legacy ``.h5`` file, in file order.

  Args:
    path: a Keras 2 or Keras 3 legacy-format ``.h5`` weights (or whole-model) file.

  Returns:
    ``[(layer name, [(weight name, array), ...]), ...]`` for every layer of
    ``layer_names`` whose ``weight_names`` is not empty.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    KerasWeightsError: the file is not a readable Keras legacy ``.h5`` weights file.
  """
  import h5py  # pylint: disable=g-import-not-at-top

  if not os.path.exists(path):
    raise FileNotFoundError(f'no such Keras weights file: {path}')
  redownload = ('download the file again (the published files are '
                'inception_v3_weights_tf_dim_ordering_tf_kernels{,_notop}.h5 and '
                'inception_resnet_v2_weights_tf_dim_ordering_tf_kernels{,_notop}.h5)')
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise KerasWeightsError(f'{path} is not a readable HDF5 file (truncated or corrupt '
                            f'download?): {e}. Fix: {redownload}.') from e
  try:
    with f:
      root = f
      if 'layer_names' not in f.attrs and 'layer_names0' not in f.attrs:
        if 'model_weights' in f:  # a whole model saved with model.save('x.h5')
          root = f['model_weights']
        else:
          hint = (' It looks like a Keras 3 `.weights.h5` file (new format): re-save it '
                  'with keras.src.legacy.saving.legacy_h5_format.'
                  'save_weights_to_hdf5_group, or use the published file.'
                  if 'layers' in f or 'vars' in f else f' Fix: {redownload}.')
          raise KerasWeightsError(f'{path} is not a Keras legacy .h5 weights file '
                                  f'(no `layer_names` attribute).{hint}')
      layers = []
      for name in _attr_list(root, 'layer_names'):
        if name not in root:
          raise KerasWeightsError(f'{path}: layer {name!r} is listed in layer_names but '
                                  f'its group is missing (damaged file). Fix: {redownload}.')
        group = root[name]
        weight_names = _attr_list(group, 'weight_names')
        if not weight_names:
          continue
        arrays = []
        for w in weight_names:
          if w not in group:
            raise KerasWeightsError(f'{path}: weight {w!r} of layer {name!r} is missing '
                                    f'(damaged file). Fix: {redownload}.')
          arrays.append((w, np.asarray(group[w][()], dtype=np.float32)))
        layers.append((name, arrays))
      return layers
  except KerasWeightsError:
    raise
  except (OSError, KeyError, RuntimeError, ValueError) as e:  # h5py on damaged data
    raise KerasWeightsError(f'{path} could not be read (truncated or corrupt file?): '
                            f'{e}. Fix: {redownload}.') from e


def _wrong_file_message(path: str, tag: str, n: int, include_top: bool) -> str:
  counts = layer_counts()
  what = 'with' if include_top else 'without'
  msg = (f'{path} has {n} layers with weights; Keras {_KERAS_NAMES[tag]} ({tag}) '
         f'{what} the classifier has {counts[tag, include_top]}.')
  other = [t for t in TAGS if t != tag and counts[t, include_top] == n]
  if other:
    msg += (f' It looks like a Keras {_KERAS_NAMES[other[0]]} file: convert it with tag '
            f'{other[0]!r} (`python -m third_party_weights.convert --arch {other[0]}`).')
  else:
    msg += (' The file is for another model or has lost layers; use the published '
            f'Keras {_KERAS_NAMES[tag]} weights or a file saved from '
            f'keras.applications.{_KERAS_NAMES[tag]}.')
  return msg


def convert(path: str, tag: str) -> dict[str, np.ndarray]:
  """Converts a Keras Applications ``.h5`` file to flat project arrays.

  Args:
    path: a Keras 2 (published) or Keras 3 legacy-writer ``.h5`` file of
      ``InceptionV3`` or ``InceptionResNetV2``, with or without the classifier
      (``_notop``: no ``Logits`` keys).
    tag: ``'inception_v3.keras'`` or ``'inception_resnet_v2.keras'``.

  Returns:
    Flat key -> float32 array, for ``inception_jax.weights.assign`` into a model
    built with ``bn_scale=False, count_include_pad=False, padding='tf'`` (and
    ``include_top=False`` for a ``_notop`` file).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    KerasWeightsError: unknown tag, unreadable file, a file of another architecture,
      missing layers or weights of unexpected shape.
  """
  if tag not in _GRAPHS:
    raise KerasWeightsError(f'unknown Keras tag {tag!r}; valid tags: {", ".join(TAGS)}')
  layers = read_layers(path)
  # a classifier file ends with the Dense 'predictions': kernel [in, classes], bias
  include_top = bool(layers) and [a.ndim for _, a in layers[-1][1]] == [2, 1]
  plan = layer_plan(tag, include_top)
  if len(layers) != len(plan):
    raise KerasWeightsError(_wrong_file_message(path, tag, len(layers), include_top))
  stacked: dict[str, dict[int, np.ndarray]] = collections.defaultdict(dict)
  out: dict[str, np.ndarray] = {}
  for k, (slot, (lname, weights)) in enumerate(zip(plan, layers)):
    where = (f'{path}: layer #{k} {lname!r} (Keras {_KERAS_NAMES[tag]} layer for '
             f'{slot.label})')
    expected = [w[0] for w in slot.weights]
    found = [_weight_suffix(w) for w, _ in weights]
    if found != expected:
      raise KerasWeightsError(f'{where} holds weights {found}, expected {expected}: the '
                              'file is not a Keras ' + _KERAS_NAMES[tag] + ' file '
                              '(or a model variant with other layers); use the weights '
                              f'of keras.applications.{_KERAS_NAMES[tag]}.')
    classes = weights[0][1].shape[-1]  # Dense: kernel [in, classes], bias [classes]
    for (wname, key, shape), (_, array) in zip(slot.weights, weights):
      shape = tuple(classes if d is None else d for d in shape)
      if tuple(array.shape) != shape:
        raise KerasWeightsError(f'{where}: {wname} has shape {tuple(array.shape)}, '
                                f'expected {tuple(shape)}; the file is not a Keras '
                                f'{_KERAS_NAMES[tag]} file.')
      if slot.repeat is None:
        out[key] = array
      else:
        stacked[key][slot.repeat] = array
  for key, blocks in stacked.items():
    out[key] = np.stack([blocks[i] for i in sorted(blocks)])
  return out
