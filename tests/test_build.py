"""Building a model: ``model.config``, initial values from one program, the factory.

Build speed is a benchmark target (``experiments/bench_build.py``), not a timed
test; here: what is compiled, what the initial values are, and the options record.
"""

import ast
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import inception_jax as ij
from inception_jax import factory, layers, model as model_lib, weights

_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def _config(name, **options):
  return nnx.eval_shape(lambda: ij.create_model(name, **options)).config


# ------------------------------------------------------------------ ModelConfig

def test_config_records_resolved_options():
  cfg = _config('inception_v3', num_classes=10, dtype=jnp.bfloat16)
  assert isinstance(cfg, ij.ModelConfig)
  assert (cfg.arch, cfg.num_classes, cfg.include_top, cfg.pooling) == (
      'inception_v3', 10, True, 'avg')
  assert (cfg.dtype, cfg.param_dtype, cfg.in_channels) == ('bfloat16', 'float32', 3)
  # Every BASE_DEFAULTS option is a field.
  assert [f.name for f in dataclasses.fields(cfg)] == [
      'arch', 'num_classes', 'include_top', 'pooling', 'dtype', 'param_dtype',
      'in_channels', *model_lib.BASE_DEFAULTS]
  # GoogLeNet's table defaults (paper: no BN, 40% dropout, two aux heads).
  v1 = _config('inception_v1')
  assert (v1.batch_norm, v1.dropout_rate, v1.aux_logits) == (False, 0.4, True)
  assert "dtype='float32'" in repr(v1) and repr(v1).startswith("ModelConfig(arch='inception_v1'")


def test_config_is_frozen_hashable_and_equal_for_equal_options():
  a = _config('inception_v1_bn', num_classes=5)
  b = ij.ModelConfig.for_arch(ij.get_arch('inception_v1_bn'), num_classes=5,
                              dtype='float32', padding=None)
  assert a == b and hash(a) == hash(b)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.num_classes = 6
  assert a != _config('inception_v1_bn', num_classes=6)
  # Without a top the class count does not matter: the same network.
  assert (_config('inception_v1_bn', include_top=False, num_classes=5)
          == _config('inception_v1_bn', include_top=False))
  assert _config('inception_v1_bn', include_top=False).num_classes is None
  # An architecture default that needs a top is dropped without one (GoogLeNet aux).
  assert _config('inception_v1', include_top=False).aux_logits is False


def test_config_dict_round_trips_through_json_and_create_model():
  cfg = _config('inception_resnet_v1', embedding_size=512, bn_scale=True,
                include_top=False, param_dtype=jnp.bfloat16)
  d = json.loads(json.dumps(cfg.to_dict()))
  assert d['param_dtype'] == 'bfloat16' and d['embedding_size'] == 512
  assert ij.ModelConfig.for_arch(ij.get_arch(d['arch']), **d) == cfg
  arch = d.pop('arch')
  assert _config(arch, **d) == cfg


@pytest.mark.parametrize('options,match', [
    (dict(drop_rate=0.1), r"unknown option\(s\) \['drop_rate'\]; valid options"),
    (dict(pooling='median'), "pooling must be 'avg', 'max' or None"),
    (dict(pooling=None), 'include_top=True needs pooling'),
    (dict(num_classes=0), 'num_classes must be a positive int'),
    (dict(padding='same'), "padding must be 'tf' or 'symmetric'"),
    (dict(dropout_rate=1.0), r'dropout_rate must be in \[0, 1\)'),
    (dict(embedding_size=0), 'embedding_size must be a positive int'),
    (dict(aux_logits=True, include_top=False), 'aux_logits=True needs include_top=True'),
    (dict(dtype='float33'), 'dtype must be a dtype'),
    (dict(arch='inception_v4'), 'a config of inception_v4 given for architecture'),
])
def test_config_errors(options, match):
  with pytest.raises(ValueError, match=match):
    ij.ModelConfig.for_arch(ij.get_arch('inception_v3'), **options)
  with pytest.raises(ValueError, match=match):
    ij.create_model('inception_v3', **options)


def test_config_refuses_aux_heads_the_architecture_lacks():
  with pytest.raises(ValueError, match='inception_v2 has no auxiliary classifier'):
    ij.ModelConfig.for_arch(ij.get_arch('inception_v2'), aux_logits=True)


