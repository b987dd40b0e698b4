"""TF-slim checkpoints -> the project format.

Sources: the TF-slim model zoo (``inception_v1_2016_08_28.tar.gz`` ...
``inception_resnet_v2_2016_08_30.tar.gz``) and the adversarially trained Inceptions
(``adv_inception_v3_2017_08_18.tar.gz`` ...). The 2016 tarballs hold one
``*.ckpt`` file in TensorFlow's first checkpoint format (a TensorSlice table); the
2017 ones ``*.ckpt.index`` + ``*.ckpt.data-00000-of-00001`` (the second format).
Neither has a ``checkpoint`` state file. Both are read with TensorFlow's checkpoint
reader (``tf.train.load_checkpoint``), so this module imports TensorFlow (and must
never share a process with torch); the library itself never does.

Variable names are TF-slim scopes, which are the project's module paths:

* ``InceptionV3/Mixed_5b/Branch_1/Conv2d_0b_5x5/weights`` -> ``.../conv/kernel``;
  ``.../BatchNorm/{beta,moving_mean,moving_variance}`` -> ``.../bn/{bias,mean,var}``
  (slim's BatchNorm has no gamma: load with ``bn_scale=False``); ``biases`` ->
  ``conv/bias`` (convs without BN: BN-Inception's first layer, the
  Inception-ResNet up-projections).
* BN-Inception's separable ``Conv2d_1a_7x7``: ``depthwise_weights`` ``[7, 7, 3, 8]``
  -> ``depthwise/kernel`` ``[7, 7, 1, 24]`` (a grouped conv; output channel
  ``c * 8 + m`` in both), ``pointwise_weights`` -> ``conv/kernel``.
* ``Repeat/block35_1 .. block35_10`` are stacked on a leading axis into
  ``Repeat/block35`` (index i is ``block35_{i+1}``).
* Classifiers: the 1x1-conv logits of v1/v2/v3 (``Logits/Conv2d_0c_1x1``,
  ``Logits/Conv2d_1c_1x1``, v3 ``AuxLogits/Conv2d_2b_1x1``) and the fully
  connected ones of v4 / IR-v2 (``Logits/Logits``, v4 ``AuxLogits/Aux_logits``,
  IR-v2 ``AuxLogits/Logits``) -> ``Logits`` / ``AuxLogits/Logits`` ``{kernel [in,
  classes], bias}``; v4's aux conv ``AuxLogits/Conv2d_2a`` (5x5 at 299) ->
  ``AuxLogits/Conv2d_2a_5x5``.

Labels: the checkpoints have 1001 outputs, index 0 being a "background" class that
ImageNet never uses. By default the converter drops it (1000 classes in
torchvision/Keras order); ``keep_background=True`` keeps all 1001 (then
``label_offset=1``: ImageNet class i is output i + 1).

Variables a training run leaves behind (``global_step``, optimiser slots such as
``.../RMSProp``, ``ExponentialMovingAverage`` shadows) are ignored and listed;
anything else that does not map is an error.
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import tempfile

import numpy as np

# Architecture -> TF-slim top-level scope.
SCOPES = {
    'inception_v1_bn': 'InceptionV1',
    'inception_v2': 'InceptionV2',
    'inception_v3': 'InceptionV3',
    'inception_v4': 'InceptionV4',
    'inception_resnet_v2': 'InceptionResnetV2',
}

# Classifier layers (slim layer scope -> project Linear module).
CLASSIFIERS = {
    'inception_v1_bn': {'Logits/Conv2d_0c_1x1': 'Logits'},
    'inception_v2': {'Logits/Conv2d_1c_1x1': 'Logits'},
    'inception_v3': {'Logits/Conv2d_1c_1x1': 'Logits',
                     'AuxLogits/Conv2d_2b_1x1': 'AuxLogits/Logits'},
    'inception_v4': {'Logits/Logits': 'Logits', 'AuxLogits/Aux_logits': 'AuxLogits/Logits'},
    'inception_resnet_v2': {'Logits/Logits': 'Logits', 'AuxLogits/Logits': 'AuxLogits/Logits'},
}

# Other layers whose slim scope is not the project's module name.
RENAMES = {'inception_v4': {'AuxLogits/Conv2d_2a': 'AuxLogits/Conv2d_2a_5x5'}}

# Variable leaf -> project leaf (conv layers).
LEAVES = {
    'weights': 'conv/kernel',
    'biases': 'conv/bias',
    'depthwise_weights': 'depthwise/kernel',
    'pointwise_weights': 'conv/kernel',
    'BatchNorm/beta': 'bn/bias',
    'BatchNorm/gamma': 'bn/scale',
    'BatchNorm/moving_mean': 'bn/mean',
    'BatchNorm/moving_variance': 'bn/var',
}
CLASSIFIER_LEAVES = {'weights': 'kernel', 'biases': 'bias'}

# What training leaves in a checkpoint besides the weights (not converted).
_TRAINING_LEFTOVERS = re.compile(
    r'(^|/)(global_step|ExponentialMovingAverage|RMSProp(_\d+)?|Momentum|Adam(_\d+)?|'
    r'beta[12]_power|Adagrad)$|/ExponentialMovingAverage(/|$)')
_REPEAT = re.compile(r'^(Repeat(?:_\d+)?)/(block\d+)_(\d+)/(.+)$')
_BACKGROUND_CLASSES = 1001


class SlimCheckpointError(ValueError):
  """A TF-slim checkpoint cannot be converted for the requested weights."""


def is_tarball(path: str) -> bool:
  return path.endswith(('.tar.gz', '.tgz', '.tar'))


def extract_checkpoint(tarball: str, dest: str) -> str:
  """Extracts the checkpoint files of a published tarball into ``dest``.

  Only regular files whose name contains ``.ckpt`` are extracted, flattened into
  ``dest`` (no path from the archive is used).

  Returns:
    The checkpoint path to give the reader (see ``find_checkpoint``).
  """
  try:
    with tarfile.open(tarball) as tar:
      members = [m for m in tar.getmembers()
                 if m.isfile() and '.ckpt' in os.path.basename(m.name)]
      if not members:
        raise SlimCheckpointError(
            f'{tarball} holds no checkpoint (no *.ckpt* file among '
            f'{[m.name for m in tar.getmembers()][:10]})')
      os.makedirs(dest, exist_ok=True)
      for m in members:
        src = tar.extractfile(m)
        with src, open(os.path.join(dest, os.path.basename(m.name)), 'wb') as out:
          while chunk := src.read(1 << 20):
            out.write(chunk)
  except (tarfile.TarError, EOFError, OSError) as e:
    if isinstance(e, SlimCheckpointError):
      raise
    raise SlimCheckpointError(f'{tarball} is not a readable tarball (truncated or '
                              f'corrupt?): {e}') from e
  return find_checkpoint(dest)


def find_checkpoint(path: str) -> str:
  """The path to give TensorFlow's reader for a checkpoint named as published.

  Accepts the second format's prefix (``model.ckpt`` for ``model.ckpt.index`` +
  ``model.ckpt.data-00000-of-00001``) or either of its files, the first format's
  single file, or a directory holding exactly one checkpoint.
  """
  if os.path.isdir(path):
    names = sorted(os.listdir(path))
    prefixes = [n[:-len('.index')] for n in names if n.endswith('.index')]
    singles = [n for n in names if n.endswith('.ckpt')]
    found = prefixes or singles
    if len(found) != 1:
      raise SlimCheckpointError(
          f'{path} holds {len(found)} checkpoints ({found}); give the checkpoint '
          'file or prefix instead of the folder')
    return os.path.join(path, found[0])
  if os.path.exists(path + '.index'):
    return path
  if path.endswith('.index') and os.path.isfile(path):
    return path[:-len('.index')]
  m = re.fullmatch(r'(.+)\.data-\d{5}-of-\d{5}', path)
  if m and os.path.exists(m.group(1) + '.index'):
    return m.group(1)
  if os.path.isfile(path):
    return path  # the first (TensorSlice) format: one file
  raise SlimCheckpointError(
      f'no TF checkpoint at {path}: give the published .tar.gz, the .ckpt file of '
      'the 2016 releases, or the prefix of an .index/.data pair (model.ckpt for '
      'model.ckpt.index)')


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """All variables of a TF checkpoint (either format) as float32 numpy arrays."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ckpt = find_checkpoint(path)
  try:
    reader = tf.train.load_checkpoint(ckpt)
    names = reader.get_variable_to_shape_map()
    return {n: np.asarray(reader.get_tensor(n)) for n in sorted(names)}
  except Exception as e:  # TF raises several error types for corrupt files
    raise SlimCheckpointError(f'{ckpt} is not a readable TF checkpoint (truncated or '
                              f'corrupt?): {type(e).__name__}: {e}') from e


