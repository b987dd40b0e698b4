"""TF-slim side of tests/test_parity_slim.py; runs in its own process (TF, never torch).

For each architecture it builds the TF-slim network in TensorFlow graph mode
(``tf_slim.nets.inception`` for v1, v2 and v3; the builders below for v4 and
Inception-ResNet-v2, whose TF-slim code is not on PyPI), fills it with random
weights, calibrates and then perturbs the BatchNorm moving statistics, and writes:

* ``OUT/<arch>/v1/<name>.ckpt``: TensorFlow's first checkpoint format (one
  TensorSlice file, as in the 2016 TF-slim tarballs), written by
  ``tf.compat.v1.train.Saver(write_version=SaverDef.V1)``;
* ``OUT/<arch>/v2/<name>.ckpt.{index,data-00000-of-00001}``: the second format (as in
  the 2017 adversarial tarballs), plus a ``global_step`` and an optimiser slot
  variable that the converter must skip;
* ``OUT/<arch>/ref.npz``: input batch ``x`` ([-1, 1], NHWC), TF's ``logits``
  (1001 classes), ``aux`` logits (v3, v4, IR-v2) and average-pooled last
  feature map ``pooled``.

Neither folder has a ``checkpoint`` state file (the published tarballs have none).

Then (JAX in this process; never torch) it converts, with ``third_party_weights.
convert``: each architecture's release tag from the first format to files in
``OUT/converted/`` (background class kept; for v1 and v2 also dropped: the
default), the second format (read once) and the architecture's other tags in memory
(``slim_ckpt.map_variables``, ``check_against_model``, ``file_config``: what
``convert`` runs between reading and writing). It records in ``OUT/worker.json``,
per architecture: whether both formats give bit-identical arrays, whether the
default conversion is the kept one without class 0, whether the other tags convert
the release tag's arrays, the converted configs, and our network's logits / aux
logits / pooled features (``create_model(TAG, pretrained=FILE)``) against TF's on
the batch (max abs difference and TF's max abs value), the logits again on the
other kernel choice (``kernels='xla'``; the default resolves to 'cpu' here), with the CPU time of each
phase. Large files the tests do not read are deleted at the end.

The v4 / IR-v2 builders follow TF-slim's ``research/slim/nets/inception_v4.py`` and
``inception_resnet_v2.py`` (layer order, widths, padding and scope names), written
for this test from that source, not from inception_jax's tables, with the settings
of TF-slim's ``inception_arg_scope`` (BN epsilon 0.001, no gamma, ReLU).

Usage: python tests/slim_parity_worker.py OUT [ARCH ...]  (default: every ARCHS key)
"""