# ------------------------------------------------------------------ initial values

def test_variance_scaling_is_flax_variance_scaling():
  key = jax.random.key(3)
  for init, scale, shape in ((layers.RELU_CONV, 2.0, (3, 3, 16, 32)),
                             (layers.LINEAR_CONV, 1.0, (1, 1, 64, 8)),
                             (layers.LINEAR, 1.0, (128, 10))):
    flax_init = nnx.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal')
    np.testing.assert_allclose(init(key, shape), flax_init(key, shape), rtol=1e-6)
  # A stacked kernel (leading block axis) has the fan-in of one block.
  assert layers.RELU_CONV.std((10, 3, 3, 16, 32)) == layers.RELU_CONV.std((3, 3, 16, 32))


def _compiles(fn):
  names = []
  listener = lambda event, duration, **kw: (
      names.append(kw.get('fun_name', '?')) if event == _COMPILE_EVENT else None)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    out = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return out, names


def test_building_compiles_one_program_not_one_per_parameter_shape():
  # inception_v2 has 60 distinct parameter shapes: running each initialiser
  # compiles 84 programs (measured with this listener on the eager module).
  nnx.Rngs(0).params()  # the RNG stream's own programs, compiled once per process
  factory._draw_chunk.clear_cache()  # pylint: disable=protected-access  (order-independent)
  model, names = _compiles(lambda: ij.create_model('inception_v2', num_classes=17,
                                                   rngs=nnx.Rngs(1)))
  shapes = {tuple(v.shape) for v in weights.flat_state(model).values()}
  assert len(shapes) > 40
  assert names == ['jit(_draw_chunk)']  # one draw program for every random kernel
  # The abstract network itself is plain Python: no trace, no program.
  _, names = _compiles(lambda: factory.abstract_model(ij.get_arch('inception_v3'), {}))
  assert names == []


def test_unit_truncated_normal_is_the_truncated_normal():
  """Against the CDF of N(0, 1) truncated to [-2, 2], written with math.erf."""
  n = 2_000_001
  x = np.asarray(factory.unit_truncated_normal(jax.random.key(7), n), np.float64)
  assert x.shape == (n,) and np.abs(x).max() < 2.0
  phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))
  z = phi(2) - phi(-2)
  for t in (-1.9, -1.5, -1.0, -0.5, -0.1, 0.0, 0.3, 0.8, 1.2, 1.7, 1.95):
    p = (phi(t) - phi(-2)) / z
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((x < t).mean() - p) < 5 * sigma, t
  density2 = math.exp(-2) / math.sqrt(2 * math.pi)  # N(0, 1) density at 2
  var = 1 - 2 * 2 * density2 / z
  assert abs(x.var() - var) < 5 * 0.0008, (x.var(), var)  # sd of the variance ~0.0005
  # Number i depends on the key and i only (the backbone ignores the head), odd n too.
  short = np.asarray(factory.unit_truncated_normal(jax.random.key(7), 1001))
  np.testing.assert_array_equal(short, x[:1001].astype(np.float32))
  other = np.asarray(factory.unit_truncated_normal(jax.random.key(8), 1001))
  assert np.abs(np.corrcoef(short, other)[0, 1]) < 0.15
  # Another PRNG implementation draws through jax.random.
  rbg = jax.random.key(7, impl='rbg')
  np.testing.assert_array_equal(factory.unit_truncated_normal(rbg, 5),
                                jax.random.truncated_normal(rbg, -2.0, 2.0, (5,)))


