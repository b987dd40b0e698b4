"""Inception-v4 and Inception-ResNet tables against the paper and the released models.

Expected shapes come from arXiv 1602.07261 (figures cited per row) and the TF-slim /
facenet sources; parameter counts are the ones timm, Keras and facenet-pytorch
report for their models (printed by each library's own parameter count). Everything runs through
``jax.eval_shape`` on abstract models: nothing is compiled or initialised.
"""

import functools
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import inception_jax as ij


@functools.lru_cache(maxsize=None)
def _abstract_cached(name, options):
  return nnx.eval_shape(lambda: ij.create_model(name, **dict(options)))


def _abstract(name, **options):
  """The model with ShapeDtypeStruct leaves (built once per configuration)."""
  return _abstract_cached(name, tuple(sorted(options.items())))


def _endpoints(name, size=299):
  graphdef, state = nnx.split(_abstract(name))

  def features(state, x):
    return nnx.merge(graphdef, state).features(x)

  out = jax.eval_shape(features, state,
                       jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return {k: v.shape[1:] for k, v in out.items()}


def _params(model, kind=nnx.Param):
  return {'/'.join(map(str, path)): v.get_value().shape
          for path, v in nnx.to_flat_state(nnx.state(model, kind))}


# Figure 3 (the stem shared by Inception-v4 and the paper's Inception-ResNet-v2).
# The figure's last 3x3 conv 192 "V" has no stride; it must be 2 to give 35x35
# (slim uses stride 2).
V4_STEM = {
    'Conv2d_1a_3x3': (149, 149, 32),
    'Conv2d_2a_3x3': (147, 147, 32),
    'Conv2d_2b_3x3': (147, 147, 64),
    'Mixed_3a': (73, 73, 160),  # max pool 64 || 3x3/2 conv 96
    'Mixed_4a': (71, 71, 192),  # 96 || 96
    'Mixed_5a': (35, 35, 384),  # 3x3/2 conv 192 || max pool 192
}

EXPECTED = {
    # Figure 9: stem 35x35x384, 4 x A, Reduction-A 17x17x1024, 7 x B,
    # Reduction-B 8x8x1536, 3 x C.
    'inception_v4': {
        **V4_STEM,
        **{f'Mixed_5{c}': (35, 35, 384) for c in 'bcde'},
        'Mixed_6a': (17, 17, 1024),
        **{f'Mixed_6{c}': (17, 17, 1024) for c in 'bcdefgh'},
        'Mixed_7a': (8, 8, 1536),
        **{f'Mixed_7{c}': (8, 8, 1536) for c in 'bcd'},
    },
    # Figures 14 and 15 (stem to 35x35x256, Reduction-A 17x17x896, Reduction-B
    # 8x8x1792); the final Block8 is facenet's extra unscaled block.
    'inception_resnet_v1': {
        'Conv2d_1a_3x3': (149, 149, 32),
        'Conv2d_2a_3x3': (147, 147, 32),
        'Conv2d_2b_3x3': (147, 147, 64),
        'MaxPool_3a_3x3': (73, 73, 64),
        'Conv2d_3b_1x1': (73, 73, 80),
        'Conv2d_4a_3x3': (71, 71, 192),
        'Conv2d_4b_3x3': (35, 35, 256),
        'Repeat': (35, 35, 256),
        'Mixed_6a': (17, 17, 896),
        'Repeat_1': (17, 17, 896),
        'Mixed_7a': (8, 8, 1792),
        'Repeat_2': (8, 8, 1792),
        'Block8': (8, 8, 1792),
    },
    # The released TF-slim model (shape comments of inception_resnet_v2.py). The
    # paper's Figure 15 would give 35x35x384, 17x17x1152 (or 1154) and 8x8x2146
    # (or 2048); the release has 320, 1088 and 2080, and a final 1x1 conv to 1536.
    'inception_resnet_v2': {
        'Conv2d_1a_3x3': (149, 149, 32),
        'Conv2d_2a_3x3': (147, 147, 32),
        'Conv2d_2b_3x3': (147, 147, 64),
        'MaxPool_3a_3x3': (73, 73, 64),
        'Conv2d_3b_1x1': (73, 73, 80),
        'Conv2d_4a_3x3': (71, 71, 192),
        'MaxPool_5a_3x3': (35, 35, 192),
        'Mixed_5b': (35, 35, 320),
        'Repeat': (35, 35, 320),
        'Mixed_6a': (17, 17, 1088),
        'Repeat_1': (17, 17, 1088),  # slim 'PreAuxLogits'
        'Mixed_7a': (8, 8, 2080),
        'Repeat_2': (8, 8, 2080),
        'Block8': (8, 8, 2080),
        'Conv2d_7b_1x1': (8, 8, 1536),
    },
    # The paper's figures. The paper is inconsistent: Reduction-A (Table 1 k,l,m,n
    # = 256,256,384,384) on 384 channels gives 384+384+384 = 1152, yet Figure 17's
    # 1x1 up-projection is 1154; Reduction-B (Figure 18) on 1152 gives
    # 1152+384+288+320 = 2144 (2146 on 1154), yet Figure 19's up-projection is
    # 2048. The residual sums force up-projection width = input width, so the
    # reading here is 1152 at 17x17 and 2144 at 8x8 (the released model instead
    # has 1088 and 2080). The paper has no final unscaled block or 1x1 conv.
    'inception_resnet_v2_paper': {
        **V4_STEM,
        'Repeat': (35, 35, 384),
        'Mixed_6a': (17, 17, 1152),
        'Repeat_1': (17, 17, 1152),
        'Mixed_7a': (8, 8, 2144),
        'Repeat_2': (8, 8, 2144),
    },
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_endpoint_shapes_at_299(name):
  assert _endpoints(name) == EXPECTED[name]


@pytest.mark.parametrize('name,size,want', [
    # TF SAME/VALID arithmetic by hand: the smallest input whose 8x8 stage is >= 1x1
    # is 75 (75 -> 37 -> 35 -> 17 (pool) -> 15 -> 7 -> 3 -> 1), for all four.
    ('inception_v4', 75, (1, 1, 1536)),
    ('inception_resnet_v1', 75, (1, 1, 1792)),
    ('inception_resnet_v2', 75, (1, 1, 1536)),
    ('inception_resnet_v2_paper', 75, (1, 1, 2144)),
])
def test_smallest_input(name, size, want):
  assert list(_endpoints(name, size).values())[-1] == want
  assert _abstract(name).min_input_size == size


_NOTOP = ('Logits/', 'AuxLogits/')  # the backbone: everything but the classifiers
_NOAUX = ('AuxLogits/',)
_TIMM = (nnx.Param,)  # PyTorch BN has gamma and beta; buffers are not counted
_KERAS = (nnx.Param, nnx.BatchStat)  # Keras totals count the moving statistics
_SLIM = {'bn_scale': False, 'num_classes': 1001, 'aux_logits': True}


# Parameter counts published by timm, Keras and facenet-pytorch (their own
# count_params / sum of numel). Each configuration is built
# once; the backbone counts leave the classifier subtrees out of the same model.
@pytest.mark.parametrize('name,options,kinds,exclude,want', [
    # timm inception_v4 / inception_resnet_v2 (with and without classifier).
    ('inception_v4', {}, _TIMM, (), 42_679_816),
    ('inception_v4', {}, _TIMM, _NOTOP, 41_142_816),
    ('inception_resnet_v2', {}, _TIMM, (), 55_843_464),
    ('inception_resnet_v2', {}, _TIMM, _NOTOP, 54_306_464),
    # Keras InceptionResNetV2 (no BN gamma): include_top=True / False.
    ('inception_resnet_v2', {'bn_scale': False}, _KERAS, (), 55_873_736),
    ('inception_resnet_v2', {'bn_scale': False}, _KERAS, _NOTOP, 54_336_736),
    # TF-slim checkpoints: conv + BN beta + logits, with and without the aux head.
    ('inception_v4', _SLIM, _TIMM, (), 46_009_106),
    ('inception_v4', _SLIM, _TIMM, _NOAUX, 42_649_769),
    ('inception_resnet_v2', _SLIM, _TIMM, (), 59_182_258),
    ('inception_resnet_v2', _SLIM, _TIMM, _NOAUX, 55_814_729),
    # facenet-pytorch IR-v1 "backbone only, before the bottleneck": its
    # conv2d_1a..block8 (conv weights, BN gamma/beta, up-projection biases, including
    # facenet's final unscaled block8) is exactly this table without the classifier;
    # facenet-pytorch's embedding head (last_linear 1792->512 + last_bn) is not
    # modelled here, our ImageNet Logits are left out of the count.
    ('inception_resnet_v1', {}, _TIMM, _NOTOP, 22_564_096),
])
def test_parameter_counts(name, options, kinds, exclude, want):
  model = _abstract(name, **options)
  got = 0
  for kind in kinds:
    for key, shape in _params(model, kind).items():
      if not any(key.startswith(prefix) for prefix in exclude):
        got += math.prod(shape)
  assert got == want


def test_include_top_false_drops_only_the_classifier():
  name = 'inception_resnet_v2'
  top, notop = _params(_abstract(name)), _params(_abstract(name, include_top=False))
  assert set(top) - set(notop) == {'Logits/kernel', 'Logits/bias'}
  assert set(notop) < set(top)


@pytest.mark.parametrize('name,counts', [
    ('inception_resnet_v2', {'Repeat': ('block35', 10, 320), 'Repeat_1': ('block17', 20, 1088),
                             'Repeat_2': ('block8', 9, 2080)}),
    ('inception_resnet_v1', {'Repeat': ('block35', 5, 256), 'Repeat_1': ('block17', 10, 896),
                             'Repeat_2': ('block8', 5, 1792)}),
    ('inception_resnet_v2_paper', {'Repeat': ('block35', 5, 384),
                                   'Repeat_1': ('block17', 10, 1152),
                                   'Repeat_2': ('block8', 5, 2144)}),
])
def test_repeat_params_are_stacked(name, counts):
  params = _params(_abstract(name))
  for scope, (block, n, width) in counts.items():
    stacked = {k: v for k, v in params.items() if k.startswith(f'{scope}/{block}/')}
    assert stacked and all(v[0] == n for v in stacked.values()), scope
    # The up-projection: 1x1 conv with bias, no BN, back to the block's width.
    assert stacked[f'{scope}/{block}/Conv2d_1x1/conv/kernel'][-1] == width
    assert stacked[f'{scope}/{block}/Conv2d_1x1/conv/bias'] == (n, width)
    assert not any(k.startswith(f'{scope}/{block}/Conv2d_1x1/bn') for k in stacked)


@pytest.mark.parametrize('name,scales,final', [
    # slim inception_resnet_v2.py and facenet: repeat scales 0.17 / 0.10 / 0.20, then
    # block8(net, activation_fn=None) with the default scale 1.0 (up-projection
    # 192 + 256 = 448 -> 2080 in IR-v2, 192 + 192 = 384 -> 1792 in IR-v1).
    ('inception_resnet_v2', (0.17, 0.10, 0.20), (1, 1, 448, 2080)),
    ('inception_resnet_v1', (0.17, 0.10, 0.20), (1, 1, 384, 1792)),
    # The paper gives no per-block scale; the slim values are used, no final block.
    ('inception_resnet_v2_paper', (0.17, 0.10, 0.20), None),
])
def test_residual_scales_and_final_block8(name, scales, final):
  layers = {layer.name: layer for layer in ij.get_arch(name).layers}
  assert tuple(layers[r].block.scale for r in ('Repeat', 'Repeat_1', 'Repeat_2')) == scales
  assert all(layers[r].block.activation for r in ('Repeat', 'Repeat_1', 'Repeat_2'))
  params = _params(_abstract(name))
  if final is None:
    assert 'Block8' not in layers
    assert not any(k.startswith('Block8/') for k in params)
  else:
    assert (layers['Block8'].scale, layers['Block8'].activation) == (1.0, False)
    assert params['Block8/Conv2d_1x1/conv/kernel'] == final


# Kernel shapes (H, W, in, out) read off the TF-slim sources, where the paper's
# figures differ or where scope names are easy to get wrong.
@pytest.mark.parametrize('name,path,shape', [
    # v4 stem Mixed_4a: slim has 1x7 then 7x1 (Figure 3 draws 7x1 then 1x7).
    ('inception_v4', 'Mixed_4a/Branch_1/Conv2d_0b_1x7', (1, 7, 64, 64)),
    ('inception_v4', 'Mixed_4a/Branch_1/Conv2d_0c_7x1', (7, 1, 64, 64)),
    ('inception_v4', 'Mixed_5a/Branch_0/Conv2d_1a_3x3', (3, 3, 192, 192)),
    # Reduction-A, Table 1 (k, l, m, n) = (192, 224, 256, 384).
    ('inception_v4', 'Mixed_6a/Branch_0/Conv2d_1a_3x3', (3, 3, 384, 384)),
    ('inception_v4', 'Mixed_6a/Branch_1/Conv2d_0b_3x3', (3, 3, 192, 224)),
    ('inception_v4', 'Mixed_6a/Branch_1/Conv2d_1a_3x3', (3, 3, 224, 256)),
    # Inception-B: 1x7 224 -> 7x1 256; the 5-conv branch starts with 7x1.
    ('inception_v4', 'Mixed_6b/Branch_1/Conv2d_0c_7x1', (7, 1, 224, 256)),
    ('inception_v4', 'Mixed_6h/Branch_2/Conv2d_0b_7x1', (7, 1, 192, 192)),
    ('inception_v4', 'Mixed_6h/Branch_2/Conv2d_0e_1x7', (1, 7, 224, 256)),
    ('inception_v4', 'Mixed_7a/Branch_1/Conv2d_0c_7x1', (7, 1, 256, 320)),
    # Inception-C: 3x1 448 -> 1x3 512 (the figure orders them the other way).
    ('inception_v4', 'Mixed_7d/Branch_2/Conv2d_0b_3x1', (3, 1, 384, 448)),
    ('inception_v4', 'Mixed_7d/Branch_2/Conv2d_0c_1x3', (1, 3, 448, 512)),
    ('inception_v4', 'Mixed_7d/Branch_2/Conv2d_0e_3x1', (3, 1, 512, 256)),
    ('inception_v4', 'Mixed_7d/Branch_1/Conv2d_0c_3x1', (3, 1, 384, 256)),
    ('inception_resnet_v2', 'Mixed_5b/Branch_1/Conv2d_0b_5x5', (5, 5, 48, 64)),
    ('inception_resnet_v2', 'Mixed_7a/Branch_2/Conv2d_1a_3x3', (3, 3, 288, 320)),
    ('inception_resnet_v2', 'Conv2d_7b_1x1', (1, 1, 2080, 1536)),
    ('inception_resnet_v1', 'Conv2d_4b_3x3', (3, 3, 192, 256)),
    ('inception_resnet_v1', 'Mixed_6a/Branch_1/Conv2d_1a_3x3', (3, 3, 192, 256)),
])
def test_slim_kernel_shapes(name, path, shape):
  assert _params(_abstract(name))[f'{path}/conv/kernel'] == shape


@pytest.mark.parametrize('name,endpoint,width', [('inception_v4', 'Mixed_6h', 1024),
                                                 ('inception_resnet_v2', 'Repeat_1', 1088)])
def test_aux_head(name, endpoint, width):
  # slim AuxLogits: 5x5/3 avg pool, 1x1 conv 128, 5x5 VALID conv 768, FC.
  assert [(h.name, h.endpoint, h.kind) for h in ij.get_arch(name).aux_heads] == [
      ('AuxLogits', endpoint, 'slim')]
  params = _params(_abstract(name, **_SLIM))
  assert params['AuxLogits/Conv2d_1b_1x1/conv/kernel'] == (1, 1, width, 128)
  assert params['AuxLogits/Conv2d_2a_5x5/conv/kernel'] == (5, 5, 128, 768)
  assert params['AuxLogits/Logits/kernel'] == (768, 1001)


def test_aux_logits_in_train_mode():
  # Tracing v4 in train mode is slow (tests/test_models.py runs it); IR-v2 is cheap.
  graphdef, state = nnx.split(_abstract('inception_resnet_v2', aux_logits=True,
                                        num_classes=11))

  def train_forward(state, x):
    model = nnx.merge(graphdef, state)
    model.train()
    return model(x)

  out = jax.eval_shape(train_forward, state,
                       jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32))
  assert out.logits.shape == (2, 11)
  assert out.aux_logits['AuxLogits'].shape == (2, 11)


@pytest.mark.parametrize('name', ['inception_resnet_v1', 'inception_resnet_v2_paper'])
def test_no_aux_head_where_none_was_published(name):
  with pytest.raises(ValueError, match='no auxiliary classifier'):
    ij.create_model(name, aux_logits=True)
