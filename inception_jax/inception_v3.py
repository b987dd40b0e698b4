"""Inception-v3: Szegedy et al. 2015, "Rethinking the Inception Architecture for
Computer Vision" (arXiv 1512.00567), as released in TF-slim ``inception_v3.py``.

The released topology is used (it is what every checkpoint holds): the stem of
Table 1 differs from the code (1x1 conv 80 + 3x3 VALID 192 + max pool, so the first
module sees 35x35x192, not 35x35x288), and the "5x" / "2x" module rows are
Mixed_6b..6e plus the Figure-10 reduction Mixed_6a, Mixed_7b..7c plus Mixed_7a.
Scope names, including their quirks (Mixed_5c ``Conv_1_0c_5x5``, Mixed_6a
``Conv2d_1a_1x1`` for a 3x3 conv, Mixed_7b ``Conv2d_0b_3x1`` vs Mixed_7c
``Conv2d_0c_3x1``), are TF-slim's.
"""

from inception_jax.registry import register_arch
from inception_jax.specs import ArchSpec, AuxHead, Conv, Fork, Mixed, Pool


def _figure5(name, pool_proj, b1=('Conv2d_0a_1x1', 'Conv2d_0b_5x5')):
  """35x35 module (Figure 5, with TF-slim's 5x5 in Branch_1); 64+64+96+pool_proj."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 64, 1),),
      (Conv(b1[0], 48, 1), Conv(b1[1], 64, 5)),
      (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_3x3', 96, 3),
       Conv('Conv2d_0c_3x3', 96, 3)),
      (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', pool_proj, 1)),
  ))


def _figure6(name, c7):
  """17x17 module with n=7 factorised into 1x7 and 7x1 (Figure 6); 4 x 192."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 192, 1),),
      (Conv('Conv2d_0a_1x1', c7, 1), Conv('Conv2d_0b_1x7', c7, (1, 7)),
       Conv('Conv2d_0c_7x1', 192, (7, 1))),
      (Conv('Conv2d_0a_1x1', c7, 1), Conv('Conv2d_0b_7x1', c7, (7, 1)),
       Conv('Conv2d_0c_1x7', c7, (1, 7)), Conv('Conv2d_0d_7x1', c7, (7, 1)),
       Conv('Conv2d_0e_1x7', 192, (1, 7))),
      (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 192, 1)),
  ))


def _figure7(name, second_3x1, pool='avg'):
  """8x8 module with the expanded filter bank (Figure 7); 320+768+768+192 = 2048.

  ``pool``: the kind of the pool branch's 3x3 pool ('max' in the 2015 FID graph's
  last block, see ``INCEPTION_V3_FID``).
  """
  pool_name = 'AvgPool_0a_3x3' if pool == 'avg' else 'MaxPool_0a_3x3'
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 320, 1),),
      (Conv('Conv2d_0a_1x1', 384, 1),
       Fork((Conv('Conv2d_0b_1x3', 384, (1, 3)), Conv(second_3x1, 384, (3, 1))))),
      (Conv('Conv2d_0a_1x1', 448, 1), Conv('Conv2d_0b_3x3', 384, 3),
       Fork((Conv('Conv2d_0c_1x3', 384, (1, 3)), Conv('Conv2d_0d_3x1', 384, (3, 1))))),
      (Pool(pool_name, pool, 3, 1), Conv('Conv2d_0b_1x1', 192, 1)),
  ))


