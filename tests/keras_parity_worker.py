"""Keras side of tests/test_parity_keras.py; runs in its own process.

Keras (JAX backend) may import TensorFlow, which must never share a process with
torch/timm (importing TensorFlow, then anything that imports triton, segfaults), so the Keras reference lives here and the test process
only reads what this writes. For each architecture it builds the Keras model with and
without the classifier (``weights=None``, logits head), fills every weight with random
values (BN moving variance positive), and writes to ``OUT/<arch>/``:

* ``k3_top.h5``, ``k3_notop.h5``: Keras 3's legacy writer
  (``save_weights_to_hdf5_group``): ``conv2d_94/kernel``-style names, counters of this
  process (the second model starts where the first stopped);
* ``k2_top.h5``, ``k2_notop.h5``: the same weights rewritten with h5py in the layout of
  the published ``*_tf_dim_ordering_tf_kernels.h5`` files (Keras 2: 1-based counters
  ``conv2d_1``, ``batch_normalization_1``..., weight names ``conv2d_1/kernel:0``,
  nested groups, ``backend='tensorflow'``); Keras loads it back as a check;
* ``ref.npz``: input batch ``x``, Keras ``logits`` (top model) and ``features``
  (``include_top=False, pooling='avg'``), Keras parameter counts, and the class and
  weight shapes of each layer with weights in ``model.layers`` order.

Usage: python tests/keras_parity_worker.py OUT ARCH:SIZE [ARCH:SIZE ...] [--batch 2]
"""

import argparse
import json
import os
import re
import sys
import time

os.environ['KERAS_BACKEND'] = 'jax'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import h5py  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

BUILDERS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}


def randomise(model, rng):
  """Random values for every weight; BN statistics near what the layer sees.

  Kernels are He-normal (ReLU nets keep their scale), BN beta/moving mean small and
  moving variance in [0.5, 1.5]: the activations stay O(1) through ~100 layers, so a
  1e-4 absolute tolerance on the logits is a meaningful test.
  """
  values = []
  for w in model.weights:
    shape, name = tuple(w.shape), w.path.rsplit('/', 1)[-1]
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif name == 'moving_variance':
      v = rng.uniform(0.5, 1.5, shape)
    elif name in ('beta', 'moving_mean', 'bias'):
      v = rng.normal(0.0, 0.1, shape)
    else:
      raise AssertionError(f'unexpected Keras weight {w.path}')
    values.append(v.astype(np.float32))
  model.set_weights(values)
  for v, w in zip(values, model.get_weights()):
    np.testing.assert_array_equal(v, w)


def keras2_names(model):
  """Keras-2 names: auto-names renumbered 1.. in creation order per layer class.

  Keras 3 gives ``conv2d, conv2d_1, ...`` (counters of the process); Keras 2 wrote
  ``conv2d_1, conv2d_2, ...`` for a model built first in its process. The Keras 3
  ``CustomScaleLayer`` of Inception-ResNet was a ``Lambda`` named after its block.
  """
  from keras.src.utils import naming  # pylint: disable=g-import-not-at-top
  auto = {}
  for layer in model.layers:
    base = naming.to_snake_case(type(layer).__name__)
    m = re.fullmatch(rf'{base}(?:_(\d+))?', layer.name)
    if m:
      auto.setdefault(base, []).append((int(m.group(1) or 0), layer.name))
  rename = {}
  for base, items in auto.items():
    for rank, (_, name) in enumerate(sorted(items), start=1):
      new = {'input_layer': 'input', 'custom_scale_layer': 'lambda'}.get(base, base)
      rename[name] = f'{new}_{rank}'
  for layer in model.layers:
    if type(layer).__name__ == 'CustomScaleLayer':
      node = layer._inbound_nodes[0]  # pylint: disable=protected-access
      up = node.input_tensors[1]._keras_history[0].name  # pylint: disable=protected-access
      rename[layer.name] = up[:-len('_conv')]  # block35_1_conv -> block35_1
  return [rename.get(layer.name, layer.name) for layer in model.layers]


def _text(values):
  return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def write_keras2(src, dst, model):
  """Rewrites a Keras 3 legacy file in the published Keras 2 layout."""
  names = keras2_names(model)
  with h5py.File(src, 'r') as fin, h5py.File(dst, 'w') as fout:
    old_names = _text(fin.attrs['layer_names'])
    assert old_names == [layer.name for layer in model.layers]
    fout.attrs['layer_names'] = np.array([n.encode() for n in names])
    fout.attrs['backend'] = b'tensorflow'
    fout.attrs['keras_version'] = b'2.1.2'
    for old, new in zip(old_names, names):
      gin, gout = fin[old], fout.create_group(new)
      weight_names = _text(gin.attrs.get('weight_names', []))
      new_weights = [f'{new}/{w.rsplit("/", 1)[-1]}:0' for w in weight_names]
      gout.attrs['weight_names'] = np.array([w.encode() for w in new_weights])
      for w, nw in zip(weight_names, new_weights):
        gout.create_dataset(nw, data=gin[w][()])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('out')
  parser.add_argument('archs', nargs='+', help='ARCH:SIZE')
  parser.add_argument('--batch', type=int, default=2)
  args = parser.parse_args()

  import keras  # pylint: disable=g-import-not-at-top
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top

  clock = [time.perf_counter()]

  def lap(what):
    now = time.perf_counter()
    print(f'  {what}: {now - clock[0]:.1f}s', flush=True)
    clock[0] = now

  lap('import keras')
  for item in args.archs:
    arch, size = item.split(':')
    size = int(size)
    out = os.path.join(args.out, arch)
    os.makedirs(out, exist_ok=True)
    build = getattr(keras.applications, BUILDERS[arch])
    shape = (size, size, 3)
    top = build(weights=None, input_shape=shape, classifier_activation=None)
    notop = build(weights=None, input_shape=shape, include_top=False, pooling='avg')
    lap(f'{arch} build')
    rng = np.random.default_rng(0)
    randomise(top, rng)
    notop.set_weights(top.get_weights()[:-2])  # same layer order without Dense

    x = rng.uniform(-1.0, 1.0, (args.batch,) + shape).astype(np.float32)
    logits = np.asarray(top.predict(x, verbose=0))
    features = np.asarray(notop.predict(x, verbose=0))
    lap(f'{arch} randomise + predict')

    for name, model in (('top', top), ('notop', notop)):
      k3 = os.path.join(out, f'k3_{name}.h5')
      with h5py.File(k3, 'w') as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
      k2 = os.path.join(out, f'k2_{name}.h5')
      write_keras2(k3, k2, model)
      lap(f'{arch} write {name}')
      model.load_weights(k2)  # Keras itself accepts the rewritten file
      lap(f'{arch} keras loads k2_{name}')

    order = [[type(layer).__name__, [list(w.shape) for w in
                                     layer.trainable_weights + layer.non_trainable_weights]]
             for layer in top.layers if layer.weights]
    np.savez(os.path.join(out, 'ref.npz'), x=x, logits=logits, features=features,
             params_top=top.count_params(), params_notop=notop.count_params(),
             order=json.dumps(order))
    print(f'{arch}: logits |max| {np.abs(logits).max():.3f} std {logits.std():.3f}, '
          f'features |max| {np.abs(features).max():.3f}', flush=True)

  bad = sorted(m for m in ('torch', 'timm') if m in sys.modules)
  if bad:
    raise SystemExit(f'{bad} imported next to Keras/TensorFlow')


if __name__ == '__main__':
  main()
