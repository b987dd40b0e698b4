"""Key maps from timm / torchvision state dicts to the inception_jax weight format.

Each architecture is a list of ``(torch module prefix, project module path, kind)``
rows written against the reference sources in site-packages
(``timm/models/inception_v3.py``, ``inception_v4.py``, ``inception_resnet_v2.py``,
``torchvision/models/googlenet.py``, ``inception.py``). Project paths are the
TF-slim scopes of the architecture tables (``Mixed_5b/Branch_1/Conv2d_0b_5x5``).

Kinds:
  * ``convbn``: ``conv.weight`` (OIHW -> HWIO) and ``bn.{weight,bias,running_mean,
    running_var}`` -> ``conv/kernel``, ``bn/{scale,bias,mean,var}``.
  * ``conv``: a plain conv with bias (Inception-ResNet up-projection).
  * ``linear``: ``weight [out, in]`` -> ``kernel [in, out]``, ``bias``.
  * ``linear_nobias``: ``weight`` only (FaceNet's bottleneck).
  * ``bn``: a bare ``BatchNorm1d`` (``weight, bias, running_mean, running_var``) ->
    ``{scale, bias, mean, var}`` (FaceNet's ``last_bn``).

Repeated Inception-ResNet blocks (timm ``repeat.0`` .. ``repeat.9``) are stacked on a
leading axis into one project path (``Repeat/block35``).

This module imports neither torch nor tensorflow: it maps numpy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

BN_SUFFIXES = (('bn.weight', 'bn/scale'), ('bn.bias', 'bn/bias'),
               ('bn.running_mean', 'bn/mean'), ('bn.running_var', 'bn/var'))
# Buffers that carry no weight (BatchNorm's step counter).
IGNORED_SUFFIXES = ('num_batches_tracked',)


class ConversionError(ValueError):
  """A source file does not hold the architecture it is converted as."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One module: torch prefixes (several = stacked on axis 0) -> project path."""
  torch: tuple[str, ...]
  project: str
  kind: str  # 'convbn' | 'conv' | 'linear' | 'linear_nobias' | 'bn'
  stacked: bool = False  # a Repeat: torch modules stacked on a new leading axis
  # Optional transform of a linear kernel [in, out] (e.g. a flatten-order permutation).
  fix: Callable[[np.ndarray], np.ndarray] | None = None


def _conv_kernel(w: np.ndarray) -> np.ndarray:
  if w.ndim != 4:
    raise ConversionError(f'expected a 4-d conv weight, got shape {w.shape}')
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _tensors(row: Row) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
  """(torch suffix, project suffix, transform) for one module kind."""
  ident = lambda a: a
  if row.kind == 'convbn':
    return [('conv.weight', 'conv/kernel', _conv_kernel)] + [
        (t, p, ident) for t, p in BN_SUFFIXES]
  if row.kind == 'conv':
    return [('weight', 'conv/kernel', _conv_kernel), ('bias', 'conv/bias', ident)]
  if row.kind in ('linear', 'linear_nobias'):
    def kernel(w):
      k = np.transpose(w)
      return row.fix(k) if row.fix else k
    bias = [('bias', 'bias', ident)] if row.kind == 'linear' else []
    return [('weight', 'kernel', kernel)] + bias
  if row.kind == 'bn':
    return [(t.removeprefix('bn.'), p.removeprefix('bn/'), ident) for t, p in BN_SUFFIXES]
  raise ValueError(f'unknown row kind {row.kind!r}')


def expand(rows: Iterable[Row]) -> list[tuple[tuple[str, ...], str, Callable, bool]]:
  """Per-tensor map: (torch keys, project key, transform, stacked)."""
  out = []
  for row in rows:
    for t_suffix, p_suffix, fn in _tensors(row):
      out.append((tuple(f'{t}.{t_suffix}' for t in row.torch),
                  f'{row.project}/{p_suffix}', fn, row.stacked))
  return out


