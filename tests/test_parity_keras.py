"""Keras Applications weights: converter and numerical parity with Keras itself.

``keras_parity_worker.py`` (own process, Keras on JAX, no torch) builds Keras
``InceptionV3`` and ``InceptionResNetV2`` with random weights, writes their ``.h5``
files in the Keras 3 legacy layout and in the published Keras 2 layout, with and
without the classifier, and records Keras' logits and pooled features on a random
batch. Here each file goes through ``third_party_weights.keras_h5.convert`` into our
network built with Keras' numerics (no BN gamma, average pools without padding, TF
padding) and must give Keras' outputs (max abs diff <= 1e-4, same top-1), on the
default kernels and on the other choice (``kernels='xla'``; the default resolves
to 'cpu' on a CPU machine).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import conftest  # the suite's XLA flags
import inception_jax
from inception_jax import kernels as kernels_lib
from inception_jax import weights as weights_lib
from third_party_weights import keras_h5

pytestmark = pytest.mark.slow  # reference libraries or trained runs: minutes on CPU

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name('keras_parity_worker.py')
# v3 at its native 299; IR-v2 at a smaller (odd-sized, >= 75) input to save time
SIZES = {'inception_v3': 299, 'inception_resnet_v2': 235}
ARCHS = tuple(SIZES)
KERAS_OPTIONS = dict(bn_scale=False, count_include_pad=False, padding='tf')
# keras.applications count_params() with Keras 3.15.1: total incl. BN moving statistics
KERAS_PARAMS = {('inception_v3', True): 23_851_784, ('inception_v3', False): 21_802_784,
                ('inception_resnet_v2', True): 55_873_736,
                ('inception_resnet_v2', False): 54_336_736}
TOL = 1e-4
# The default kernels ('auto') resolve to 'cpu' on a CPU machine; the other choice.
OTHER_KERNELS = 'xla' if kernels_lib.resolve('auto') == 'cpu' else 'cpu'


@pytest.fixture(scope='module')
def keras_dir(tmp_path_factory):
  """Runs the Keras worker once; yields the folder of its files (removed afterwards)."""
  out = tmp_path_factory.mktemp('keras_parity')
  # One device, and the suite's compile flags (Keras compiles on XLA:CPU as we do).
  env = dict(os.environ, XLA_FLAGS=conftest.one_device_xla_flags())
  env.update(KERAS_BACKEND='jax', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]))
  cmd = [sys.executable, str(WORKER), str(out)] + [f'{a}:{s}' for a, s in SIZES.items()]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, f'Keras worker failed:\n{proc.stderr[-4000:]}'
  print(proc.stdout, end='')
  yield out
  shutil.rmtree(out, ignore_errors=True)  # ~1.3 GB of .h5 files


def _ref(keras_dir, arch):
  return np.load(keras_dir / arch / 'ref.npz')


_MODELS = {}


def _model(arch, include_top, kernels='auto'):
  """Our network with Keras' numerics, built once per (arch, include_top, kernels)."""
  key = arch, include_top, kernels
  if key not in _MODELS:
    _MODELS[key] = inception_jax.create_model(
        arch, include_top=include_top, pooling='avg', kernels=kernels, **KERAS_OPTIONS)
  return _MODELS[key]


@nnx.jit
def _forward(model, x):
  return model(x)


@pytest.mark.parametrize('arch', ARCHS)
def test_layer_order_is_keras_order(keras_dir, arch):
  """The replayed graph lists Keras' layers with weights in ``model.layers`` order."""
  keras_order = json.loads(str(_ref(keras_dir, arch)['order']))
  plan = keras_h5.layer_plan(f'{arch}.keras', include_top=True)
  kinds = {'conv': 'Conv2D', 'bn': 'BatchNormalization', 'Logits': 'Dense'}
  assert len(plan) == len(keras_order)
  for layer, (keras_class, keras_shapes) in zip(plan, keras_order):
    kind = 'Logits' if layer.scope == 'Logits' else layer.weights[0][1].split('/')[-2]
    shapes = [[1000 if d is None else d for d in shape] for _, _, shape in layer.weights]
    assert (kinds[kind], shapes) == (keras_class, keras_shapes), layer.label


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('include_top', [True, False])
def test_param_count_matches_keras(keras_dir, arch, include_top):
  """Param + BatchStat scalars with bn_scale=False = Keras' count_params()."""
  model = _model(arch, include_top)
  ours = (weights_lib.num_weights(model, nnx.Param)
          + weights_lib.num_weights(model, nnx.BatchStat))
  keras = int(_ref(keras_dir, arch)['params_top' if include_top else 'params_notop'])
  assert ours == keras == KERAS_PARAMS[arch, include_top]


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('include_top', [True, False], ids=['top', 'notop'])
@pytest.mark.parametrize('layout', ['k3', 'k2'])
def test_outputs_match_keras(keras_dir, arch, include_top, layout):
  """Logits (top) or average-pooled features (notop) equal Keras' on the same batch."""
  name = 'top' if include_top else 'notop'
  arrays = keras_h5.convert(str(keras_dir / arch / f'{layout}_{name}.h5'), f'{arch}.keras')
  assert ('Logits/kernel' in arrays) == include_top
  model = _model(arch, include_top)
  weights_lib.assign(model, arrays, source=f'{layout}_{name}.h5')
  ref = _ref(keras_dir, arch)
  want = ref['logits' if include_top else 'features']
  got = np.asarray(_forward(model, jnp.asarray(ref['x'])))
  diff = float(np.abs(got - want).max())
  print(f'\n[keras parity] {arch} {layout} {name}: max |diff| {diff:.3g} '
        f'(|ref| max {np.abs(want).max():.3g})')
  assert got.shape == want.shape
  assert diff <= TOL
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def _check_logits(model, ref, label):
  """Our logits on Keras' batch: within TOL of Keras' and the same top-1."""
  got = np.asarray(_forward(model, jnp.asarray(ref['x'])))
  diff = float(np.abs(got - ref['logits']).max())
  print(f'\n[keras parity] {label}: max |diff| {diff:.3g}')
  assert diff <= TOL
  np.testing.assert_array_equal(got.argmax(-1), ref['logits'].argmax(-1))


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('kernels', [OTHER_KERNELS])
def test_logits_match_keras_on_the_other_kernel_choice(keras_dir, arch, kernels):
  """The published-layout file's logits on the non-default kernels, same tolerance."""
  arrays = keras_h5.convert(str(keras_dir / arch / 'k2_top.h5'), f'{arch}.keras')
  model = _model(arch, True, kernels)
  weights_lib.assign(model, arrays, source='k2_top.h5')
  _check_logits(model, _ref(keras_dir, arch), f'{arch} kernels={kernels}')


