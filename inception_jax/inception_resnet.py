"""Inception-ResNet-v1 and -v2: Szegedy, Ioffe, Vanhoucke, Alemi 2016, "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning" (arXiv
1602.07261), Figures 3, 7 and 10-19, Table 1.

Three tables, one block vocabulary (``Residual``: ``act(x + scale * up(concat))``,
the 1x1 up-projection ``Conv2d_1x1`` has a bias and no BN). Repeated blocks are a
``Repeat`` (slim scopes ``Repeat/block35_i``, ``Repeat_1/block17_i``,
``Repeat_2/block8_i``), stored stacked and applied with ``nnx.scan``; the blocks of
a ``Repeat`` are therefore not separate endpoints.

``inception_resnet_v2``: the released TF-slim ``inception_resnet_v2.py``, the
topology behind the slim checkpoint and the Keras and timm weights. It is not the
paper's network: a v3-style stem plus ``Mixed_5b`` (35x35x320) replaces the
Figure 3 stem (35x35x384); the widths are 1088 at 17x17 and 2080 at 8x8 (paper:
1152/1154 and 2146/2048); 10/20/9 blocks with scales 0.17/0.10/0.20 (paper:
5/10/5, scale "between 0.1 and 0.3"), then an unscaled ``Block8`` without ReLU and
a 1x1 conv ``Conv2d_7b_1x1`` to 1536. slim's ``PreAuxLogits`` endpoint is the
output of ``Repeat_1``; the auxiliary head hangs there.

``inception_resnet_v1``: Figures 10-15 as implemented by facenet
(davidsandberg/facenet ``src/models/inception_resnet_v1.py``), the only released
implementation and checkpoints. Stem (Figure 14) to 35x35x256, 5 x block35
(0.17), Reduction-A with k,l,m,n = 192,192,256,384 -> 17x17x896, 10 x block17
(0.10), Reduction-B -> 8x8x1792, 5 x block8 (0.20). Two choices differ from the
paper's Figure 15:
  * like facenet (and slim's IR-v2), a sixth, final ``Block8`` with scale 1.0 and
    no ReLU follows the five scaled ones, so facenet checkpoints load;
  * the head is the ImageNet head of the family (global average pool, dropout,
    ``Logits``), as in Figure 15, not facenet's face-embedding bottleneck
    (FC 128/512 + BN, L2 normalisation), which is a face-recognition add-on.

``inception_resnet_v2_paper``: the network of the paper's figures, with no
released weights. v4 stem (Figure 3) to 35x35x384, 5 x IR-A (Figure 16, 384
wide), Reduction-A (Figure 7, k,l,m,n = 256,256,384,384), 10 x IR-B (Figure 17),
Reduction-B (Figure 18), 5 x IR-C (Figure 19), then the head. The paper
contradicts itself on the widths: Reduction-A outputs 384 + 384 + 384 = 1152
channels, but Figure 17's up-projection is 1154 wide; Reduction-B on 1152 gives
1152 + 384 + 288 + 320 = 2144 (2146 on 1154), but Figure 19's up-projection is
2048. This table takes the widths that follow from the concatenations: every
up-projection returns to its input width (a residual sum needs that), so 17x17x1152
and 8x8x2144. The figures have no final unscaled block and no final 1x1 conv,
and neither has this table. The per-block scales are slim's 0.17/0.10/0.20 (the
paper only says "between 0.1 and 0.3").
"""

from inception_jax import inception_v4
from inception_jax.registry import register_arch
from inception_jax.specs import ArchSpec, AuxHead, Conv, Mixed, Pool, Repeat, Residual


