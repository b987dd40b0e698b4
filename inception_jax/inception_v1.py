"""Inception-v1 (GoogLeNet): Szegedy et al. 2014, "Going deeper with convolutions"
(arXiv 1409.4842), Table 1 and Figure 3.

Two networks share the Table 1 widths:

* ``inception_v1``: the paper's network. No BatchNorm (convs have a bias and a
  ReLU), LocalResponseNorm after the first max pool and after the 3x3 stem conv
  (Figure 3; Table 1 omits both), true 5x5 convs in ``Branch_2``, a 3x3/2 max pool
  before 5a (Figure 3), 40% dropout, two auxiliary classifiers on 4a and 4d.
* ``inception_v1_bn``: the BN GoogLeNet of the released checkpoints (TF-slim
  ``inception_v1.py``; torchvision ``googlenet`` is a port of it): BN after every
  conv, no LRN, a 3x3 conv in the "5x5" branch (tensorflow/tensorflow#7130, kept
  because the checkpoint depends on it; TF-slim names it ``Conv2d_0b_3x3``, except
  ``Conv2d_0a_3x3`` in Mixed_5b), a 2x2/2 max pool before 5a (``MaxPool_5a_2x2``),
  20% dropout (slim ``dropout_keep_prob=0.8``). ``padding='tf'`` (default) is
  TF-slim's SAME; ``padding='symmetric'`` is torchvision's network (7x7/2 conv
  padded 3 on both sides, ``ceil_mode=True`` max pools). torchvision's optional
  aux heads (adaptive 4x4 average pool) are ``aux1``/``aux2``.

Scope names are TF-slim's: paper modules 3a, 3b are ``Mixed_3b``, ``Mixed_3c``;
4a..4e are ``Mixed_4b``..``Mixed_4f``; 5a, 5b are ``Mixed_5b``, ``Mixed_5c``.
"""

from inception_jax.registry import register_arch
from inception_jax.specs import LRN, ArchSpec, AuxHead, Conv, Mixed, Pool

# Table 1 module rows: (TF-slim scope, paper row, #1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5, pool proj). Output channels = #1x1 + #3x3 + #5x5 + pool proj.
TABLE1 = (
    ('Mixed_3b', '3a', 64, 96, 128, 16, 32, 32),  # 28x28x256
    ('Mixed_3c', '3b', 128, 128, 192, 32, 96, 64),  # 28x28x480
    ('Mixed_4b', '4a', 192, 96, 208, 16, 48, 64),  # 14x14x512
    ('Mixed_4c', '4b', 160, 112, 224, 24, 64, 64),  # 14x14x512
    ('Mixed_4d', '4c', 128, 128, 256, 24, 64, 64),  # 14x14x512
    ('Mixed_4e', '4d', 112, 144, 288, 32, 64, 64),  # 14x14x528
    ('Mixed_4f', '4e', 256, 160, 320, 32, 128, 128),  # 14x14x832
    ('Mixed_5b', '5a', 256, 160, 320, 32, 128, 128),  # 7x7x832
    ('Mixed_5c', '5b', 384, 192, 384, 48, 128, 128),  # 7x7x1024
)


def _module(row, branch2_kernel, branch2_name):
  """Figure 2(b): 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3/1 max pool -> 1x1."""
  name, _, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj = row
  return Mixed(name, (
      (Conv('Conv2d_0a_1x1', n1x1, 1),),
      (Conv('Conv2d_0a_1x1', n3x3red, 1), Conv('Conv2d_0b_3x3', n3x3, 3)),
      (Conv('Conv2d_0a_1x1', n5x5red, 1), Conv(branch2_name, n5x5, branch2_kernel)),
      (Pool('MaxPool_0a_3x3', 'max', 3, 1), Conv('Conv2d_0b_1x1', pool_proj, 1)),
  ))


def _paper_module(row):
  return _module(row, 5, 'Conv2d_0b_5x5')


def _slim_module(row):
  # TF-slim's 3x3 in the 5x5 branch; its Mixed_5b scope is misnamed Conv2d_0a_3x3.
  return _module(row, 3, 'Conv2d_0a_3x3' if row[0] == 'Mixed_5b' else 'Conv2d_0b_3x3')


def _layers(module, lrn, pool_5a):
  """Figure 3 / Table 1 in order; ``module`` builds one Table 1 row."""
  m3b, m3c, m4b, m4c, m4d, m4e, m4f, m5b, m5c = (module(row) for row in TABLE1)
  lrn_2a = (LRN('LRN_2a'),) if lrn else ()  # Figure 3 "LocalRespNorm"
  lrn_2d = (LRN('LRN_2d'),) if lrn else ()
  return (
      Conv('Conv2d_1a_7x7', 64, 7, stride=2),  # 112x112x64
      Pool('MaxPool_2a_3x3', 'max', 3, 2),  # 56x56x64
      *lrn_2a,
      Conv('Conv2d_2b_1x1', 64, 1),  # 56x56x64 (Table 1 "#3x3 reduce")
      Conv('Conv2d_2c_3x3', 192, 3),  # 56x56x192
      *lrn_2d,
      Pool('MaxPool_3a_3x3', 'max', 3, 2),  # 28x28x192
      m3b, m3c,  # 28x28x480
      Pool('MaxPool_4a_3x3', 'max', 3, 2),  # 14x14x480
      m4b, m4c, m4d, m4e, m4f,  # 14x14x832
      pool_5a,  # 7x7x832
      m5b, m5c,  # 7x7x1024
  )


INCEPTION_V1 = register_arch(ArchSpec(
    name='inception_v1',
    reference='arXiv 1409.4842 Table 1, Figures 2(b) and 3, Section 5 (aux heads)',
    default_size=224,
    defaults=dict(batch_norm=False, dropout_rate=0.4, aux_logits=True),
    layers=_layers(_paper_module, lrn=True,
                   pool_5a=Pool('MaxPool_5a_3x3', 'max', 3, 2)),  # Figure 3 "3x3+2(S)"
    # Section 5: heads on the outputs of 4a and 4d; 5x5/3 average pool -> 4x4; each
    # loss is added "with a discount weight (0.3)".
    aux_heads=(AuxHead('aux1', 'Mixed_4b', 'googlenet', 'avg5x5s3', loss_weight=0.3),
               AuxHead('aux2', 'Mixed_4e', 'googlenet', 'avg5x5s3', loss_weight=0.3)),
))

INCEPTION_V1_BN = register_arch(ArchSpec(
    name='inception_v1_bn',
    reference=('arXiv 1409.4842 Table 1 widths; TF-slim inception_v1.py topology; '
               'torchvision googlenet with padding="symmetric"'),
    default_size=224,
    defaults=dict(dropout_rate=0.2, aux_logits=False, bn_eps=1e-3),
    layers=_layers(_slim_module, lrn=False,
                   pool_5a=Pool('MaxPool_5a_2x2', 'max', 2, 2)),
    # GoogLeNet's heads and their Section 5 "discount weight (0.3)".
    aux_heads=(AuxHead('aux1', 'Mixed_4b', 'googlenet', 'adaptive4', loss_weight=0.3),
               AuxHead('aux2', 'Mixed_4e', 'googlenet', 'adaptive4', loss_weight=0.3)),
))
