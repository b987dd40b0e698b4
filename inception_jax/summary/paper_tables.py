"""The papers' architecture tables, typed in as printed, for ``summary --paper``.

Each ``PaperTable`` lists the rows of one table or figure with the numbers the
paper prints and the model rows (endpoints) each paper row corresponds to in
one registered architecture. ``inception_jax.summary`` computes the same
quantities from the architecture table and compares them; a paper row whose
numbers differ from the model's must carry a note saying why: the paper's own
error (``erratum``) or a change in the released network (``released``).
``note`` is a neutral remark. ``extra`` names the model rows no paper row
covers, each with the reason.

Sources (numbers typed from the papers, never computed from this code):

* GoogLeNet: Szegedy et al. 2014, "Going deeper with convolutions",
  arXiv 1409.4842, Table 1 (params column: weights without biases in K = 1024;
  ops column: multiply-adds in M = 10^6), Figure 3, Section 5.
* BN-Inception: Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167,
  Figure 5.
* Inception-v3: Szegedy et al. 2015, "Rethinking the Inception Architecture for
  Computer Vision", arXiv 1512.00567, Table 1 (its size column is each row's
  input).
* Inception-v4 and Inception-ResNet: Szegedy, Ioffe, Vanhoucke, Alemi 2016,
  "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
  Learning", arXiv 1602.07261, Figures 3, 9 (v4), 14, 15 (Inception-ResNet-v1),
  15-19 and Table 1 (Inception-ResNet-v2).
"""

from __future__ import annotations

import dataclasses

