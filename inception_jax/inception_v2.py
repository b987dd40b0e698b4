"""Inception-v2 (BN-Inception): Ioffe & Szegedy 2015, "Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift" (arXiv 1502.03167),
appendix Figure 5, as released in TF-slim ``inception_v2.py``.

The errata of Figure 5 are resolved as TF-slim did (it is what the checkpoint holds):

* the stride-2 modules 3c and 4e are printed at their input resolution
  (28x28x576, 14x14x1024); they output 14x14x576 and 7x7x1024;
* 4c and 4d print "avg + 128", which would make 608 channels instead of the
  printed 576: their pool projections are 96;
* 5b uses a max pool in its pool branch (as printed).

The first conv is separable (7x7 depthwise with depth multiplier 8, then 1x1 to 64).
TF-slim applies its BatchNorm arg scope to ``slim.conv2d`` only, so this layer has a
bias and a ReLU and no BatchNorm (the checkpoint holds ``Conv2d_1a_7x7/biases``).

TF-slim scope names: paper 3a, 3b are ``Mixed_3b``, ``Mixed_3c``; the reduction 3c is
``Mixed_4a``; 4a..4d are ``Mixed_4b``..``Mixed_4e``; the reduction 4e is ``Mixed_5a``;
5a, 5b are ``Mixed_5b``, ``Mixed_5c``.
"""

from inception_jax.registry import register_arch
from inception_jax.specs import ArchSpec, Conv, Mixed, Pool, SeparableConv


def _module(name, n1x1, n3x3red, n3x3, d3x3red, d3x3, pool, pool_proj):
  """Figure 5 module: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | 3x3/1 pool -> 1x1."""
  pool_name = 'AvgPool_0a_3x3' if pool == 'avg' else 'MaxPool_0a_3x3'
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', n1x1, 1),),
      (Conv('Conv2d_0a_1x1', n3x3red, 1), Conv('Conv2d_0b_3x3', n3x3, 3)),
      (Conv('Conv2d_0a_1x1', d3x3red, 1), Conv('Conv2d_0b_3x3', d3x3, 3),
       Conv('Conv2d_0c_3x3', d3x3, 3)),
      (Pool(pool_name, pool, 3, 1), Conv('Conv2d_0b_1x1', pool_proj, 1)),
  ))


def _reduction(name, n3x3red, n3x3, d3x3red, d3x3):
  """Figure 5 "stride 2" module: no 1x1 branch, max pool + pass-through."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', n3x3red, 1), Conv('Conv2d_1a_3x3', n3x3, 3, stride=2)),
      (Conv('Conv2d_0a_1x1', d3x3red, 1), Conv('Conv2d_0b_3x3', d3x3, 3),
       Conv('Conv2d_1a_3x3', d3x3, 3, stride=2)),
      (Pool('MaxPool_1a_3x3', 'max', 3, 2),),
  ))


INCEPTION_V2 = register_arch(ArchSpec(
    name='inception_v2',
    reference='arXiv 1502.03167 Figure 5 (errata resolved as TF-slim inception_v2.py)',
    default_size=224,
    defaults=dict(dropout_rate=0.2),  # slim dropout_keep_prob=0.8
    layers=(
        # Separable 7x7/2: 3 -> 24 (depthwise x8) -> 64; bias, no BN (see above).
        SeparableConv('Conv2d_1a_7x7', 64, 7, stride=2, batch_norm=False, bias=True,
                      depth_multiplier=8),  # 112x112x64
        Pool('MaxPool_2a_3x3', 'max', 3, 2),  # 56x56x64
        Conv('Conv2d_2b_1x1', 64, 1),  # 56x56x64
        Conv('Conv2d_2c_3x3', 192, 3),  # 56x56x192
        Pool('MaxPool_3a_3x3', 'max', 3, 2),  # 28x28x192
        # Figure 5 rows: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3,
        # pool + proj.
        _module('Mixed_3b', 64, 64, 64, 64, 96, 'avg', 32),  # 3a: 28x28x256
        _module('Mixed_3c', 64, 64, 96, 64, 96, 'avg', 64),  # 3b: 28x28x320
        _reduction('Mixed_4a', 128, 160, 64, 96),  # 3c: 14x14x576
        _module('Mixed_4b', 224, 64, 96, 96, 128, 'avg', 128),  # 4a: 14x14x576
        _module('Mixed_4c', 192, 96, 128, 96, 128, 'avg', 128),  # 4b: 14x14x576
        _module('Mixed_4d', 160, 128, 160, 128, 160, 'avg', 96),  # 4c: 14x14x576
        _module('Mixed_4e', 96, 128, 192, 160, 192, 'avg', 96),  # 4d: 14x14x576
        _reduction('Mixed_5a', 128, 192, 192, 256),  # 4e: 7x7x1024
        _module('Mixed_5b', 352, 192, 320, 160, 224, 'avg', 128),  # 5a: 7x7x1024
        _module('Mixed_5c', 352, 192, 320, 192, 224, 'max', 128),  # 5b: 7x7x1024
    ),
))