def _map_leaf(arch: str, layer: str, leaf: str) -> str | None:
  """Project key of one variable (layer scope + leaf) or None if unknown."""
  if layer in CLASSIFIERS[arch]:
    target = CLASSIFIER_LEAVES.get(leaf)
    return f'{CLASSIFIERS[arch][layer]}/{target}' if target else None
  layer = RENAMES.get(arch, {}).get(layer, layer)
  for suffix, target in LEAVES.items():
    if leaf == suffix:
      return f'{layer}/{target}'
  return None


def _split(name: str) -> tuple[str, str]:
  """(layer scope, leaf): leaves are one name, or ``BatchNorm/<name>``."""
  parts = name.split('/')
  if len(parts) >= 3 and parts[-2] == 'BatchNorm':
    return '/'.join(parts[:-2]), '/'.join(parts[-2:])
  return '/'.join(parts[:-1]), parts[-1]


def map_variables(variables: dict[str, np.ndarray], arch: str, *,
                  keep_background: bool = False, source: str = 'checkpoint'
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
  """Checkpoint variables -> project arrays.

  Args:
    variables: TF variable name -> array (``read_checkpoint``).
    arch: architecture of the weights (a key of ``SCOPES``).
    keep_background: keep the 1001st (background) output; default: drop it.
    source: file name for messages.

  Returns:
    (project arrays, names of ignored training variables).

  Raises:
    SlimCheckpointError: variables of another network, unknown variables, a
      BatchNorm with gamma, missing stacked blocks, or a classifier without the
      background class when dropping it.
  """
  if arch not in SCOPES:
    raise SlimCheckpointError(f'no TF-slim map for {arch}; TF-slim checkpoints exist '
                              f'for {sorted(SCOPES)}')
  scope = SCOPES[arch] + '/'
  ignored, unknown, foreign = [], [], []
  flat, stacks = {}, {}
  for name, value in variables.items():
    if _TRAINING_LEFTOVERS.search(name):
      ignored.append(name)
      continue
    if not name.startswith(scope):
      foreign.append(name)
      continue
    rel = name[len(scope):]
    m = _REPEAT.match(rel)
    index = None
    if m:
      repeat, block, i, rest = m.groups()
      rel, index = f'{repeat}/{block}/{rest}', int(i) - 1
    layer, leaf = _split(rel)
    key = _map_leaf(arch, layer, leaf)
    if key is None:
      unknown.append(name)
      continue
    value = np.asarray(value, dtype=np.float32)
    if leaf == 'depthwise_weights':
      kh, kw, cin, mult = value.shape
      value = value.reshape(kh, kw, 1, cin * mult)
    elif key.endswith('/kernel') and value.ndim == 4 and layer in CLASSIFIERS[arch]:
      value = value.reshape(value.shape[-2:])  # 1x1 conv logits -> dense
    if index is None:
      flat[key] = value
    else:
      stacks.setdefault(key, {})[index] = value
  if foreign:
    tops = sorted({n.split('/')[0] for n in foreign})
    raise SlimCheckpointError(
        f'{source} holds variables outside {SCOPES[arch]!r} (top-level scopes {tops}, '
        f'e.g. {foreign[:3]}): it is not a TF-slim {arch} checkpoint. Check --arch.')
  if unknown:
    raise SlimCheckpointError(
        f'{source}: {len(unknown)} variables do not map to {arch}: {unknown[:6]}. '
        'The checkpoint is probably for another network or a modified one.')
  gammas = [k for k in flat if k.endswith('/bn/scale')]
  if gammas:
    raise SlimCheckpointError(
        f'{source} has BatchNorm gamma variables ({gammas[:3]}): TF-slim Inception '
        'checkpoints have none (scale=False). A network trained with scale=True needs '
        'bn_scale=True, which the TF-slim tags do not set.')
  for key, blocks in stacks.items():
    n = max(blocks) + 1
    if sorted(blocks) != list(range(n)):
      raise SlimCheckpointError(f'{source}: blocks missing from {key}: have '
                                f'{sorted(i + 1 for i in blocks)}')
    flat[key] = np.stack([blocks[i] for i in range(n)])
  if not keep_background:
    for head in ('Logits', 'AuxLogits/Logits'):
      if f'{head}/kernel' not in flat:
        continue
      classes = flat[f'{head}/kernel'].shape[-1]
      if classes != _BACKGROUND_CLASSES:
        raise SlimCheckpointError(
            f'{source}: {head} has {classes} classes, not {_BACKGROUND_CLASSES}: there '
            'is no background class to drop; convert with --keep_background')
      flat[f'{head}/kernel'] = flat[f'{head}/kernel'][:, 1:]
      flat[f'{head}/bias'] = flat[f'{head}/bias'][1:]
  return flat, ignored


def convert(path: str, name: str, *, keep_background: bool = False
            ) -> dict[str, np.ndarray]:
  """Project arrays for the weights ``name`` (arch.tag) from a TF-slim checkpoint.

  ``path``: the published ``.tar.gz``, a first-format ``.ckpt`` file, or a
  second-format prefix (or its ``.index`` / ``.data`` file).
  """
  arch = name.partition('.')[0]
  if is_tarball(path):
    with tempfile.TemporaryDirectory(prefix='slim_ckpt_') as tmp:
      variables = read_checkpoint(extract_checkpoint(path, tmp))
  else:
    variables = read_checkpoint(path)
  arrays, ignored = map_variables(variables, arch, keep_background=keep_background,
                                  source=os.path.basename(path))
  if ignored:
    print(f'note: {len(ignored)} training variables not converted: {ignored[:4]}'
          + (' ...' if len(ignored) > 4 else ''), file=sys.stderr)
  return arrays