import json
import os
import re
import shutil
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One CPU device for JAX (the test process's 8 fake devices are for data parallelism).
os.environ['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                                 os.environ.get('XLA_FLAGS', ''))

import numpy as np  # pylint: disable=wrong-import-position

# tf-slim needs tf-keras' legacy layers under the name TF 2.21 imports them by
# (``tf_keras.legacy_tf_layers``); tf-keras 2.21 keeps them in ``tf_keras.src``.
import tf_keras.src.legacy_tf_layers as _legacy  # pylint: disable=wrong-import-position
import tf_keras.src.legacy_tf_layers.normalization as _legacy_bn  # pylint: disable=wrong-import-position

sys.modules.setdefault('tf_keras.legacy_tf_layers', _legacy)
sys.modules.setdefault('tf_keras.legacy_tf_layers.normalization', _legacy_bn)

import tensorflow as tf  # pylint: disable=wrong-import-position
import tf_slim as slim  # pylint: disable=wrong-import-position
from tensorflow.core.protobuf import saver_pb2  # pylint: disable=wrong-import-position
from tf_slim.nets import inception  # pylint: disable=wrong-import-position

tf.compat.v1.disable_eager_execution()
v1 = tf.compat.v1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# arch -> (input size, checkpoint base name of its release tarball, tags)
ARCHS = {
    'inception_v1_bn': (224, 'inception_v1', ['slim_in1k']),
    'inception_v2': (224, 'inception_v2', ['slim_in1k']),
    'inception_v3': (299, 'inception_v3',
                     ['slim_in1k', 'slim_adv_in1k', 'slim_ens3_adv_in1k',
                      'slim_ens4_adv_in1k']),
    'inception_v4': (299, 'inception_v4', ['slim_in1k']),
    'inception_resnet_v2': (299, 'inception_resnet_v2_2016_08_30',
                            ['slim_in1k', 'slim_adv_in1k', 'slim_ens_adv_in1k']),
}
SMALL = ('inception_v1_bn', 'inception_v2')  # their files are read by the tests
CLASSES = 1001
CALIBRATION = 4  # images whose batch statistics calibrate BN
BATCH = 2  # images compared


# ---------------------------------------------------------------------------------
# Inception-v4 and Inception-ResNet-v2 in TF-slim's scopes, with plain TF ops and
# variables named as ``slim.conv2d`` / ``slim.batch_norm`` / ``slim.fully_connected``
# name them (building them with tf-slim's layers takes time quadratic in the number
# of variables: a minute for IR-v2). Eval mode computes what slim does:
# ``fused_batch_norm(is_training=False)`` with a unit scale (slim's BN has no gamma)
# and epsilon 0.001, TF SAME / VALID padding, average pools excluding padding.
# A branch is a list of layers: ('conv', scope, depth, kernel, stride, padding),
# ('max' | 'avg', kernel, stride, padding), or ('fork', [conv, conv]) = the
# concatenation of parallel convs on the branch's current input.

# He initialisation (slim's arg scopes use its truncated form; the plain normal is
# cheaper to draw and as good as test data).
_HE = v1.variance_scaling_initializer(scale=2.0, mode='fan_in',
                                      distribution='untruncated_normal')


def _conv(x, scope, depth, kernel, stride=1, padding='SAME', training=False, bn=True,
          relu=True):
  """slim.conv2d in an inception arg scope: conv, BN (no gamma) or biases, ReLU."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  with v1.variable_scope(scope):
    w = v1.get_variable('weights', [kh, kw, int(x.shape[-1]), depth], initializer=_HE)
    y = tf.nn.conv2d(x, w, strides=stride, padding=padding)
    if bn:
      with v1.variable_scope('BatchNorm'):
        beta = v1.get_variable('beta', [depth])
        mean = v1.get_variable('moving_mean', [depth], trainable=False)
        var = v1.get_variable('moving_variance', [depth], trainable=False)
      y, _, _ = v1.nn.fused_batch_norm(
          y, tf.ones([depth]), beta, mean=None if training else mean,
          variance=None if training else var, epsilon=0.001, is_training=training)
    else:
      y = y + v1.get_variable('biases', [depth])
  return tf.nn.relu(y) if relu else y


def _fc(x, scope, units):
  """slim.fully_connected without activation (weights [in, units], biases)."""
  with v1.variable_scope(scope):
    w = v1.get_variable('weights', [int(x.shape[-1]), units])
    return tf.matmul(x, w) + v1.get_variable('biases', [units])


def _apply(net, layer, training):
  kind = layer[0]
  if kind == 'conv':
    return _conv(net, *layer[1:], training=training)
  if kind == 'max':
    return tf.nn.max_pool2d(net, layer[1], layer[2], layer[3])
  if kind == 'avg':
    return tf.nn.avg_pool2d(net, layer[1], layer[2], layer[3])
  if kind == 'fork':
    return tf.concat([_apply(net, sub, training) for sub in layer[1]], axis=3)
  raise ValueError(kind)


def _branches(net, branches, training):
  outs = []
  for i, branch in enumerate(branches):
    with v1.variable_scope(f'Branch_{i}'):
      x = net
      for layer in branch:
        x = _apply(x, layer, training)
      outs.append(x)
  return tf.concat(outs, axis=3)


def _mixed(net, scope, branches, training):
  with v1.variable_scope(scope):
    return _branches(net, branches, training)


def _c(scope, depth, kernel, stride=1, padding='SAME'):
  return ('conv', scope, depth, kernel, stride, padding)


def _v4_base(x, t):
  """TF-slim ``inception_v4_base`` up to Mixed_7d; returns (net, endpoints)."""
  ep = {}
  x = _apply(x, _c('Conv2d_1a_3x3', 32, 3, 2, 'VALID'), t)
  x = _apply(x, _c('Conv2d_2a_3x3', 32, 3, 1, 'VALID'), t)
  x = _apply(x, _c('Conv2d_2b_3x3', 64, 3), t)
  x = _mixed(x, 'Mixed_3a', [[('max', 3, 2, 'VALID')],
                             [_c('Conv2d_0a_3x3', 96, 3, 2, 'VALID')]], t)
  x = _mixed(x, 'Mixed_4a', [
      [_c('Conv2d_0a_1x1', 64, 1), _c('Conv2d_1a_3x3', 96, 3, 1, 'VALID')],
      [_c('Conv2d_0a_1x1', 64, 1), _c('Conv2d_0b_1x7', 64, [1, 7]),
       _c('Conv2d_0c_7x1', 64, [7, 1]), _c('Conv2d_1a_3x3', 96, 3, 1, 'VALID')]], t)
  x = _mixed(x, 'Mixed_5a', [[_c('Conv2d_1a_3x3', 192, 3, 2, 'VALID')],
                             [('max', 3, 2, 'VALID')]], t)
  for s in 'bcde':  # Inception-A
    x = _mixed(x, f'Mixed_5{s}', [
        [_c('Conv2d_0a_1x1', 96, 1)],
        [_c('Conv2d_0a_1x1', 64, 1), _c('Conv2d_0b_3x3', 96, 3)],
        [_c('Conv2d_0a_1x1', 64, 1), _c('Conv2d_0b_3x3', 96, 3), _c('Conv2d_0c_3x3', 96, 3)],
        [('avg', 3, 1, 'SAME'), _c('Conv2d_0b_1x1', 96, 1)]], t)
  x = _mixed(x, 'Mixed_6a', [  # Reduction-A
      [_c('Conv2d_1a_3x3', 384, 3, 2, 'VALID')],
      [_c('Conv2d_0a_1x1', 192, 1), _c('Conv2d_0b_3x3', 224, 3),
       _c('Conv2d_1a_3x3', 256, 3, 2, 'VALID')],
      [('max', 3, 2, 'VALID')]], t)
  for s in 'bcdefgh':  # Inception-B
    x = _mixed(x, f'Mixed_6{s}', [
        [_c('Conv2d_0a_1x1', 384, 1)],
        [_c('Conv2d_0a_1x1', 192, 1), _c('Conv2d_0b_1x7', 224, [1, 7]),
         _c('Conv2d_0c_7x1', 256, [7, 1])],
        [_c('Conv2d_0a_1x1', 192, 1), _c('Conv2d_0b_7x1', 192, [7, 1]),
         _c('Conv2d_0c_1x7', 224, [1, 7]), _c('Conv2d_0d_7x1', 224, [7, 1]),
         _c('Conv2d_0e_1x7', 256, [1, 7])],
        [('avg', 3, 1, 'SAME'), _c('Conv2d_0b_1x1', 128, 1)]], t)
  ep['Mixed_6h'] = x
  x = _mixed(x, 'Mixed_7a', [  # Reduction-B
      [_c('Conv2d_0a_1x1', 192, 1), _c('Conv2d_1a_3x3', 192, 3, 2, 'VALID')],
      [_c('Conv2d_0a_1x1', 256, 1), _c('Conv2d_0b_1x7', 256, [1, 7]),
       _c('Conv2d_0c_7x1', 320, [7, 1]), _c('Conv2d_1a_3x3', 320, 3, 2, 'VALID')],
      [('max', 3, 2, 'VALID')]], t)
  for s in 'bcd':  # Inception-C
    x = _mixed(x, f'Mixed_7{s}', [
        [_c('Conv2d_0a_1x1', 256, 1)],
        [_c('Conv2d_0a_1x1', 384, 1),
         ('fork', [_c('Conv2d_0b_1x3', 256, [1, 3]), _c('Conv2d_0c_3x1', 256, [3, 1])])],
        [_c('Conv2d_0a_1x1', 384, 1), _c('Conv2d_0b_3x1', 448, [3, 1]),
         _c('Conv2d_0c_1x3', 512, [1, 3]),
         ('fork', [_c('Conv2d_0d_1x3', 256, [1, 3]), _c('Conv2d_0e_3x1', 256, [3, 1])])],
        [('avg', 3, 1, 'SAME'), _c('Conv2d_0b_1x1', 256, 1)]], t)
  return x, ep


def _residual(net, scope, branches, scale, t, activation=True):
  """TF-slim block35/17/8: net + scale * up(concat(branches)), then ReLU."""
  with v1.variable_scope(scope):
    mixed = _branches(net, branches, t)
    up = _conv(mixed, 'Conv2d_1x1', int(net.shape[3]), 1, bn=False, relu=False)
    net = net + scale * up
    return tf.nn.relu(net) if activation else net


def _repeat(net, scope, block, count, branches, scale, t):
  with v1.variable_scope(scope):  # slim.repeat's scopes: Repeat/block35_1 ...
    for i in range(count):
      net = _residual(net, f'{block}_{i + 1}', branches, scale, t)
  return net


_B35 = [[_c('Conv2d_1x1', 32, 1)],
        [_c('Conv2d_0a_1x1', 32, 1), _c('Conv2d_0b_3x3', 32, 3)],
        [_c('Conv2d_0a_1x1', 32, 1), _c('Conv2d_0b_3x3', 48, 3), _c('Conv2d_0c_3x3', 64, 3)]]
_B17 = [[_c('Conv2d_1x1', 192, 1)],
        [_c('Conv2d_0a_1x1', 128, 1), _c('Conv2d_0b_1x7', 160, [1, 7]),
         _c('Conv2d_0c_7x1', 192, [7, 1])]]
_B8 = [[_c('Conv2d_1x1', 192, 1)],
       [_c('Conv2d_0a_1x1', 192, 1), _c('Conv2d_0b_1x3', 224, [1, 3]),
        _c('Conv2d_0c_3x1', 256, [3, 1])]]


def _irv2_base(x, t):
  """TF-slim ``inception_resnet_v2_base`` (output stride 16, unaligned maps)."""
  ep = {}
  x = _apply(x, _c('Conv2d_1a_3x3', 32, 3, 2, 'VALID'), t)
  x = _apply(x, _c('Conv2d_2a_3x3', 32, 3, 1, 'VALID'), t)
  x = _apply(x, _c('Conv2d_2b_3x3', 64, 3), t)
  x = _apply(x, ('max', 3, 2, 'VALID'), t)  # MaxPool_3a_3x3
  x = _apply(x, _c('Conv2d_3b_1x1', 80, 1, 1, 'VALID'), t)
  x = _apply(x, _c('Conv2d_4a_3x3', 192, 3, 1, 'VALID'), t)
  x = _apply(x, ('max', 3, 2, 'VALID'), t)  # MaxPool_5a_3x3
  x = _mixed(x, 'Mixed_5b', [
      [_c('Conv2d_1x1', 96, 1)],
      [_c('Conv2d_0a_1x1', 48, 1), _c('Conv2d_0b_5x5', 64, 5)],
      [_c('Conv2d_0a_1x1', 64, 1), _c('Conv2d_0b_3x3', 96, 3), _c('Conv2d_0c_3x3', 96, 3)],
      [('avg', 3, 1, 'SAME'), _c('Conv2d_0b_1x1', 64, 1)]], t)
  x = _repeat(x, 'Repeat', 'block35', 10, _B35, 0.17, t)
  x = _mixed(x, 'Mixed_6a', [
      [_c('Conv2d_1a_3x3', 384, 3, 2, 'VALID')],
      [_c('Conv2d_0a_1x1', 256, 1), _c('Conv2d_0b_3x3', 256, 3),
       _c('Conv2d_1a_3x3', 384, 3, 2, 'VALID')],
      [('max', 3, 2, 'VALID')]], t)
  x = _repeat(x, 'Repeat_1', 'block17', 20, _B17, 0.10, t)
  ep['PreAuxLogits'] = x
  x = _mixed(x, 'Mixed_7a', [
      [_c('Conv2d_0a_1x1', 256, 1), _c('Conv2d_1a_3x3', 384, 3, 2, 'VALID')],
      [_c('Conv2d_0a_1x1', 256, 1), _c('Conv2d_1a_3x3', 288, 3, 2, 'VALID')],
      [_c('Conv2d_0a_1x1', 256, 1), _c('Conv2d_0b_3x3', 288, 3),
       _c('Conv2d_1a_3x3', 320, 3, 2, 'VALID')],
      [('max', 3, 2, 'VALID')]], t)
  x = _repeat(x, 'Repeat_2', 'block8', 9, _B8, 0.20, t)
  x = _residual(x, 'Block8', _B8, 1.0, t, activation=False)
  x = _apply(x, _c('Conv2d_7b_1x1', 1536, 1), t)
  return x, ep


def _aux(net, conv_scope, fc_scope, t):
  """v4 / IR-v2 AuxLogits: 5x5/3 avg pool, 1x1 128, conv 768 over the map, FC."""
  with v1.variable_scope('AuxLogits'):
    a = tf.nn.avg_pool2d(net, 5, 3, 'VALID')
    a = _conv(a, 'Conv2d_1b_1x1', 128, 1, training=t)
    a = _conv(a, conv_scope, 768, a.shape[1:3].as_list(), padding='VALID', training=t)
    return _fc(tf.reshape(a, [-1, 768]), fc_scope, CLASSES)


def _v4_or_irv2(x, is_training, reuse, arch):
  scope = 'InceptionV4' if arch == 'inception_v4' else 'InceptionResnetV2'
  with v1.variable_scope(scope, reuse=reuse):
    if arch == 'inception_v4':
      net, ep = _v4_base(x, is_training)
      aux = _aux(ep['Mixed_6h'], 'Conv2d_2a', 'Aux_logits', is_training)
    else:
      net, ep = _irv2_base(x, is_training)
      aux = _aux(ep['PreAuxLogits'], 'Conv2d_2a_5x5', 'Logits', is_training)
    with v1.variable_scope('Logits'):
      pooled = tf.reduce_mean(net, axis=[1, 2])  # the full-map VALID average pool
      logits = _fc(pooled, 'Logits', CLASSES)  # dropout: identity in eval
  return logits, aux, net


def build(arch, x, is_training, reuse):
  """(logits, aux logits or None, last feature map) of the TF-slim network."""
  if arch in ('inception_v4', 'inception_resnet_v2'):
    return _v4_or_irv2(x, is_training, reuse, arch)
  fn, arg_scope, last = {
      'inception_v1_bn': (inception.inception_v1, inception.inception_v1_arg_scope,
                          'Mixed_5c'),
      'inception_v2': (inception.inception_v2, inception.inception_v2_arg_scope,
                       'Mixed_5c'),
      'inception_v3': (inception.inception_v3, inception.inception_v3_arg_scope,
                       'Mixed_7c'),
  }[arch]
  with slim.arg_scope(arg_scope()):
    logits, ep = fn(x, num_classes=CLASSES, is_training=is_training, reuse=reuse)
  return logits, ep.get('AuxLogits'), ep[last]


# ---------------------------------------------------------------------------------

def images(n, size, seed):
  """``n`` dissimilar images in [-1, 1] (noise, waves, blobs, ramp), NHWC float32."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  out = []
  for i in range(n):
    kind = i % 4
    if kind == 0:
      im = rng.random((size, size, 3))
    elif kind == 1:
      f = rng.uniform(2, 12, 3)
      im = 0.5 + 0.5 * np.stack([np.sin(2 * np.pi * f[c] * (xx + c * yy)) for c in range(3)],
                                -1)
    elif kind == 2:
      k = np.ones(15) / 15
      im = np.apply_along_axis(np.convolve, 0, rng.random((size, size, 3)), k, 'same')
      im = np.apply_along_axis(np.convolve, 1, im, k, 'same')
      im = (im - im.min()) / (im.max() - im.min())
    else:
      im = np.stack([xx, yy, 1 - xx * yy], -1)
    out.append(im)
  return (np.stack(out) * 2 - 1).astype(np.float32)


def assign(sess, values):
  """Sets variables (dict variable -> array) in one session run."""
  feed, ops = {}, []
  for var, value in values.items():
    ph = v1.placeholder(var.dtype.base_dtype, var.shape)
    ops.append(var.assign(ph))
    feed[ph] = value.astype(np.float32)
  sess.run(ops, feed)


def randomise(sess, variables, rng):
  """Random values: He-normal classifiers, small random biases and BN offsets.

  The trunk's conv kernels keep the random values of their initializers (He-style
  variance scaling; v2's separable stem: slim's ``trunc_normal(1.0)``), drawn by
  TF from the graph seed. The heads are redrawn here because slim
  initialises some of them near zero (v3 aux logits: std 0.001), which would make
  a relative tolerance meaningless.
  """
  values = {}
  for var in variables:
    name, shape = var.op.name, var.shape.as_list()
    leaf = name.rsplit('/', 1)[-1]
    normal = lambda std: rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if leaf == 'weights' and ('/Logits/' in name or '/AuxLogits/' in name):
      values[var] = normal(np.sqrt(2.0 / np.prod(shape[:-1])))
    elif leaf in ('biases', 'beta'):
      values[var] = normal(0.2 if leaf == 'beta' else 0.1)
    elif leaf not in ('weights', 'depthwise_weights', 'pointwise_weights', 'moving_mean',
                      'moving_variance'):  # BN statistics: calibrated below
      raise AssertionError(f'unexpected variable {name}')
  assign(sess, values)


def _variable_of(tensor):
  """Name of the variable a tensor reads (through Identity / ReadVariableOp)."""
  op = tensor.op
  while op.type in ('Identity', 'ReadVariableOp'):
    op = op.inputs[0].op
  if op.type not in ('VarHandleOp', 'VariableV2'):
    raise AssertionError(f'{tensor.name} does not read a variable ({op.type})')
  return op.name


def calibrate(sess, graph, variables, x, batch, rng):
  """Moving statistics = a calibration batch's statistics, then perturbed.

  In the train-mode graph every BN normalises with its own batch statistics, so
  fetching them all in one pass gives what each layer sees in eval mode once its
  moving statistics are set to them (the torch parity worker does the same). The
  perturbation (mean shift, variance scale, a floor against near-constant channels)
  makes them differ from the batch statistics, as trained ones do.
  """
  ops = [op for op in graph.get_operations()
         if op.type.startswith('FusedBatchNorm') and op.get_attr('is_training')]
  # The op's offset input reads the layer's ``.../BatchNorm/beta`` variable.
  fetch = {_variable_of(op.inputs[2]).rsplit('/', 1)[0]: (op.outputs[1], op.outputs[2])
           for op in ops}
  stats = sess.run(fetch, {x: batch})
  by_name = {v.op.name: v for v in variables}
  values = {}
  for scope, (mean, var) in sorted(stats.items()):
    mean = mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var)
    var = var * rng.uniform(0.5, 2.0, var.shape)
    values[by_name[f'{scope}/moving_mean']] = mean
    values[by_name[f'{scope}/moving_variance']] = var + 0.1 * var.mean()
  assign(sess, values)
  n_bn = sum(1 for v in variables if v.op.name.endswith('/moving_mean'))
  if len(stats) != n_bn:
    raise AssertionError(f'calibrated {len(stats)} of {n_bn} BatchNorm layers')


def write_checkpoints(sess, variables, out, name):
  """First format (one file) and second format (+ training leftovers)."""
  os.makedirs(os.path.join(out, 'v1'), exist_ok=True)
  os.makedirs(os.path.join(out, 'v2'), exist_ok=True)
  p1 = v1.train.Saver(variables, write_version=saver_pb2.SaverDef.V1).save(
      sess, os.path.join(out, 'v1', f'{name}.ckpt'), write_meta_graph=False,
      write_state=False)
  step = v1.Variable(123456, dtype=tf.int64, name='global_step')
  slot = v1.Variable(np.zeros((3,), np.float32), name=f'{variables[0].op.name}/RMSProp')
  sess.run([step.initializer, slot.initializer])
  p2 = v1.train.Saver(variables + [step, slot]).save(
      sess, os.path.join(out, 'v2', f'{name}.ckpt'), write_meta_graph=False,
      write_state=False)
  return p1, p2


def run_arch(arch, out_dir, seed):
  size, ckpt_name, _ = ARCHS[arch]
  out = os.path.join(out_dir, arch)
  rng = np.random.default_rng(seed)
  t0 = time.process_time()  # CPU seconds of this process (all threads)
  graph = tf.Graph()
  with graph.as_default():
    v1.set_random_seed(seed)
    x = v1.placeholder(tf.float32, [None, size, size, 3])
    build(arch, x, is_training=True, reuse=None)
    logits, aux, last = build(arch, x, is_training=False, reuse=True)
    pooled = tf.reduce_mean(last, axis=[1, 2])
    variables = v1.global_variables()
    times = {'build': time.process_time() - t0}
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      randomise(sess, variables, rng)
      times['randomise'] = time.process_time() - t0
      batch = images(CALIBRATION, size, seed)
      calibrate(sess, graph, variables, x, batch, rng)
      times['calibrate'] = time.process_time() - t0
      fetch = {'logits': logits, 'pooled': pooled}
      if aux is not None:
        fetch['aux'] = aux
      ref = sess.run(fetch, {x: batch[:BATCH]})
      t1 = time.process_time()
      p1, p2 = write_checkpoints(sess, variables, out, ckpt_name)
  np.savez(os.path.join(out, 'ref.npz'), x=batch[:BATCH], **ref)
  times.update(run=t1 - t0, save=time.process_time() - t0)
  return {'v1': p1, 'v2': p2, 'num_variables': len(variables),
          'cpu_seconds_cumulative': {k: round(v, 1) for k, v in times.items()}}


def _load(path):
  from inception_jax import weights  # pylint: disable=g-import-not-at-top
  return weights.load(path)


def _same_arrays(a, b):
  return sorted(a) == sorted(b) and all(
      a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def _without_background(arrays):
  out = dict(arrays)
  for head in ('Logits', 'AuxLogits/Logits'):
    if f'{head}/kernel' in out:
      out[f'{head}/kernel'] = out[f'{head}/kernel'][:, 1:]
      out[f'{head}/bias'] = out[f'{head}/bias'][1:]
  return out


def _config_facts(config):
  return {k: config.get(k) for k in ('arch', 'tag', 'num_classes', 'label_offset',
                                     'include_top', 'aux_in_file')} | {
                                         'converted_from': config['converted_from']['file']}


def check_arch(arch, out_dir, rec):
  """Converts every tag of ``arch`` and compares with TF; fills ``rec``.

  ``convert.convert`` (the CLI's path) converts the release tag's first-format
  checkpoint to a file with the background class kept (and, for v1 / v2, whose files
  the tests read, dropped too). The other conversions map the second format's
  variables, read once, in memory: ``slim_ckpt.map_variables``,
  ``convert.check_against_model`` and ``convert.file_config``, which is what
  ``convert`` runs between reading and writing.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import kernels  # pylint: disable=g-import-not-at-top
  from third_party_weights import convert, slim_ckpt  # pylint: disable=g-import-not-at-top

  tags = ARCHS[arch][2]
  conv = os.path.join(out_dir, 'converted')
  os.makedirs(conv, exist_ok=True)
  t0 = time.process_time()
  configs = rec['configs'] = {}

  def to_file(name, keep):
    dest = os.path.join(conv, f'{name}.v1.{"keep" if keep else "drop"}.safetensors')
    convert.convert('slim', name, rec['v1'], dest, keep_background=keep)
    arrays, config = _load(dest)
    configs[os.path.basename(dest)] = _config_facts(config)
    return dest, arrays

  second_format = slim_ckpt.read_checkpoint(rec['v2'])
  main = f'{arch}.{tags[0]}'

  def in_memory(name, keep):
    arrays, _ = slim_ckpt.map_variables(second_format, arch, keep_background=keep)
    if name == main:  # the network check depends on the arch and options only
      convert.check_against_model(name, arrays)
    config = convert.file_config(name, arrays, input_path=rec['v2'] + '.index',
                                 input_sha256='', keep_background=keep)
    configs[f'{name}.v2.{"keep" if keep else "drop"}'] = _config_facts(config)
    return arrays

  keep_v1, keep_arrays = to_file(main, True)
  rec['v1_v2_identical'] = _same_arrays(keep_arrays, in_memory(main, True))
  if arch in SMALL:
    _, drop_arrays = to_file(main, False)
  else:
    drop_arrays = in_memory(main, False)
  rec['drop_is_keep_without_background'] = _same_arrays(
      drop_arrays, _without_background(keep_arrays))
  rec['other_tags_identical'] = {
      tag: _same_arrays(in_memory(f'{arch}.{tag}', False), drop_arrays) for tag in tags[1:]}
  del keep_arrays, drop_arrays, second_format
  rec['cpu_seconds_convert'] = round(time.process_time() - t0, 1)

  # Our network from the converted (background kept) file vs TF on the same batch.
  ref = dict(np.load(os.path.join(out_dir, arch, 'ref.npz')))
  has_aux = 'aux' in ref
  model = inception_jax.create_model(main, pretrained=keep_v1, aux_logits=has_aux)
  aux_endpoint = dict(model.aux_names).get('AuxLogits')

  @nnx.jit
  def forward(m, x):
    # One pass through the trunk: Inception.__call__ in eval mode is this global
    # average pool, dropout (identity) and Logits (tracing m(x) as well would double
    # the program XLA compiles).
    ep = m.features(x)
    pooled = jnp.mean(ep[m.layer_names[-1]], axis=(1, 2))
    out = {'logits': m.Logits(m.dropout(pooled)), 'pooled': pooled}
    if has_aux:
      out['aux'] = m.AuxLogits(ep[aux_endpoint])
    return out

  ours = {k: np.asarray(v) for k, v in forward(model, jnp.asarray(ref['x'])).items()}
  for k, v in ours.items():
    rec[f'{k}_max_abs_diff'] = float(np.max(np.abs(v - ref[k])))
    rec[f'{k}_scale'] = float(np.max(np.abs(ref[k])))
  rec['top1_ref'] = ref['logits'].argmax(-1).tolist()
  rec['top1_ours'] = ours['logits'].argmax(-1).tolist()
  rec['model_num_classes'] = model.num_classes
  rec['model_label_offset'] = model.pretrained_cfg.label_offset
  del model
  # The default kernels resolve to one choice here ('cpu' on a CPU machine): its
  # logits are the ones above; the other choice is built and run.
  default = kernels.resolve('auto')
  other = 'xla' if default == 'cpu' else 'cpu'
  m = inception_jax.create_model(main, pretrained=keep_v1, kernels=other)
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(m, jnp.asarray(ref['x'])))
  rec['kernels'] = {
      choice: {'logits_max_abs_diff': float(np.max(np.abs(l - ref['logits']))),
               'top1_ours': l.argmax(-1).tolist()}
      for choice, l in ((default, ours['logits']), (other, logits))}
  rec['cpu_seconds_jax'] = round(time.process_time() - t0 - rec['cpu_seconds_convert'], 1)


def cleanup(out_dir):
  """Deletes what the tests do not read (the large checkpoints and converted files).

  Kept: every ref.npz, v1's and v2's checkpoints (CLI and download tests) and the
  converted files of those two architectures.
  """
  for arch in ARCHS:
    if arch not in SMALL:
      for fmt in ('v1', 'v2'):
        shutil.rmtree(os.path.join(out_dir, arch, fmt), ignore_errors=True)
  conv = os.path.join(out_dir, 'converted')
  for name in os.listdir(conv):
    if not name.startswith(SMALL):
      os.remove(os.path.join(conv, name))


def main():
  out_dir, archs = sys.argv[1], sys.argv[2:] or list(ARCHS)
  record = {}
  t0, c0 = time.time(), time.process_time()
  for i, arch in enumerate(archs):
    record[arch] = run_arch(arch, out_dir, seed=100 + i)
    print(arch, json.dumps(record[arch]), flush=True)
  record['cpu_seconds_tf'] = round(time.process_time() - c0, 1)
  for arch in archs:
    check_arch(arch, out_dir, record[arch])
    print(arch, json.dumps({k: v for k, v in record[arch].items() if k != 'configs'}),
          flush=True)
  cleanup(out_dir)
  record['seconds_total'] = round(time.time() - t0, 1)
  record['cpu_seconds_total'] = round(time.process_time() - c0, 1)
  with open(os.path.join(out_dir, 'worker.json'), 'w') as f:
    json.dump(record, f, indent=1)
  print('done', record['seconds_total'], flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