def _block35(b2=(32, 32, 32), b1=32, name='block35', scale=0.17):
  """IR-A (Figures 10 and 16): 32 | 32 -> 3x3 b1 | 32 -> 3x3 -> 3x3; up to the input width."""
  return Residual(name, (
      (Conv('Conv2d_1x1', 32, 1),),
      (Conv('Conv2d_0a_1x1', 32, 1), Conv('Conv2d_0b_3x3', b1, 3)),
      (Conv('Conv2d_0a_1x1', b2[0], 1), Conv('Conv2d_0b_3x3', b2[1], 3),
       Conv('Conv2d_0c_3x3', b2[2], 3)),
  ), scale=scale)


def _block17(b0, b1, name='block17', scale=0.10):
  """IR-B (Figures 11 and 17): b0 | b1[0] -> 1x7 b1[1] -> 7x1 b1[2]; up to the input width."""
  return Residual(name, (
      (Conv('Conv2d_1x1', b0, 1),),
      (Conv('Conv2d_0a_1x1', b1[0], 1), Conv('Conv2d_0b_1x7', b1[1], (1, 7)),
       Conv('Conv2d_0c_7x1', b1[2], (7, 1))),
  ), scale=scale)


def _block8(b1, name='block8', scale=0.20, activation=True):
  """IR-C (Figures 13 and 19): 192 | 192 -> 1x3 b1[0] -> 3x1 b1[1]; up to the input width."""
  return Residual(name, (
      (Conv('Conv2d_1x1', 192, 1),),
      (Conv('Conv2d_0a_1x1', 192, 1), Conv('Conv2d_0b_1x3', b1[0], (1, 3)),
       Conv('Conv2d_0c_3x1', b1[1], (3, 1))),
  ), scale=scale, activation=activation)