Size = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One printed row and the model rows it corresponds to.

  Attributes:
    label: the row as printed (``inception (3a)``, ``4 x Inception-A``).
    endpoints: model rows (endpoint or head names) it covers, in order; empty
      when the network has no counterpart.
    patch: patch size / stride (``7x7/2``) or dropout (``40%``, ``keep 0.8``).
    size: printed size (H, W, C), output or input as the table says; None when
      the paper prints none.
    depth: GoogLeNet's depth column (parameterised layers in the row).
    params_k: GoogLeNet's params column (K = 1024 weights, biases excluded).
    ops_m: GoogLeNet's ops column (M = 10^6 multiply-adds).
    count: modules in the row (``3 x Inception`` -> 3).
    filters: filter columns (GoogLeNet: #1x1, #3x3 reduce, #3x3, #5x5 reduce,
      #5x5, pool proj; BN-Inception: #1x1, #3x3 reduce, #3x3, double #3x3
      reduce, double #3x3, pool + proj), None for an empty cell.
    erratum: the printed numbers are wrong by the paper's own other numbers.
    released: how and why the released network differs from the paper here.
    note: a neutral remark.
  """
  label: str
  endpoints: tuple[str, ...]
  patch: str = ''
  size: Size | None = None
  depth: int | None = None
  params_k: float | None = None
  ops_m: float | None = None
  count: int | None = None
  filters: tuple | None = None
  erratum: str = ''
  released: str = ''
  note: str = ''


@dataclasses.dataclass(frozen=True)
class PaperTable:
  """A paper's table or figure set, mapped onto one architecture.

  Attributes:
    title: what is compared, with its citation.
    rows: the printed rows in order.
    size_is_input: the size column is each row's input (v3 Table 1).
    columns: layout of ``filters`` ('googlenet', 'bn_inception' or '').
    extra: model rows no paper row covers -> why.
  """
  title: str
  rows: tuple[PaperRow, ...]
  size_is_input: bool = False
  columns: str = ''
  extra: tuple[tuple[str, str], ...] = ()


# ----------------------------------------------------------- GoogLeNet Table 1

_GOOGLENET = 'GoogLeNet, arXiv 1409.4842 Table 1'
_3X3_IN_5X5 = ("TF-slim's '5x5' branch is a 3x3 conv (tensorflow/tensorflow#7130); every "
               'released checkpoint depends on it')
_PARAMS_WRONG = ('the printed params disagree with the filter columns of the row (the ops '
                 'column of the same row agrees)')


def _googlenet(arch: str) -> PaperTable:
  """Table 1 mapped onto the paper network or the released BN GoogLeNet."""
  paper = arch == 'inception_v1'
  five = '' if paper else _3X3_IN_5X5
  pool5 = 'MaxPool_5a_3x3' if paper else 'MaxPool_5a_2x2'

  def module(label, endpoint, size, params_k, ops_m, filters, erratum=''):
    return PaperRow(label, (endpoint,), size=size, depth=2, params_k=params_k, ops_m=ops_m,
                    filters=filters, erratum=erratum, released=five)

  rows = (
      PaperRow('convolution', ('Conv2d_1a_7x7',), '7x7/2', (112, 112, 64), 1, 2.7, 34,
               erratum='a 7x7x3x64 conv has 9,408 weights (9.2K) and 118M multiply-adds; '
               'the printed 2.7K and 34M are exactly those of a separable 7x7 conv '
               '(depthwise x8, then 1x1 to 64: 2,712 weights), the first layer of '
               'BN-Inception'),
      PaperRow('max pool', ('MaxPool_2a_3x3',), '3x3/2', (56, 56, 64), 0),
      PaperRow('convolution', ('Conv2d_2b_1x1', 'Conv2d_2c_3x3'), '3x3/1', (56, 56, 192), 2,
               112, 360, filters=(None, 64, 192, None, None, None),
               note='the 1x1 reduce and the 3x3 conv are one row (depth 2)'),
      PaperRow('max pool', ('MaxPool_3a_3x3',), '3x3/2', (28, 28, 192), 0),
      module('inception (3a)', 'Mixed_3b', (28, 28, 256), 159, 128,
             (64, 96, 128, 16, 32, 32)),
      module('inception (3b)', 'Mixed_3c', (28, 28, 480), 380, 304,
             (128, 128, 192, 32, 96, 64)),
      PaperRow('max pool', ('MaxPool_4a_3x3',), '3x3/2', (14, 14, 480), 0),
      module('inception (4a)', 'Mixed_4b', (14, 14, 512), 364, 73,
             (192, 96, 208, 16, 48, 64), _PARAMS_WRONG),
      module('inception (4b)', 'Mixed_4c', (14, 14, 512), 437, 88,
             (160, 112, 224, 24, 64, 64)),
      module('inception (4c)', 'Mixed_4d', (14, 14, 512), 463, 100,
             (128, 128, 256, 24, 64, 64), _PARAMS_WRONG),
      module('inception (4d)', 'Mixed_4e', (14, 14, 528), 580, 119,
             (112, 144, 288, 32, 64, 64), _PARAMS_WRONG),
      module('inception (4e)', 'Mixed_4f', (14, 14, 832), 840, 170,
             (256, 160, 320, 32, 128, 128), _PARAMS_WRONG),
      PaperRow('max pool', (pool5,), '3x3/2', (7, 7, 832), 0,
               released='' if paper else
               'TF-slim pools 2x2/2 before 5a (MaxPool_5a_2x2); torchvision followed'),
      module('inception (5a)', 'Mixed_5b', (7, 7, 832), 1072, 54,
             (256, 160, 320, 32, 128, 128),
             'the filter columns give 1,042,432 weights (1018K) and 51M multiply-adds; '
             'the printed 1072K and 54M agree with each other (1072K x 7 x 7), not '
             'with the row'),
      module('inception (5b)', 'Mixed_5c', (7, 7, 1024), 1388, 71,
             (384, 192, 384, 48, 128, 128), _PARAMS_WRONG),
      PaperRow('avg pool', ('global_pool',), '7x7/1', (1, 1, 1024), 0),
      PaperRow('dropout (40%)', ('dropout',), '40%', (1, 1, 1024), 0,
               released='' if paper else 'TF-slim dropout_keep_prob=0.8'),
      PaperRow('linear', ('Logits',), '', (1, 1, 1000), 1, 1000, 1),
      PaperRow('softmax', (), '', (1, 1, 1000), 0,
               note='the network returns logits; the softmax is in the loss'),
  )
  extra = ()
  if paper:
    lrn = 'Figure 3 has a LocalRespNorm here; Table 1 leaves it out'
    extra = (('LRN_2a', lrn), ('LRN_2d', lrn))
  else:
    rows = tuple(dataclasses.replace(
        r, released='; '.join(x for x in (r.released, 'BatchNorm after every conv, no LRN')
                              if x)) if r.label == 'convolution' else r for r in rows)
  title = (f'{_GOOGLENET} (params: weights without biases, K = 1024; ops: multiply-adds, '
           'M = 10^6)')
  return PaperTable(title, rows, columns='googlenet', extra=extra)


# ------------------------------------------------------- BN-Inception Figure 5

_STRIDE2_SIZE = ('printed at its input resolution: a stride-2 module halves the grid '
                 '(the next row is at the halved size)')
_POOL_PROJ = ("'avg + 128' would give 608 channels, not the printed 576; TF-slim (and its "
              'checkpoint) project the pool to 96')


def _bn_inception() -> PaperTable:
  def module(label, endpoint, size, filters, erratum=''):
    return PaperRow(label, (endpoint,), size=size, filters=filters, erratum=erratum)

  rows = (
      PaperRow('convolution', ('Conv2d_1a_7x7',), '7x7/2', (112, 112, 64),
               released='TF-slim: a separable conv (7x7 depthwise x8, then 1x1 to 64) '
               'with a bias and without BatchNorm'),
      PaperRow('max pool', ('MaxPool_2a_3x3',), '3x3/2', (56, 56, 64)),
      PaperRow('convolution', ('Conv2d_2b_1x1', 'Conv2d_2c_3x3'), '3x3/1', (56, 56, 192),
               filters=(None, 64, 192, None, None, None)),
      PaperRow('max pool', ('MaxPool_3a_3x3',), '3x3/2', (28, 28, 192)),
      module('inception (3a)', 'Mixed_3b', (28, 28, 256), (64, 64, 64, 64, 96, 'avg + 32')),
      module('inception (3b)', 'Mixed_3c', (28, 28, 320), (64, 64, 96, 64, 96, 'avg + 64')),
      module('inception (3c) stride 2', 'Mixed_4a', (28, 28, 576),
             (None, 128, 160, 64, 96, 'max + pass through'), _STRIDE2_SIZE),
      module('inception (4a)', 'Mixed_4b', (14, 14, 576),
             (224, 64, 96, 96, 128, 'avg + 128')),
      module('inception (4b)', 'Mixed_4c', (14, 14, 576),
             (192, 96, 128, 96, 128, 'avg + 128')),
      module('inception (4c)', 'Mixed_4d', (14, 14, 576),
             (160, 128, 160, 128, 160, 'avg + 128'), _POOL_PROJ),
      module('inception (4d)', 'Mixed_4e', (14, 14, 576),
             (96, 128, 192, 160, 192, 'avg + 128'), _POOL_PROJ),
      module('inception (4e) stride 2', 'Mixed_5a', (14, 14, 1024),
             (None, 128, 192, 192, 256, 'max + pass through'), _STRIDE2_SIZE),
      module('inception (5a)', 'Mixed_5b', (7, 7, 1024),
             (352, 192, 320, 160, 224, 'avg + 128')),
      module('inception (5b)', 'Mixed_5c', (7, 7, 1024),
             (352, 192, 320, 192, 224, 'max + 128')),
      PaperRow('avg pool', ('global_pool',), '7x7/1', (1, 1, 1024)),
  )
  head = 'Figure 5 ends at the average pool; the classifier is GoogLeNet\'s'
  return PaperTable('BN-Inception, arXiv 1502.03167 Figure 5', rows, columns='bn_inception',
                    extra=(('dropout', head + ' (TF-slim dropout_keep_prob=0.8)'),
                           ('Logits', head)))


# ------------------------------------------------------- Inception-v3 Table 1

_V3_STEM = ('every released checkpoint (TF-slim, Keras, torchvision) has a 1x1 conv to '
            '80, a 3x3 VALID conv to 192 and a 3x3/2 max pool here, so the first module '
            'sees 35x35x192')


def _inception_v3(arch: str = 'inception_v3') -> PaperTable:
  fid = arch == 'inception_v3_fid'
  rows = (
      PaperRow('conv', ('Conv2d_1a_3x3',), '3x3/2', (299, 299, 3)),
      PaperRow('conv', ('Conv2d_2a_3x3',), '3x3/1', (149, 149, 32)),
      PaperRow('conv padded', ('Conv2d_2b_3x3',), '3x3/1', (147, 147, 32)),
      PaperRow('pool', ('MaxPool_3a_3x3',), '3x3/2', (147, 147, 64)),
      PaperRow('conv', ('Conv2d_3b_1x1',), '3x3/1', (73, 73, 64), released=_V3_STEM),
      PaperRow('conv', ('Conv2d_4a_3x3',), '3x3/2', (71, 71, 80), released=_V3_STEM),
      PaperRow('conv', ('MaxPool_5a_3x3',), '3x3/1', (35, 35, 192), released=_V3_STEM),
      PaperRow('3 x Inception (Figure 5)', ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'),
               size=(35, 35, 288), count=3,
               released='the released stem gives 35x35x192; the three modules output '
               '256, 288 and 288 channels (Section 6 says 288 each)'),
      PaperRow('5 x Inception (Figure 6)',
               ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'), size=(17, 17, 768),
               count=5, released='4 modules in every released checkpoint (Mixed_6b-6e), '
               'between the grid reductions Mixed_6a and Mixed_7a'),
      PaperRow('2 x Inception (Figure 7)', ('Mixed_7b', 'Mixed_7c'), size=(8, 8, 1280),
               count=2, released='the 2015-12-05 TensorFlow graph (the FID network) '
               "pools with max, not average, in Mixed_7c's pool branch" if fid else ''),
      PaperRow('pool', ('global_pool',), '8x8', (8, 8, 2048)),
      PaperRow('linear', ('Logits',), '', (1, 1, 2048)),
      PaperRow('softmax', (), '', (1, 1, 1000),
               note='the network returns logits; the softmax is in the loss'),
  )
  reduction = ('grid reduction (Figure 10); Table 1 has no row for it: its caption says '
               'reductions sit between the module groups')
  return PaperTable('Inception-v3, arXiv 1512.00567 Table 1 (sizes are row inputs)', rows,
                    size_is_input=True,
                    extra=(('Mixed_6a', reduction), ('Mixed_7a', reduction),
                           ('dropout', 'Table 1 has no dropout row; ' + (
                               'the FID graph has no dropout' if fid else
                               'TF-slim dropout_keep_prob=0.8'))))


# --------------------------------------- Inception-v4 / Inception-ResNet figures

_V4 = 'arXiv 1602.07261'
_STEM_STRIDE = ("Figure 3 prints '3x3 Conv (192 V)' without 'stride 2'; the stem reaches "
                '35x35 only with stride 2, which the code has (tensorflow/models#7041)')


def _figure3_stem() -> tuple[PaperRow, ...]:
  return (
      PaperRow('3x3 Conv (32 stride 2 V)', ('Conv2d_1a_3x3',), '3x3/2', (149, 149, 32)),
      PaperRow('3x3 Conv (32 V)', ('Conv2d_2a_3x3',), '3x3/1', (147, 147, 32)),
      PaperRow('3x3 Conv (64)', ('Conv2d_2b_3x3',), '3x3/1', (147, 147, 64)),
      PaperRow('Filter concat: 3x3 MaxPool | 3x3 Conv 96 (stride 2 V)', ('Mixed_3a',),
               size=(73, 73, 160)),
      PaperRow('Filter concat: 1x1 64 > 3x3 96 V | 1x1 64 > 7x1 > 1x7 > 3x3 96 V',
               ('Mixed_4a',), size=(71, 71, 192),
               released='TF-slim (and this table) order the pair 1x7 then 7x1'),
      PaperRow('Filter concat: 3x3 Conv 192 V | MaxPool (stride 2 V)', ('Mixed_5a',),
               size=(35, 35, 384), erratum=_STEM_STRIDE),
  )


def _inception_v4() -> PaperTable:
  rows = _figure3_stem() + (
      PaperRow('4 x Inception-A (Figure 4)', tuple(f'Mixed_5{c}' for c in 'bcde'),
               size=(35, 35, 384), count=4),
      PaperRow('Reduction-A (Figure 7, k,l,m,n = 192,224,256,384)', ('Mixed_6a',),
               size=(17, 17, 1024)),
      PaperRow('7 x Inception-B (Figure 5)', tuple(f'Mixed_6{c}' for c in 'bcdefgh'),
               size=(17, 17, 1024), count=7,
               erratum="Figure 5's 7x7 branch reads 1x7 224 > 1x7 256: the second is a "
               '7x1 (tensorflow/models#3313)',
               released='TF-slim (and this table) start the five-conv branch with 7x1, the '
               'figure with 1x7'),
      PaperRow('Reduction-B (Figure 8)', ('Mixed_7a',), size=(8, 8, 1536)),
      PaperRow('3 x Inception-C (Figure 6)', tuple(f'Mixed_7{c}' for c in 'bcd'),
               size=(8, 8, 1536), count=3,
               released='TF-slim (and this table) have 3x1 448 > 1x3 512 where the figure has '
               '1x3 then 3x1'),
      PaperRow('Average Pooling', ('global_pool',), size=(1, 1, 1536)),
      PaperRow('Dropout (keep 0.8)', ('dropout',), 'keep 0.8', (1, 1, 1536)),
      PaperRow('Softmax', ('Logits',), size=(1, 1, 1000),
               note='the linear layer under the softmax; the network returns logits'),
  )
  return PaperTable(f'Inception-v4, {_V4} Figures 3 and 9', rows)


def _inception_resnet_v1() -> PaperTable:
  rows = (
      PaperRow('3x3 Conv (32 stride 2 V)', ('Conv2d_1a_3x3',), '3x3/2', (149, 149, 32)),
      PaperRow('3x3 Conv (32 V)', ('Conv2d_2a_3x3',), '3x3/1', (147, 147, 32)),
      PaperRow('3x3 Conv (64)', ('Conv2d_2b_3x3',), '3x3/1', (147, 147, 64)),
      PaperRow('3x3 MaxPool (stride 2 V)', ('MaxPool_3a_3x3',), '3x3/2', (73, 73, 64)),
      PaperRow('1x1 Conv (80)', ('Conv2d_3b_1x1',), '1x1/1', (73, 73, 80)),
      PaperRow('3x3 Conv (192 V)', ('Conv2d_4a_3x3',), '3x3/1', (71, 71, 192)),
      PaperRow('3x3 Conv (256 stride 2 V)', ('Conv2d_4b_3x3',), '3x3/2', (35, 35, 256)),
      PaperRow('5 x Inception-resnet-A (Figure 10)', ('Repeat',), size=(35, 35, 256),
               count=5),
      PaperRow('Reduction-A (Figure 7, k,l,m,n = 192,192,256,384)', ('Mixed_6a',),
               size=(17, 17, 896)),
      PaperRow('10 x Inception-resnet-B (Figure 11)', ('Repeat_1',), size=(17, 17, 896),
               count=10),
      PaperRow('Reduction-B (Figure 12)', ('Mixed_7a',), size=(8, 8, 1792)),
      PaperRow('5 x Inception-resnet-C (Figure 13)', ('Repeat_2', 'Block8'),
               size=(8, 8, 1792), count=5,
               released='facenet (the only released implementation) adds a sixth block8 '
               'with scale 1.0 and no ReLU; its checkpoints need it'),
      PaperRow('Average Pooling', ('global_pool',), size=(1, 1, 1792)),
      PaperRow('Dropout (keep 0.8)', ('dropout',), 'keep 0.8', (1, 1, 1792)),
      PaperRow('Softmax', ('Logits',), size=(1, 1, 1000),
               note='the linear layer under the softmax; the network returns logits'),
  )
  return PaperTable(f'Inception-ResNet-v1, {_V4} Figures 14 and 15', rows)


_IR2_1154 = ("Figure 17's 1x1 up-projection is 1154 wide, but Reduction-A (Table 1: "
             '384 + n + m on 384 channels) gives 1152, and a residual sum needs equal widths')
_IR2_2048 = ("Figure 19's 1x1 up-projection is 2048 wide, but Reduction-B (Figure 18) on "
             '1152 channels gives 1152 + 384 + 288 + 320 = 2144')
_IR2_RELEASED = ('the released TF-slim network (behind the Keras and timm weights) differs '
                 'from the figures')


def _inception_resnet_v2(arch: str) -> PaperTable:
  paper = arch == 'inception_resnet_v2_paper'

  def rel(text):
    return '' if paper else text

  if paper:
    stem = _figure3_stem()
  else:
    stem = (PaperRow('Stem (Figure 3)', ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3',
                                         'MaxPool_3a_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3',
                                         'MaxPool_5a_3x3', 'Mixed_5b'),
                     size=(35, 35, 384),
                     released="Inception-v3's stem to 35x35x192, then Mixed_5b, a "
                     'Figure-5-style module with 320 channels'),)
  rows = stem + (
      PaperRow('5 x Inception-resnet-A (Figure 16: 1x1 384 Linear)', ('Repeat',),
               size=(35, 35, 384), count=5,
               released=rel('10 blocks of width 320, scale 0.17')),
      PaperRow('Reduction-A (Figure 7, k,l,m,n = 256,256,384,384)', ('Mixed_6a',)),
      PaperRow('10 x Inception-resnet-B (Figure 17: 1x1 1154 Linear)', ('Repeat_1',),
               size=(17, 17, 1154), count=10, erratum=_IR2_1154,
               released=rel('20 blocks of width 1088, scale 0.10')),
      PaperRow('Reduction-B (Figure 18)', ('Mixed_7a',)),
      PaperRow('5 x Inception-resnet-C (Figure 19: 1x1 2048 Linear)',
               ('Repeat_2',) if paper else ('Repeat_2', 'Block8'),
               size=(8, 8, 2048), count=5, erratum=_IR2_2048,
               released=rel('9 blocks of width 2080 with scale 0.20 and a tenth with scale '
                            '1.0 and no ReLU')),
      PaperRow('Average Pooling', ('global_pool',)),
      PaperRow('Dropout (keep 0.8)', ('dropout',), 'keep 0.8'),
      PaperRow('Softmax', ('Logits',), size=(1, 1, 1000),
               note='the linear layer under the softmax; the network returns logits'),
  )
  extra = () if paper else (
      ('Conv2d_7b_1x1', rel('a 1x1 conv to 1536 before the pooling, not in the paper')),)
  title = f'Inception-ResNet-v2, {_V4} Figures 3, 15-19 and Table 1'
  if not paper:
    title += f' ({_IR2_RELEASED})'
  return PaperTable(title, rows, extra=extra)


def paper_table(arch: str) -> PaperTable | None:
  """The paper table for a registered architecture, or None if there is none."""
  builders = {
      'inception_v1': lambda: _googlenet('inception_v1'),
      'inception_v1_bn': lambda: _googlenet('inception_v1_bn'),
      'inception_v2': _bn_inception,
      'inception_v3': _inception_v3,
      'inception_v3_fid': lambda: _inception_v3('inception_v3_fid'),
      'inception_v4': _inception_v4,
      'inception_resnet_v1': _inception_resnet_v1,
      'inception_resnet_v2': lambda: _inception_resnet_v2('inception_resnet_v2'),
      'inception_resnet_v2_paper': lambda: _inception_resnet_v2('inception_resnet_v2_paper'),
  }
  build = builders.get(arch)
  return build() if build else None