def test_initial_values_follow_the_initialisers():
  """He / LeCun truncated normals (He et al. 2015: variance 2 / fan_in), BN identity."""
  model = ij.create_model('inception_resnet_v2', num_classes=10, rngs=nnx.Rngs(1))
  flat = weights.flat_state(model)
  checked = 0
  for key, var in flat.items():
    w = np.asarray(var[...], np.float64)
    if key.endswith('/kernel'):
      shape = w.shape
      prefix, layer = key.rsplit('/', 2)[:2]
      # HWIO convs (a stacked Repeat adds a leading block axis) or [in, out] dense.
      fan_in = math.prod(shape[-4:-1]) if layer == 'conv' else shape[-2]
      # ReLU convs have BatchNorm; the residual up-projections (1x1 with bias, no
      # BN, no activation) and the classifier are linear.
      relu = layer == 'conv' and f'{prefix}/bn/bias' in flat
      std = math.sqrt((2.0 if relu else 1.0) / fan_in)
      if w.size >= 20_000:
        assert abs(w.std() - std) < 0.05 * std, key
        checked += 1
      # Truncated at two standard deviations of the untruncated normal.
      assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6), key
    elif key.endswith(('/bn/scale', '/bn/var')):
      assert np.all(w == 1.0), key
    else:  # biases, BN offsets and means
      assert np.all(w == 0.0), key
  assert checked > 30
  # Blocks of a stacked Repeat are different draws.
  stacked = np.asarray(flat['Repeat/block35/Branch_0/Conv2d_1x1/conv/kernel'][...])
  assert not np.array_equal(stacked[0], stacked[1])


def test_initial_values_are_deterministic_and_the_backbone_ignores_the_head():
  a = weights.to_numpy(ij.create_model('inception_v1_bn', num_classes=5, rngs=nnx.Rngs(2)))
  b = weights.to_numpy(ij.create_model('inception_v1_bn', num_classes=5, rngs=nnx.Rngs(2)))
  c = weights.to_numpy(ij.create_model('inception_v1_bn', num_classes=5, rngs=nnx.Rngs(3)))
  notop = weights.to_numpy(ij.create_model('inception_v1_bn', include_top=False,
                                           rngs=nnx.Rngs(2)))
  k = 'Mixed_4b/Branch_1/Conv2d_0b_3x3/conv/kernel'
  assert all(np.array_equal(a[n], b[n]) for n in a)
  assert not np.array_equal(a[k], c[k])
  assert set(a) - set(notop) == {'Logits/kernel', 'Logits/bias'}
  assert all(np.array_equal(a[n], notop[n]) for n in notop)


def test_dropout_streams_are_usable_and_differ_per_seed():
  m = ij.create_model('inception_v1_bn', num_classes=5, rngs=nnx.Rngs(0))
  m.train()
  x = np.ones((4, 64), np.float32)
  mask = np.asarray(m.dropout(x)) == 0
  assert 0 < mask.mean() < 0.5  # rate 0.2
  assert not np.array_equal(mask, np.asarray(m.dropout(x)) == 0)  # the stream advances


def test_bfloat16_params():
  m = ij.create_model('inception_v1_bn', num_classes=5, param_dtype=jnp.bfloat16)
  assert m.Logits.kernel[...].dtype == jnp.bfloat16
  assert m.Conv2d_1a_7x7.bn.mean[...].dtype == jnp.float32  # statistics stay float32


# ------------------------------------------------------------------ the factory

_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    'inception_jax')


def _imports(module):
  tree = ast.parse(open(os.path.join(_LIB, f'{module}.py'), encoding='utf-8').read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'inception_jax':
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('inception_jax.'):
      out.add(node.module.split('.')[1])
  return out


def test_imports_point_one_way():
  assert _imports('registry') == {'specs'}
  assert 'factory' not in _imports('pretrained') | _imports('inference')
  assert not _imports('pretrained') & {'inference', 'model', 'factory'}
  assert not _imports('inference') & {'pretrained', 'registry', 'factory', 'model'}
  assert 'factory' not in _imports('model') | _imports('weights') | _imports('layers')
  assert ij.create_model is factory.create_model
  assert not hasattr(ij.registry, 'create_model')


def test_build_of_an_unregistered_table_is_create_model():
  spec = dataclasses.replace(ij.get_arch('inception_v1_bn'), name='v1_copy')
  a = factory.build(spec, dict(num_classes=4), nnx.Rngs(5))
  b = ij.create_model('inception_v1_bn', num_classes=4, rngs=nnx.Rngs(5))
  assert a.arch == 'v1_copy'
  wa, wb = weights.to_numpy(a), weights.to_numpy(b)
  assert all(np.array_equal(wa[k], wb[k]) for k in wb)


def test_create_model_under_eval_shape_initialises_nothing():
  m = nnx.eval_shape(lambda: ij.create_model('inception_v4'))
  assert all(isinstance(v.get_value(), jax.ShapeDtypeStruct)
             for v in weights.flat_state(m).values())
  assert weights.num_weights(m) == 42_679_816  # timm inception_v4