def _reduction_a(k, l, m, n):
  """Figure 7 / Table 1: n (3x3/2) | k -> l -> m (3x3/2) | max pool; in + n + m channels."""
  return Mixed('Mixed_6a', (
      (Conv('Conv2d_1a_3x3', n, 3, stride=2, padding='VALID'),),
      (Conv('Conv2d_0a_1x1', k, 1), Conv('Conv2d_0b_3x3', l, 3),
       Conv('Conv2d_1a_3x3', m, 3, stride=2, padding='VALID')),
      (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
  ))


def _reduction_b(b1, b2):
  """Figures 12 and 18: 256 -> 384 | 256 -> b1 | 256 -> b2[0] -> b2[1] | max pool."""
  return Mixed('Mixed_7a', (
      (Conv('Conv2d_0a_1x1', 256, 1),
       Conv('Conv2d_1a_3x3', 384, 3, stride=2, padding='VALID')),
      (Conv('Conv2d_0a_1x1', 256, 1),
       Conv('Conv2d_1a_3x3', b1, 3, stride=2, padding='VALID')),
      (Conv('Conv2d_0a_1x1', 256, 1), Conv('Conv2d_0b_3x3', b2[0], 3),
       Conv('Conv2d_1a_3x3', b2[1], 3, stride=2, padding='VALID')),
      (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
  ))


def _stem_v3(last):
  """Conv2d_1a .. Conv2d_4a of Inception-v3 (IR-v1 Figure 14, slim IR-v2 stem)."""
  return (
      Conv('Conv2d_1a_3x3', 32, 3, stride=2, padding='VALID'),  # 149x149x32
      Conv('Conv2d_2a_3x3', 32, 3, padding='VALID'),  # 147x147x32
      Conv('Conv2d_2b_3x3', 64, 3),  # 147x147x64
      Pool('MaxPool_3a_3x3', 'max', 3, 2, 'VALID'),  # 73x73x64
      Conv('Conv2d_3b_1x1', 80, 1, padding='VALID'),  # 73x73x80
      Conv('Conv2d_4a_3x3', 192, 3, padding='VALID'),  # 71x71x192
      last,  # 35x35
  )


INCEPTION_RESNET_V2 = register_arch(ArchSpec(
    name='inception_resnet_v2',
    reference='TF-slim inception_resnet_v2.py (released model; arXiv 1602.07261 '
              'Figures 16-19 for the block shapes)',
    default_size=299,
    defaults=dict(dropout_rate=0.2),  # slim dropout_keep_prob=0.8
    layers=_stem_v3(Pool('MaxPool_5a_3x3', 'max', 3, 2, 'VALID')) + (  # 35x35x192
        Mixed('Mixed_5b', (  # 96 + 64 + 96 + 64 = 35x35x320
            (Conv('Conv2d_1x1', 96, 1),),
            (Conv('Conv2d_0a_1x1', 48, 1), Conv('Conv2d_0b_5x5', 64, 5)),
            (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_3x3', 96, 3),
             Conv('Conv2d_0c_3x3', 96, 3)),
            (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 64, 1)),
        )),
        Repeat('Repeat', _block35(b2=(32, 48, 64)), 10),  # 35x35x320
        _reduction_a(256, 256, 384, 384),  # 384 + 384 + 320 = 17x17x1088
        Repeat('Repeat_1', _block17(192, (128, 160, 192)), 20),  # 17x17x1088, PreAuxLogits
        _reduction_b(288, (288, 320)),  # 384 + 288 + 320 + 1088 = 8x8x2080
        Repeat('Repeat_2', _block8((224, 256)), 9),  # 8x8x2080
        _block8((224, 256), name='Block8', scale=1.0, activation=False),  # 8x8x2080
        Conv('Conv2d_7b_1x1', 1536, 1),  # 8x8x1536
    ),
    # TF-slim train_image_classifier.py weights the AuxLogits loss by 0.4.
    aux_heads=(AuxHead('AuxLogits', 'Repeat_1', 'slim', loss_weight=0.4),),
))


INCEPTION_RESNET_V1 = register_arch(ArchSpec(
    name='inception_resnet_v1',
    reference='arXiv 1602.07261 Figures 10-15 and Table 1; facenet '
              'src/models/inception_resnet_v1.py',
    default_size=299,
    defaults=dict(dropout_rate=0.2),  # Figure 15: dropout (keep 0.8)
    layers=_stem_v3(Conv('Conv2d_4b_3x3', 256, 3, stride=2, padding='VALID')) + (
        # 35x35x256 (Figure 14)
        Repeat('Repeat', _block35(), 5),  # 35x35x256
        _reduction_a(192, 192, 256, 384),  # 384 + 256 + 256 = 17x17x896
        Repeat('Repeat_1', _block17(128, (128, 128, 128)), 10),  # 17x17x896
        _reduction_b(256, (256, 256)),  # 384 + 256 + 256 + 896 = 8x8x1792
        Repeat('Repeat_2', _block8((192, 192)), 5),  # 8x8x1792
        _block8((192, 192), name='Block8', scale=1.0, activation=False),  # facenet's
    ),
))


INCEPTION_RESNET_V2_PAPER = register_arch(ArchSpec(
    name='inception_resnet_v2_paper',
    reference='arXiv 1602.07261 Figures 3, 7, 15-19 and Table 1 (widths from the '
              'concatenations: 1152 at 17x17, 2144 at 8x8)',
    default_size=299,
    defaults=dict(dropout_rate=0.2),  # Figure 15: dropout (keep 0.8)
    layers=inception_v4.STEM + (  # 35x35x384 (Figure 3)
        Repeat('Repeat', _block35(b2=(32, 48, 64)), 5),  # 35x35x384 (Figure 16)
        _reduction_a(256, 256, 384, 384),  # 384 + 384 + 384 = 17x17x1152
        Repeat('Repeat_1', _block17(192, (128, 160, 192)), 10),  # 17x17x1152 (Fig. 17: 1154)
        _reduction_b(288, (288, 320)),  # 384 + 288 + 320 + 1152 = 8x8x2144
        Repeat('Repeat_2', _block8((224, 256)), 5),  # 8x8x2144 (Figure 19: 2048)
    ),
))