@pytest.mark.parametrize('arch', ARCHS)
def test_both_layouts_give_the_same_arrays(keras_dir, arch):
  """Keras 2 and Keras 3 names differ; the mapping by layer order does not."""
  tag = f'{arch}.keras'
  k3 = keras_h5.convert(str(keras_dir / arch / 'k3_top.h5'), tag)
  k2 = keras_h5.convert(str(keras_dir / arch / 'k2_top.h5'), tag)
  assert sorted(k3) == sorted(k2)
  for key in k3:
    np.testing.assert_array_equal(k3[key], k2[key], err_msg=key)


def test_wrong_architecture_is_named(keras_dir):
  with pytest.raises(keras_h5.KerasWeightsError, match=r"tag 'inception_resnet_v2.keras'"):
    keras_h5.convert(str(keras_dir / 'inception_resnet_v2' / 'k2_top.h5'),
                     'inception_v3.keras')
  with pytest.raises(keras_h5.KerasWeightsError,
                     match=r"InceptionV3 file.*tag 'inception_v3.keras'"):
    keras_h5.convert(str(keras_dir / 'inception_v3' / 'k3_notop.h5'),
                     'inception_resnet_v2.keras')


def test_truncated_file(keras_dir, tmp_path):
  src = keras_dir / 'inception_v3' / 'k2_notop.h5'
  bad = tmp_path / 'truncated.h5'
  with open(src, 'rb') as f:
    bad.write_bytes(f.read(os.path.getsize(src) // 2))
  with pytest.raises(keras_h5.KerasWeightsError, match='truncated or corrupt'):
    keras_h5.convert(str(bad), 'inception_v3.keras')


def _damaged_copy(keras_dir, tmp_path, edit):
  path = tmp_path / 'damaged.h5'
  shutil.copy(keras_dir / 'inception_v3' / 'k2_top.h5', path)
  with h5py.File(path, 'r+') as f:
    edit(f)
  return str(path)


def test_missing_layer(keras_dir, tmp_path):
  def drop_layer(f):
    names = [n.decode() for n in f.attrs['layer_names']]
    names.remove('conv2d_50')
    del f['conv2d_50']
    f.attrs['layer_names'] = np.array([n.encode() for n in names])
  path = _damaged_copy(keras_dir, tmp_path, drop_layer)
  with pytest.raises(keras_h5.KerasWeightsError,
                     match='has 188 layers with weights.*with the classifier has 189'):
    keras_h5.convert(path, 'inception_v3.keras')


def test_missing_weight(keras_dir, tmp_path):
  def drop_weight(f):
    del f['batch_normalization_7/batch_normalization_7/moving_mean:0']
  path = _damaged_copy(keras_dir, tmp_path, drop_weight)
  with pytest.raises(keras_h5.KerasWeightsError,
                     match="moving_mean:0' of layer 'batch_normalization_7' is missing"):
    keras_h5.convert(path, 'inception_v3.keras')


def test_not_a_keras_file(tmp_path):
  path = tmp_path / 'other.h5'
  with h5py.File(path, 'w') as f:
    f.create_dataset('x', data=np.zeros(3))
  with pytest.raises(keras_h5.KerasWeightsError, match='no `layer_names`'):
    keras_h5.convert(str(path), 'inception_v3.keras')
  with pytest.raises(keras_h5.KerasWeightsError, match='valid tags: inception_v3.keras'):
    keras_h5.convert(str(path), 'inception_v4.keras')
  with pytest.raises(FileNotFoundError):
    keras_h5.convert(str(tmp_path / 'absent.h5'), 'inception_v3.keras')


@pytest.mark.parametrize('arch', ARCHS)
def test_cli_and_create_model_end_to_end(keras_dir, arch, tmp_path):
  """The user path: the convert CLI on a published-layout file, then
  ``create_model(TAG, pretrained=...)`` with the tag's own numerics options."""
  out = tmp_path / f'{arch}.safetensors'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, '-m', 'third_party_weights.convert', '--source', 'keras',
       '--arch', f'{arch}.keras', '--input', str(keras_dir / arch / 'k2_top.h5'),
       '--output', str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = inception_jax.create_model(f'{arch}.keras', pretrained=str(out))
  _check_logits(model, _ref(keras_dir, arch), f'{arch} CLI + create_model')