def apply(rows: list[Row], state: dict[str, np.ndarray], *, what: str,
          drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """Maps a flat torch state dict to project keys, strictly.

  Args:
    rows: the architecture's map.
    state: torch key -> numpy array.
    what: description for error messages, e.g. 'timm inception_v3'.
    drop: torch key prefixes that are expected in the file and deliberately not
      converted (e.g. torchvision GoogLeNet's untrained aux heads).

  Raises:
    ConversionError: keys missing from or unexpected in the file.
  """
  table = expand(rows)
  used = set()
  missing = []
  out = {}
  for tkeys, pkey, fn, stacked in table:
    absent = [k for k in tkeys if k not in state]
    if absent:
      missing.extend(absent)
      continue
    arrays = [fn(np.asarray(state[k], dtype=np.float32)) for k in tkeys]
    out[pkey] = np.stack(arrays) if stacked else arrays[0]
    used.update(tkeys)
  unexpected = [k for k in state if k not in used
                and not k.endswith(IGNORED_SUFFIXES)
                and not any(k.startswith(p) for p in drop)]
  if missing or unexpected:
    lines = [f'the file is not a {what} state dict:']
    for name, keys in (('missing', missing), ('unexpected', unexpected)):
      if keys:
        more = f' (+{len(keys) - 6} more)' if len(keys) > 6 else ''
        lines.append(f'  {name} keys ({len(keys)}): {keys[:6]}{more}')
    lines.append('  Check --arch (the file may hold another architecture) and '
                 '--source (timm and torchvision name modules differently).')
    raise ConversionError('\n'.join(lines))
  return out


def _branches(prefix: str, project: str, pairs) -> list[Row]:
  return [Row((f'{prefix}.{t}',), f'{project}/{p}', 'convbn') for t, p in pairs]


# ----------------------------------------------------------------------------------
# Inception-v3: timm and torchvision share module names (torchvision Inception3).

def _v3_a(m, b1=('Conv2d_0a_1x1', 'Conv2d_0b_5x5')):
  return _branches(m, m, [
      ('branch1x1', 'Branch_0/Conv2d_0a_1x1'),
      ('branch5x5_1', f'Branch_1/{b1[0]}'), ('branch5x5_2', f'Branch_1/{b1[1]}'),
      ('branch3x3dbl_1', 'Branch_2/Conv2d_0a_1x1'),
      ('branch3x3dbl_2', 'Branch_2/Conv2d_0b_3x3'),
      ('branch3x3dbl_3', 'Branch_2/Conv2d_0c_3x3'),
      ('branch_pool', 'Branch_3/Conv2d_0b_1x1')])


def _v3_c(m):
  return _branches(m, m, [
      ('branch1x1', 'Branch_0/Conv2d_0a_1x1'),
      ('branch7x7_1', 'Branch_1/Conv2d_0a_1x1'), ('branch7x7_2', 'Branch_1/Conv2d_0b_1x7'),
      ('branch7x7_3', 'Branch_1/Conv2d_0c_7x1'),
      ('branch7x7dbl_1', 'Branch_2/Conv2d_0a_1x1'),
      ('branch7x7dbl_2', 'Branch_2/Conv2d_0b_7x1'),
      ('branch7x7dbl_3', 'Branch_2/Conv2d_0c_1x7'),
      ('branch7x7dbl_4', 'Branch_2/Conv2d_0d_7x1'),
      ('branch7x7dbl_5', 'Branch_2/Conv2d_0e_1x7'),
      ('branch_pool', 'Branch_3/Conv2d_0b_1x1')])


def _v3_e(m, second_3x1):
  # torch concatenates [branch3x3_2a (1x3), branch3x3_2b (3x1)], as slim does.
  return _branches(m, m, [
      ('branch1x1', 'Branch_0/Conv2d_0a_1x1'),
      ('branch3x3_1', 'Branch_1/Conv2d_0a_1x1'), ('branch3x3_2a', 'Branch_1/Conv2d_0b_1x3'),
      ('branch3x3_2b', f'Branch_1/{second_3x1}'),
      ('branch3x3dbl_1', 'Branch_2/Conv2d_0a_1x1'),
      ('branch3x3dbl_2', 'Branch_2/Conv2d_0b_3x3'),
      ('branch3x3dbl_3a', 'Branch_2/Conv2d_0c_1x3'),
      ('branch3x3dbl_3b', 'Branch_2/Conv2d_0d_3x1'),
      ('branch_pool', 'Branch_3/Conv2d_0b_1x1')])


INCEPTION_V3 = [
    *[Row((n,), n, 'convbn') for n in (
        'Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1',
        'Conv2d_4a_3x3')],
    *_v3_a('Mixed_5b'),
    *_v3_a('Mixed_5c', b1=('Conv2d_0b_1x1', 'Conv_1_0c_5x5')),  # slim's scope quirk
    *_v3_a('Mixed_5d'),
    *_branches('Mixed_6a', 'Mixed_6a', [
        ('branch3x3', 'Branch_0/Conv2d_1a_1x1'),  # a 3x3/2 conv (slim's name)
        ('branch3x3dbl_1', 'Branch_1/Conv2d_0a_1x1'),
        ('branch3x3dbl_2', 'Branch_1/Conv2d_0b_3x3'),
        ('branch3x3dbl_3', 'Branch_1/Conv2d_1a_1x1')]),
    *_v3_c('Mixed_6b'), *_v3_c('Mixed_6c'), *_v3_c('Mixed_6d'), *_v3_c('Mixed_6e'),
    *_branches('Mixed_7a', 'Mixed_7a', [
        ('branch3x3_1', 'Branch_0/Conv2d_0a_1x1'), ('branch3x3_2', 'Branch_0/Conv2d_1a_3x3'),
        ('branch7x7x3_1', 'Branch_1/Conv2d_0a_1x1'),
        ('branch7x7x3_2', 'Branch_1/Conv2d_0b_1x7'),
        ('branch7x7x3_3', 'Branch_1/Conv2d_0c_7x1'),
        ('branch7x7x3_4', 'Branch_1/Conv2d_1a_3x3')]),
    *_v3_e('Mixed_7b', 'Conv2d_0b_3x1'),
    *_v3_e('Mixed_7c', 'Conv2d_0c_3x1'),  # slim's scope quirk
    Row(('fc',), 'Logits', 'linear'),
]

INCEPTION_V3_AUX = [
    Row(('AuxLogits.conv0',), 'AuxLogits/Conv2d_1b_1x1', 'convbn'),
    Row(('AuxLogits.conv1',), 'AuxLogits/Conv2d_2a_5x5', 'convbn'),
    Row(('AuxLogits.fc',), 'AuxLogits/Logits', 'linear'),
]

# ----------------------------------------------------------------------------------
# Inception-v4: timm (Cadene) ``features.0`` .. ``features.21``, ``last_linear``.


def _v4_a(i, m):
  return _branches(f'features.{i}', m, [
      ('branch0', 'Branch_0/Conv2d_0a_1x1'),
      ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_3x3'),
      ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_3x3'),
      ('branch2.2', 'Branch_2/Conv2d_0c_3x3'),
      ('branch3.1', 'Branch_3/Conv2d_0b_1x1')])  # branch3.0 is the average pool


def _v4_b(i, m):
  return _branches(f'features.{i}', m, [
      ('branch0', 'Branch_0/Conv2d_0a_1x1'),
      ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_1x7'),
      ('branch1.2', 'Branch_1/Conv2d_0c_7x1'),
      ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_7x1'),
      ('branch2.2', 'Branch_2/Conv2d_0c_1x7'), ('branch2.3', 'Branch_2/Conv2d_0d_7x1'),
      ('branch2.4', 'Branch_2/Conv2d_0e_1x7'),
      ('branch3.1', 'Branch_3/Conv2d_0b_1x1')])


def _v4_c(i, m):
  return _branches(f'features.{i}', m, [
      ('branch0', 'Branch_0/Conv2d_0a_1x1'),
      ('branch1_0', 'Branch_1/Conv2d_0a_1x1'), ('branch1_1a', 'Branch_1/Conv2d_0b_1x3'),
      ('branch1_1b', 'Branch_1/Conv2d_0c_3x1'),
      ('branch2_0', 'Branch_2/Conv2d_0a_1x1'), ('branch2_1', 'Branch_2/Conv2d_0b_3x1'),
      ('branch2_2', 'Branch_2/Conv2d_0c_1x3'), ('branch2_3a', 'Branch_2/Conv2d_0d_1x3'),
      ('branch2_3b', 'Branch_2/Conv2d_0e_3x1'),
      ('branch3.1', 'Branch_3/Conv2d_0b_1x1')])


INCEPTION_V4 = [
    Row(('features.0',), 'Conv2d_1a_3x3', 'convbn'),
    Row(('features.1',), 'Conv2d_2a_3x3', 'convbn'),
    Row(('features.2',), 'Conv2d_2b_3x3', 'convbn'),
    # Mixed3a: cat(maxpool, conv) = slim Branch_0 (pool), Branch_1 (conv).
    Row(('features.3.conv',), 'Mixed_3a/Branch_1/Conv2d_0a_3x3', 'convbn'),
    *_branches('features.4', 'Mixed_4a', [
        ('branch0.0', 'Branch_0/Conv2d_0a_1x1'), ('branch0.1', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_1x7'),
        ('branch1.2', 'Branch_1/Conv2d_0c_7x1'), ('branch1.3', 'Branch_1/Conv2d_1a_3x3')]),
    # Mixed5a: cat(conv, maxpool) = slim Branch_0 (conv), Branch_1 (pool).
    Row(('features.5.conv',), 'Mixed_5a/Branch_0/Conv2d_1a_3x3', 'convbn'),
    *[r for i, m in zip(range(6, 10), ('Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_5e'))
      for r in _v4_a(i, m)],
    *_branches('features.10', 'Mixed_6a', [
        ('branch0', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_3x3'),
        ('branch1.2', 'Branch_1/Conv2d_1a_3x3')]),
    *[r for i, m in zip(range(11, 18), [f'Mixed_6{c}' for c in 'bcdefgh'])
      for r in _v4_b(i, m)],
    *_branches('features.18', 'Mixed_7a', [
        ('branch0.0', 'Branch_0/Conv2d_0a_1x1'), ('branch0.1', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_1x7'),
        ('branch1.2', 'Branch_1/Conv2d_0c_7x1'), ('branch1.3', 'Branch_1/Conv2d_1a_3x3')]),
    *[r for i, m in zip(range(19, 22), ('Mixed_7b', 'Mixed_7c', 'Mixed_7d'))
      for r in _v4_c(i, m)],
    Row(('last_linear',), 'Logits', 'linear'),
]

# ----------------------------------------------------------------------------------
# Inception-ResNet-v2: timm (Cadene); blocks stacked into Repeat/block35 etc.


def _residual(prefix: str, count: int | None, project: str, pairs, up: str = 'conv2d'):
  """A residual block (count None) or ``count`` of them stacked (a Repeat)."""
  if count is None:
    torch = lambda sub: (f'{prefix}.{sub}',)
  else:
    torch = lambda sub: tuple(f'{prefix}.{i}.{sub}' for i in range(count))
  stacked = count is not None
  rows = [Row(torch(t), f'{project}/{p}', 'convbn', stacked=stacked) for t, p in pairs]
  rows.append(Row(torch(up), f'{project}/Conv2d_1x1', 'conv', stacked=stacked))
  return rows


_BLOCK35 = [('branch0', 'Branch_0/Conv2d_1x1'),
            ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_3x3'),
            ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_3x3'),
            ('branch2.2', 'Branch_2/Conv2d_0c_3x3')]
_BLOCK17 = [('branch0', 'Branch_0/Conv2d_1x1'),
            ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_1x7'),
            ('branch1.2', 'Branch_1/Conv2d_0c_7x1')]
_BLOCK8 = [('branch0', 'Branch_0/Conv2d_1x1'),
           ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_1x3'),
           ('branch1.2', 'Branch_1/Conv2d_0c_3x1')]

INCEPTION_RESNET_V2 = [
    Row(('conv2d_1a',), 'Conv2d_1a_3x3', 'convbn'),
    Row(('conv2d_2a',), 'Conv2d_2a_3x3', 'convbn'),
    Row(('conv2d_2b',), 'Conv2d_2b_3x3', 'convbn'),
    Row(('conv2d_3b',), 'Conv2d_3b_1x1', 'convbn'),
    Row(('conv2d_4a',), 'Conv2d_4a_3x3', 'convbn'),
    *_branches('mixed_5b', 'Mixed_5b', [
        ('branch0', 'Branch_0/Conv2d_1x1'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_5x5'),
        ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_3x3'),
        ('branch2.2', 'Branch_2/Conv2d_0c_3x3'),
        ('branch3.1', 'Branch_3/Conv2d_0b_1x1')]),
    *_residual('repeat', 10, 'Repeat/block35', _BLOCK35),
    *_branches('mixed_6a', 'Mixed_6a', [
        ('branch0', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_3x3'),
        ('branch1.2', 'Branch_1/Conv2d_1a_3x3')]),
    *_residual('repeat_1', 20, 'Repeat_1/block17', _BLOCK17),
    *_branches('mixed_7a', 'Mixed_7a', [
        ('branch0.0', 'Branch_0/Conv2d_0a_1x1'), ('branch0.1', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_1a_3x3'),
        ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_3x3'),
        ('branch2.2', 'Branch_2/Conv2d_1a_3x3')]),
    *_residual('repeat_2', 9, 'Repeat_2/block8', _BLOCK8),
    *_residual('block8', None, 'Block8', _BLOCK8),
    Row(('conv2d_7b',), 'Conv2d_7b_1x1', 'convbn'),
    Row(('classif',), 'Logits', 'linear'),
]

# ----------------------------------------------------------------------------------
# BN-Inception-v1 (torchvision GoogLeNet, a port of the TF-slim BN checkpoint).


def _googlenet_block(t, m, b2_second='Conv2d_0b_3x3'):
  # torchvision keeps slim's 3x3 in the "5x5" branch (pytorch/vision#906).
  return _branches(t, m, [
      ('branch1', 'Branch_0/Conv2d_0a_1x1'),
      ('branch2.0', 'Branch_1/Conv2d_0a_1x1'), ('branch2.1', 'Branch_1/Conv2d_0b_3x3'),
      ('branch3.0', 'Branch_2/Conv2d_0a_1x1'), ('branch3.1', f'Branch_2/{b2_second}'),
      ('branch4.1', 'Branch_3/Conv2d_0b_1x1')])  # branch4.0 is the max pool


INCEPTION_V1_BN = [
    Row(('conv1',), 'Conv2d_1a_7x7', 'convbn'),
    Row(('conv2',), 'Conv2d_2b_1x1', 'convbn'),
    Row(('conv3',), 'Conv2d_2c_3x3', 'convbn'),
    *_googlenet_block('inception3a', 'Mixed_3b'),
    *_googlenet_block('inception3b', 'Mixed_3c'),
    *_googlenet_block('inception4a', 'Mixed_4b'),
    *_googlenet_block('inception4b', 'Mixed_4c'),
    *_googlenet_block('inception4c', 'Mixed_4d'),
    *_googlenet_block('inception4d', 'Mixed_4e'),
    *_googlenet_block('inception4e', 'Mixed_4f'),
    *_googlenet_block('inception5a', 'Mixed_5b', 'Conv2d_0a_3x3'),  # slim's scope quirk
    *_googlenet_block('inception5b', 'Mixed_5c'),
    Row(('fc',), 'Logits', 'linear'),
]

# ----------------------------------------------------------------------------------
# Inception-ResNet-v1: facenet-pytorch ``InceptionResnetV1`` (a port of David
# Sandberg's FaceNet): the TF-slim-like trunk, then the embedding head
# ``last_linear`` (1792 -> 512, no bias) + ``last_bn`` (BatchNorm1d) -> ``Bottleneck``
# (``fc`` + ``bn``), and the optional face classifier ``logits`` -> ``Logits``.

INCEPTION_RESNET_V1 = [
    Row(('conv2d_1a',), 'Conv2d_1a_3x3', 'convbn'),
    Row(('conv2d_2a',), 'Conv2d_2a_3x3', 'convbn'),
    Row(('conv2d_2b',), 'Conv2d_2b_3x3', 'convbn'),
    Row(('conv2d_3b',), 'Conv2d_3b_1x1', 'convbn'),
    Row(('conv2d_4a',), 'Conv2d_4a_3x3', 'convbn'),
    Row(('conv2d_4b',), 'Conv2d_4b_3x3', 'convbn'),
    *_residual('repeat_1', 5, 'Repeat/block35', _BLOCK35),
    *_branches('mixed_6a', 'Mixed_6a', [
        ('branch0', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_0b_3x3'),
        ('branch1.2', 'Branch_1/Conv2d_1a_3x3')]),
    *_residual('repeat_2', 10, 'Repeat_1/block17', _BLOCK17),
    *_branches('mixed_7a', 'Mixed_7a', [
        ('branch0.0', 'Branch_0/Conv2d_0a_1x1'), ('branch0.1', 'Branch_0/Conv2d_1a_3x3'),
        ('branch1.0', 'Branch_1/Conv2d_0a_1x1'), ('branch1.1', 'Branch_1/Conv2d_1a_3x3'),
        ('branch2.0', 'Branch_2/Conv2d_0a_1x1'), ('branch2.1', 'Branch_2/Conv2d_0b_3x3'),
        ('branch2.2', 'Branch_2/Conv2d_1a_3x3')]),
    *_residual('repeat_3', 5, 'Repeat_2/block8', _BLOCK8),
    *_residual('block8', None, 'Block8', _BLOCK8),
    Row(('last_linear',), 'Bottleneck/fc', 'linear_nobias'),
    Row(('last_bn',), 'Bottleneck/bn', 'bn'),
]
INCEPTION_RESNET_V1_LOGITS = [Row(('logits',), 'Logits', 'linear')]

# arch -> (rows, optional rows: converted when the file has their first module --
# auxiliary heads, FaceNet's face classifier)
MAPS = {
    'inception_v3': (INCEPTION_V3, INCEPTION_V3_AUX),
    'inception_v4': (INCEPTION_V4, []),
    'inception_resnet_v2': (INCEPTION_RESNET_V2, []),
    'inception_v1_bn': (INCEPTION_V1_BN, []),
    'inception_resnet_v1': (INCEPTION_RESNET_V1, INCEPTION_RESNET_V1_LOGITS),
    # pytorch-fid / torch-fidelity FID Inception (2015-12-05 graph): torchvision's
    # Inception3 module names, no aux head, fc 2048 -> 1008.
    'inception_v3_fid': (INCEPTION_V3, []),
}

# Modules present in a source file that are deliberately not converted.
# torchvision's googlenet-1378be20.pth carries aux1/aux2, but they were never
# trained (torchvision drops them and warns); they are not shipped.
DROP = {'inception_v1_bn': ('aux1.', 'aux2.')}
