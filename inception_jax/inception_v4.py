"""Inception-v4: Szegedy, Ioffe, Vanhoucke, Alemi 2016, "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning" (arXiv
1602.07261), Figures 3-9 and Table 1, as released in TF-slim ``inception_v4.py``.

Where the figures and the released code differ, the code is followed (it is what
the ``inception_v4_2016_09_09`` checkpoint and timm's ``inception_v4.tf_in1k``
hold):

* Stem (Figure 3): the last 3x3 conv 192 of ``Mixed_5a`` has stride 2 (the figure
  omits it; without it the stem would not reach 35x35). The 7x1/1x7 pair of
  ``Mixed_4a`` is 1x7 then 7x1 (the figure draws 7x1 then 1x7).
* Inception-B (Figure 5): Branch_1 is 1x7 224 -> 7x1 256 (the figure's second
  "1x7" is a typo), and the five-conv Branch_2 starts with 7x1
  (7x1, 1x7, 7x1, 1x7), the figure with 1x7.
* Inception-C (Figure 6): Branch_2 is 1x1 384 -> 3x1 448 -> 1x3 512 -> {1x3, 3x1}
  256 (the figure orders the 448/512 pair 1x3 then 3x1).

Every module is its own endpoint (``Mixed_5b`` ... ``Mixed_7d``), as in slim.
Average pools exclude padding (TF; timm sets ``count_include_pad=False`` too).
"""

from inception_jax.registry import register_arch
from inception_jax.specs import ArchSpec, AuxHead, Conv, Fork, Mixed, Pool


def _inception_a(name):
  """Figure 4: 96 + 96 + 96 + 96 = 35x35x384."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 96, 1),),
      (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_3x3', 96, 3)),
      (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_3x3', 96, 3),
       Conv('Conv2d_0c_3x3', 96, 3)),
      (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 96, 1)),
  ))


def _inception_b(name):
  """Figure 5 (slim's 1x7/7x1 orders): 384 + 256 + 256 + 128 = 17x17x1024."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 384, 1),),
      (Conv('Conv2d_0a_1x1', 192, 1), Conv('Conv2d_0b_1x7', 224, (1, 7)),
       Conv('Conv2d_0c_7x1', 256, (7, 1))),
      (Conv('Conv2d_0a_1x1', 192, 1), Conv('Conv2d_0b_7x1', 192, (7, 1)),
       Conv('Conv2d_0c_1x7', 224, (1, 7)), Conv('Conv2d_0d_7x1', 224, (7, 1)),
       Conv('Conv2d_0e_1x7', 256, (1, 7))),
      (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 128, 1)),
  ))


def _inception_c(name):
  """Figure 6 (slim's 3x1 448 -> 1x3 512): 256 + 512 + 512 + 256 = 8x8x1536."""
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', 256, 1),),
      (Conv('Conv2d_0a_1x1', 384, 1),
       Fork((Conv('Conv2d_0b_1x3', 256, (1, 3)), Conv('Conv2d_0c_3x1', 256, (3, 1))))),
      (Conv('Conv2d_0a_1x1', 384, 1), Conv('Conv2d_0b_3x1', 448, (3, 1)),
       Conv('Conv2d_0c_1x3', 512, (1, 3)),
       Fork((Conv('Conv2d_0d_1x3', 256, (1, 3)), Conv('Conv2d_0e_3x1', 256, (3, 1))))),
      (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 256, 1)),
  ))


# Stem, Figure 3 (shared with the paper Inception-ResNet-v2).
STEM = (
    Conv('Conv2d_1a_3x3', 32, 3, stride=2, padding='VALID'),  # 149x149x32
    Conv('Conv2d_2a_3x3', 32, 3, padding='VALID'),  # 147x147x32
    Conv('Conv2d_2b_3x3', 64, 3),  # 147x147x64
    Mixed('Mixed_3a', (  # 64 + 96 = 73x73x160
        (Pool('MaxPool_0a_3x3', 'max', 3, 2, 'VALID'),),
        (Conv('Conv2d_0a_3x3', 96, 3, stride=2, padding='VALID'),),
    )),
    Mixed('Mixed_4a', (  # 96 + 96 = 71x71x192
        (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_1a_3x3', 96, 3, padding='VALID')),
        (Conv('Conv2d_0a_1x1', 64, 1), Conv('Conv2d_0b_1x7', 64, (1, 7)),
         Conv('Conv2d_0c_7x1', 64, (7, 1)),
         Conv('Conv2d_1a_3x3', 96, 3, padding='VALID')),
    )),
    Mixed('Mixed_5a', (  # 192 + 192 = 35x35x384
        (Conv('Conv2d_1a_3x3', 192, 3, stride=2, padding='VALID'),),
        (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
    )),
)


INCEPTION_V4 = register_arch(ArchSpec(
    name='inception_v4',
    reference='arXiv 1602.07261 Figures 3-9 and Table 1; TF-slim inception_v4.py',
    default_size=299,
    defaults=dict(dropout_rate=0.2),  # Figure 9: dropout (keep 0.8)
    layers=(
        *STEM,
        # 4 x Inception-A, 35x35x384.
        _inception_a('Mixed_5b'),
        _inception_a('Mixed_5c'),
        _inception_a('Mixed_5d'),
        _inception_a('Mixed_5e'),
        Mixed('Mixed_6a', (  # Reduction-A (Figure 7, Table 1 k,l,m,n = 192,224,256,384):
            # n + m + 384 = 384 + 256 + 384 = 17x17x1024
            (Conv('Conv2d_1a_3x3', 384, 3, stride=2, padding='VALID'),),
            (Conv('Conv2d_0a_1x1', 192, 1), Conv('Conv2d_0b_3x3', 224, 3),
             Conv('Conv2d_1a_3x3', 256, 3, stride=2, padding='VALID')),
            (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
        )),
        # 7 x Inception-B, 17x17x1024.
        _inception_b('Mixed_6b'),
        _inception_b('Mixed_6c'),
        _inception_b('Mixed_6d'),
        _inception_b('Mixed_6e'),
        _inception_b('Mixed_6f'),
        _inception_b('Mixed_6g'),
        _inception_b('Mixed_6h'),  # feeds AuxLogits
        Mixed('Mixed_7a', (  # Reduction-B (Figure 8): 192 + 320 + 1024 = 8x8x1536
            (Conv('Conv2d_0a_1x1', 192, 1),
             Conv('Conv2d_1a_3x3', 192, 3, stride=2, padding='VALID')),
            (Conv('Conv2d_0a_1x1', 256, 1), Conv('Conv2d_0b_1x7', 256, (1, 7)),
             Conv('Conv2d_0c_7x1', 320, (7, 1)),
             Conv('Conv2d_1a_3x3', 320, 3, stride=2, padding='VALID')),
            (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
        )),
        # 3 x Inception-C, 8x8x1536.
        _inception_c('Mixed_7b'),
        _inception_c('Mixed_7c'),
        _inception_c('Mixed_7d'),
    ),
    # TF-slim train_image_classifier.py weights the AuxLogits loss by 0.4.
    aux_heads=(AuxHead('AuxLogits', 'Mixed_6h', 'slim', loss_weight=0.4),),
))