INCEPTION_V3 = register_arch(ArchSpec(
    name='inception_v3',
    reference='arXiv 1512.00567 Table 1 and Figures 5-8, 10; TF-slim inception_v3.py',
    default_size=299,
    defaults=dict(dropout_rate=0.2),  # slim dropout_keep_prob=0.8
    layers=(
        Conv('Conv2d_1a_3x3', 32, 3, stride=2, padding='VALID'),  # 149x149x32
        Conv('Conv2d_2a_3x3', 32, 3, padding='VALID'),  # 147x147x32
        Conv('Conv2d_2b_3x3', 64, 3),  # 147x147x64 ("conv padded")
        Pool('MaxPool_3a_3x3', 'max', 3, 2, 'VALID'),  # 73x73x64
        Conv('Conv2d_3b_1x1', 80, 1, padding='VALID'),  # 73x73x80
        Conv('Conv2d_4a_3x3', 192, 3, padding='VALID'),  # 71x71x192
        Pool('MaxPool_5a_3x3', 'max', 3, 2, 'VALID'),  # 35x35x192
        _figure5('Mixed_5b', 32),  # 35x35x256
        _figure5('Mixed_5c', 64, b1=('Conv2d_0b_1x1', 'Conv_1_0c_5x5')),  # 35x35x288
        _figure5('Mixed_5d', 64),  # 35x35x288
        Mixed('Mixed_6a', (  # Figure 10 grid reduction: 384+96+288 = 17x17x768
            (Conv('Conv2d_1a_1x1', 384, 3, stride=2, padding='VALID'),),
            (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_3x3', 96, 3),
             Conv('Conv2d_1a_1x1', 96, 3, stride=2, padding='VALID')),
            (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
        )),
        _figure6('Mixed_6b', 128),  # 17x17x768
        _figure6('Mixed_6c', 160),
        _figure6('Mixed_6d', 160),
        _figure6('Mixed_6e', 192),  # 17x17x768, feeds AuxLogits
        Mixed('Mixed_7a', (  # reduction: 320+192+768 = 8x8x1280
            (Conv('Conv2d_0a_1x1', 192, 1),
             Conv('Conv2d_1a_3x3', 320, 3, stride=2, padding='VALID')),
            (Conv('Conv2d_0a_1x1', 192, 1), Conv('Conv2d_0b_1x7', 192, (1, 7)),
             Conv('Conv2d_0c_7x1', 192, (7, 1)),
             Conv('Conv2d_1a_3x3', 192, 3, stride=2, padding='VALID')),
            (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
        )),
        _figure7('Mixed_7b', 'Conv2d_0b_3x1'),  # 8x8x2048
        _figure7('Mixed_7c', 'Conv2d_0c_3x1'),  # 8x8x2048
    ),
    # TF-slim train_image_classifier.py weights the AuxLogits loss by 0.4.
    aux_heads=(AuxHead('AuxLogits', 'Mixed_6e', 'slim', loss_weight=0.4),),
))


# The network of the FID references: the graph of TensorFlow's 2015-12-05 Inception
# release (``classify_image_graph_def.pb``, whose ``pool_3`` defines FID; TTUR, the
# ADM evaluator) as pytorch-fid and torch-fidelity port it (their ``FIDInception*``
# blocks). It is the v3 table above with two block differences, written as data:
#   * every average pool excludes the zero padding from its count (TF 'SAME');
#     ``count_include_pad=False`` (the network option, default here), which are
#     the pool branches of Mixed_5b..5d, 6b..6e and 7b;
#   * Mixed_7c's pool branch is a 3x3/1 SAME *max* pool, as in that graph
#     (pytorch-fid's ``FIDInceptionE_2`` calls it "likely an error").
# The released graph classifies into 1008 classes (its ``softmax`` layer); the
# weight tag sets ``num_classes=1008``. Endpoints used by the metrics
# (``inception_jax.fid``): ``pool_3`` = global average of Mixed_7c (2048-d); the
# sFID feature ``mixed_6/conv`` = Mixed_6d's Branch_0 1x1 conv after BN and ReLU,
# i.e. channels 0..191 of the Mixed_6d endpoint (17x17 at 299 input).
INCEPTION_V3_FID = register_arch(ArchSpec(
    name='inception_v3_fid',
    reference=('inception_v3 table with the 2015-12-05 TF graph block differences '
               '(pytorch-fid FIDInceptionA/C/E_1/E_2)'),
    default_size=299,
    defaults=dict(dropout_rate=0.0, count_include_pad=False),
    layers=INCEPTION_V3.layers[:-1] + (
        _figure7('Mixed_7c', 'Conv2d_0c_3x1', pool='max'),  # 8x8x2048
    ),
))
