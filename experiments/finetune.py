r"""Fine-tune (or train from scratch) an Inception network on a small image dataset.

The JAX counterpart of the Keras notebooks that fine-tune InceptionV3 /
InceptionResNetV2 with ``flow_from_directory``::

  python -m experiments.finetune --arch=inception_resnet_v2
  python -m experiments.finetune --arch=inception_v3 --pretrained=inception_v3.tf_in1k \
      --dataset=folder:~/flowers --epochs=10 --freeze=backbone --horizontal_flip

Defaults: the ``digits`` dataset (scikit-learn's 1,797 real 8x8 handwritten digits,
offline) at the architecture's smallest valid input (75x75 for Inception-v3 and
Inception-ResNet-v2: the digits carry 8x8 pixels of information, so a larger input
only costs time), batch 32 and 1 epoch (the Keras ``fit`` defaults), Adam 1e-3
with a cosine schedule, BatchNorm momentum 'auto' (see ``--bn_momentum``); a few
minutes on a 2-core CPU. With ``--pretrained`` the default size and preprocessing
come from the weights. Without it the network trains from scratch (said in the log).

Every run gets its own directory, ``--runs_dir/<arch>-<dataset>-<time>`` (default
``./runs``; see ``experiments.runs`` for its contents), or ``--workdir=DIR``. A run
is resumed only when asked: ``--resume`` (the newest run of this arch and dataset
under ``--runs_dir``) or ``--workdir`` of an existing run; any flag that would change
the model, data or schedule is then refused with a diff of old and new values.
The best model by ``--monitor`` (a tie keeps the first, ``callbacks.is_better``;
its checkpoint is kept while it is the best) is also written as an inference file,
``RUN/best.safetensors``: ``inception_jax.load(RUN)`` or ``create_model(pretrained=RUN)``
use it. ``--early_stopping_patience`` and ``--schedule=plateau`` are Keras'
``EarlyStopping`` and ``ReduceLROnPlateau`` (``inception_jax.callbacks``); when early
stopping fires (or with ``--restore_best``) the reports describe the best model.

Flags are checked before TensorFlow is imported, data is scanned or anything
compiles, so a mistake is reported within seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

_T_PROCESS = time.time()  # wall time counts imports and compilation too

import inception_jax  # pylint: disable=g-bad-import-order

inception_jax.configure_xla()  # its XLA:CPU flags, before JAX starts (the import sets them too)

# JAX before TensorFlow: importing TF first can break JAX's CPU client. TensorFlow
# (experiments.data, outputs' TensorBoard writer) is imported only once the flags
# have been checked (see run()).
import jax  # pylint: disable=g-import-not-at-top,g-bad-import-order
import numpy as np
from flax import nnx

from inception_jax import preprocessing as prep_lib
from inception_jax import train as train_lib

from experiments import folders  # pylint: disable=g-bad-import-order
from experiments import runs as runs_lib

FLAGS = flags.FLAGS

# --- model
flags.DEFINE_string('arch', 'inception_v3', 'Architecture (inception_jax.list_models()) '
                    'or a pretrained tag arch.tag.')
flags.DEFINE_string('pretrained', None, 'Converted weights: a file path, or a tag '
                    '(inception_v3.tf_in1k, or just tf_in1k for --arch). Unset: from scratch.')
flags.DEFINE_enum('pooling', 'avg', ['avg', 'max'], 'Global pooling before the classifier.')
flags.DEFINE_float('dropout_rate', None, 'Dropout before the classifier (default: the '
                   'architecture\'s, 0.2 for most).')
flags.DEFINE_bool('aux_logits', False, 'Train the auxiliary classifier(s) too.')
flags.DEFINE_string('bn_momentum', 'auto', 'BatchNorm running-average momentum, or "auto": '
                    'the architecture\'s (0.99) unless the run is too short for the '
                    'running averages to forget their initial values, then '
                    '1 - 10 / steps (at least 0.9).')
# --- data
flags.DEFINE_string('dataset', 'digits', '"digits", "folder:PATH" (a sub-folder per '
                    'class, or split folders PATH/train, PATH/val|validation, PATH/test; '
                    'Kaggle-style seg_train/seg_train nesting is recognised) or '
                    '"tfds:NAME".')
flags.DEFINE_string('validation_dataset', None, 'A folder of class folders for '
                    'validation (instead of the dataset\'s own split or '
                    '--validation_split).')
flags.DEFINE_string('test_dataset', None, 'A folder of class folders for the final test '
                    'evaluation (instead of the dataset\'s test split).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_float('validation_split', 0.2, 'Held-out fraction of each class when the '
                   'dataset has no validation split (0: no validation).')
flags.DEFINE_string('cache_dir', None, 'Where converted images of a folder dataset go '
                    '(default ~/.cache/inception_jax/folders/...).')
flags.DEFINE_integer('image_size', None, 'Square input side. Default: the weights\' '
                     'size with --pretrained; for digits the architecture\'s minimum; '
                     'otherwise the architecture\'s default size (299).')
flags.DEFINE_enum('crop_mode', 'center', list(prep_lib.CROP_MODES), 'How images become '
                  'squares, in training and evaluation alike: "center" keeps the aspect '
                  'ratio and crops the centre (edges of non-square images are lost), '
                  '"squash" resizes the whole image to a square (Keras '
                  'flow_from_directory target_size).')
flags.DEFINE_integer('batch_size', 32, 'Global batch size (all devices, all processes).')
flags.DEFINE_integer('epochs', 1, 'Training epochs (ignored when --steps is set); 1 like '
                     'Keras fit().')
flags.DEFINE_integer('steps', None, 'Training steps (overrides --epochs).')
# --- augmentation (Keras ImageDataGenerator names)
flags.DEFINE_bool('horizontal_flip', False, 'Random left-right flips.')
flags.DEFINE_bool('vertical_flip', False, 'Random up-down flips.')
flags.DEFINE_float('rotation_range', 0.0, 'Random rotation in [-r, r] degrees.')
flags.DEFINE_float('width_shift_range', 0.0, 'Horizontal shift: fraction of the width '
                   '(< 1) or pixels.')
flags.DEFINE_float('height_shift_range', 0.0, 'Vertical shift: fraction or pixels.')
flags.DEFINE_float('shear_range', 0.0, 'Shear angle in [-s, s] degrees.')
flags.DEFINE_float('zoom_range', 0.0, 'Zoom factors in [1 - z, 1 + z].')
flags.DEFINE_enum('fill_mode', 'nearest', ['constant', 'nearest', 'reflect', 'wrap'],
                  'How pixels from outside the image are filled.')
flags.DEFINE_float('cval', 0.0, 'Fill value (0-255) for --fill_mode=constant.')
flags.DEFINE_bool('random_resized_crop', False, 'Inception-style random crop (8%-100% of '
                  'the area, aspect 3/4-4/3) before resizing.')
# --- optimisation
flags.DEFINE_enum('optimizer', 'adam', list(train_lib.OPTIMIZERS), 'adam; sgd (momentum '
                  '0.9); rmsprop: Keras RMSprop (rho 0.9, epsilon 1e-7, no momentum); '
                  'rmsprop_tf: the Inception papers\' TF RMSProp (decay 0.9, epsilon 1.0 '
                  'inside the square root, momentum 0.9; "rmsprop" in runs recorded '
                  'before Keras\' RMSprop took that name).')
flags.DEFINE_float('learning_rate', 1e-3, 'Peak learning rate.')
flags.DEFINE_enum('schedule', 'cosine', list(train_lib.SCHEDULES),
                  'Learning-rate schedule (after the warmup); "plateau": constant, '
                  'multiplied by --plateau_factor when --monitor stops improving (Keras '
                  'ReduceLROnPlateau).')
flags.DEFINE_float('warmup_epochs', 0.0, 'Linear warmup length in epochs.')
flags.DEFINE_float('decay_rate', 0.94, 'Exponential schedule: factor per decay period.')
flags.DEFINE_float('decay_epochs', 2.0, 'Exponential schedule: period in epochs.')
flags.DEFINE_float('plateau_factor', 0.1, 'Plateau schedule: factor of each reduction.')
flags.DEFINE_integer('plateau_patience', 10, 'Plateau schedule: evaluations without '
                     'improvement before a reduction.')
flags.DEFINE_integer('plateau_cooldown', 0, 'Plateau schedule: evaluations after a '
                     'reduction before counting again.')
flags.DEFINE_float('plateau_min_delta', 1e-4, 'Plateau schedule: smallest change of '
                   '--monitor that counts as an improvement (Keras 1e-4).')
flags.DEFINE_float('min_learning_rate', 0.0, 'Plateau schedule: the rate never goes '
                   'below it.')
flags.DEFINE_float('momentum', None, 'SGD / RMSProp momentum (default: sgd 0.9, rmsprop '
                   '0, rmsprop_tf 0.9).')
flags.DEFINE_float('weight_decay', 0.0, 'Weight decay (decoupled for Adam).')
flags.DEFINE_float('grad_clip', 0.0, 'Global-norm gradient clipping (0: off).')
flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing.')
flags.DEFINE_float('aux_loss_weight', None, 'Weight of each auxiliary loss (default: the '
                   'architecture table\'s: 0.3 for GoogLeNet\'s heads, 0.4 for AuxLogits).')
flags.DEFINE_string('class_weight', 'none', '"none"; "balanced" (Keras/scikit-learn: '
                    'n_images / (n_classes * images of the class), from the training '
                    'split); or CLASS=W,... by class name or index (others 1).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
# --- model selection (Keras EarlyStopping)
flags.DEFINE_enum('monitor', 'val_top1', ['val_top1', 'val_accuracy', 'val_loss'],
                  'The validation metric that picks the best model (best.safetensors, '
                  'the kept best checkpoint; a tie keeps the first) and drives --early_stopping_patience and --schedule=plateau '
                  '(val_accuracy = val_top1).')
flags.DEFINE_integer('early_stopping_patience', 0, 'Stop when --monitor has not improved '
                     'for this many evaluations (0: never).')
flags.DEFINE_float('min_delta', 0.0, 'Early stopping: smallest change of --monitor that '
                   'counts as an improvement.')
flags.DEFINE_bool('restore_best', None, 'Report on (evaluate, summarise, record) the best '
                  'model by --monitor instead of the last one. Default: when early '
                  'stopping fires.')
# --- transfer
flags.DEFINE_string('freeze', 'none', '"none", "backbone" (train only the classifier) or '
                    'an endpoint name (it and everything before it are frozen).')
flags.DEFINE_float('backbone_lr_mult', 1.0, 'Learning-rate factor of the backbone.')
flags.DEFINE_bool('freeze_bn', False, 'BatchNorm uses and keeps its running statistics.')
# --- run
flags.DEFINE_string('runs_dir', 'runs', 'Parent of the run directories '
                    '(<arch>-<dataset>-<YYYYmmdd-HHMMSS>).')
flags.DEFINE_string('workdir', None, 'This run\'s directory. A new path starts a run '
                    'there; an existing run directory is resumed (its model, data and '
                    'schedule flags must be unchanged). Default: a new directory in '
                    '--runs_dir.')
flags.DEFINE_bool('resume', False, 'Resume the newest run of this --arch and --dataset in '
                  '--runs_dir (or the run in --workdir).')
flags.DEFINE_integer('seed', 0, 'Seed of initialisation, data order and augmentation.')
flags.DEFINE_string('compilation_cache_dir', None, 'Persistent XLA compilation cache, '
                    'shared by runs (a rerun skips most of the compile time); default: '
                    '$INCEPTION_JAX_CACHE/xla or ~/.cache/inception_jax/xla; "none" turns '
                    'it off.')
flags.DEFINE_integer('eval_every', 0, 'Evaluate every N steps (0: every epoch) and at '
                     'the end.')
flags.DEFINE_integer('checkpoint_every', 0, 'Checkpoint every N steps (0: every epoch), '
                     'at the end and at each new best evaluation.')
flags.DEFINE_integer('keep_checkpoints', 3, 'Recent checkpoints kept (plus the best).')
flags.DEFINE_float('measure_pipeline_seconds', 2.0, 'Time the input pipeline alone '
                   'for this long before training (0: skip).')
# --- multi-host
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-host).')

COMMAND = 'python -m experiments.finetune'


class RunError(ValueError):
  """Stops a run with a message (bad setup before compile, or a NaN loss)."""


def _flag_values() -> dict[str, Any]:
  names = [f.name for f in FLAGS.get_key_flags_for_module(sys.modules[__name__])]
  return {n: FLAGS[n].value for n in names}


def _flag_defaults() -> dict[str, Any]:
  names = [f.name for f in FLAGS.get_key_flags_for_module(sys.modules[__name__])]
  return {n: FLAGS[n].default for n in names}


# ------------------------------------------------------------------------- checks


@dataclasses.dataclass
class Plan:
  """What the flags ask for, checked before TensorFlow, data scanning or compiling."""
  name: str                       # create_model name (arch or arch.tag)
  arch: str                       # registered architecture
  path: str | None                # weight file / run to start from
  pcfg: Any                       # PretrainedCfg of the starting weights, or None
  start_prep: Any                 # Preprocessing of a run we start from, or None
  pretrained_name: str | None     # what the run starts from, for records
  min_size: int                   # smallest input (with aux heads when trained)
  image_size: int
  run_dir: str | None             # None: a new directory, named once JAX is up
  resume: bool
  hparams: dict[str, Any]         # flags that produced the model (flags.json)


def _pretrained(arch: str, pretrained: str | None):
  """(create_model name, path, PretrainedCfg, classifier config) of --arch/--pretrained."""
  from inception_jax import inference  # pylint: disable=g-import-not-at-top
  from inception_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  if not pretrained and '.' not in arch:
    return arch, None, None, None
  if not pretrained:
    return arch, None, pretrained_lib.get_pretrained_cfg(arch), None
  path = os.path.expanduser(pretrained)
  if os.path.isdir(path) or (os.path.isfile(path) and inference.is_classifier(path)):
    file = os.path.join(path, inference.RUN_FILE) if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise RunError(f'--pretrained={pretrained}: no {inference.RUN_FILE} in it (not a '
                     'finished run of experiments.finetune?)')
    config = inference.read_config(file)
    return arch.partition('.')[0], path, None, config
  if os.path.exists(path):
    config = inference.read_config(path)
    name = f"{config.get('arch')}.{config.get('tag')}"
    return arch.partition('.')[0], path, pretrained_lib.get_pretrained_cfg(name), None
  if os.sep in pretrained or pretrained.endswith('.safetensors'):
    raise RunError(f'--pretrained={pretrained}: no such file or run directory')
  name = pretrained if '.' in pretrained else f"{arch.partition('.')[0]}.{pretrained}"
  return name, None, pretrained_lib.get_pretrained_cfg(name), None


def _check_number(name: str, ok: bool, want: str) -> None:
  if not ok:
    raise RunError(f'--{name}={FLAGS[name].value} is invalid: {want}')


def check_flags() -> Plan:
  """Validates every flag and decides the run directory; no TensorFlow, no data."""
  _check_number('batch_size', FLAGS.batch_size >= 1, 'use a positive batch size')
  if FLAGS.steps is None:
    _check_number('epochs', FLAGS.epochs >= 1, 'train at least one epoch')
  else:
    _check_number('steps', FLAGS.steps >= 1, 'train at least one step')
  _check_number('validation_split', 0.0 <= FLAGS.validation_split < 1.0,
                'a fraction in [0, 1)')
  _check_number('learning_rate', FLAGS.learning_rate >= 0, 'use a rate >= 0')
  _check_number('warmup_epochs', FLAGS.warmup_epochs >= 0, 'use a length >= 0')
  _check_number('zoom_range', 0.0 <= FLAGS.zoom_range < 1.0, 'factors are 1 -/+ z, z < 1')
  _check_bn_momentum()
  _check_optimizer_flags()
  parse_class_weight(FLAGS.class_weight)
  spec = FLAGS.dataset
  kind, sep, arg = spec.partition(':')
  if not (spec == 'digits' or (sep and kind in ('folder', 'tfds') and arg)):
    raise RunError(f'--dataset={spec!r}: use "digits", "folder:PATH" (one sub-folder of '
                   'images per class) or "tfds:NAME"')
  layout = {}
  if kind == 'folder':
    layout = folders.resolve_folder_layout(arg)  # raises DataError on a wrong layout
  has_val = _validation_planned(kind, layout)
  if has_val is False and _needs_validation():
    raise RunError(f'{_needs_validation()} needs validation data, and {spec} has none '
                   f'with --validation_split={FLAGS.validation_split}: hold out part of '
                   'the training images (--validation_split=0.2), give '
                   '--validation_dataset=DIR, or drop it')
  for name in ('validation_dataset', 'test_dataset'):
    if FLAGS[name].value:
      folders.resolve_class_folder(FLAGS[name].value, f'--{name}')

  try:
    name, path, pcfg, cconfig = _pretrained(FLAGS.arch, FLAGS.pretrained)
    arch = name.partition('.')[0]
    aspec = inception_jax.get_arch(arch)
  except ValueError as e:
    raise RunError(str(e)) from None
  if cconfig is not None and cconfig['arch'] != arch:
    raise RunError(f'--pretrained={FLAGS.pretrained} holds a {cconfig["arch"]} model, '
                   f'not --arch={FLAGS.arch}; use --arch={cconfig["arch"]}')
  if FLAGS.aux_logits and not aspec.aux_heads:
    raise RunError(f'{arch} has no auxiliary classifier; drop --aux_logits')
  options = {}
  if pcfg is not None:
    options.update(dict(pcfg.options))
  if cconfig is not None:
    options.update(cconfig['options'])
  padding = inception_jax.ModelConfig.for_arch(aspec, **options).padding
  min_size = aspec.min_input_size(padding, aux=FLAGS.aux_logits)
  start_prep = (prep_lib.Preprocessing.from_dict(cconfig['preprocessing'])
                if cconfig is not None else None)
  if FLAGS.image_size is not None:
    size = FLAGS.image_size
  elif pcfg is not None:
    size = int(np.ravel(pcfg.input_size)[-1])
  elif start_prep is not None:
    size = start_prep.image_size
  elif FLAGS.dataset == 'digits':
    size = min_size
  else:
    size = aspec.default_size
  if size < min_size:
    raise RunError(f'--image_size={size} is below the minimum input of {arch}'
                   f'{" with --aux_logits" if FLAGS.aux_logits else ""} ({min_size}); '
                   f'use --image_size={min_size} or more')
  pretrained_name = (f'{pcfg.arch}.{pcfg.tag}' if pcfg is not None else
                     (os.path.abspath(path) if cconfig is not None else None))

  hparams = {k: v for k, v in _flag_values().items() if k not in runs_lib.PLUMBING}
  run_dir, resume = _resolve_run_dir(hparams)
  return Plan(name, arch, path, pcfg, start_prep, pretrained_name, min_size, size,
              run_dir, resume, hparams)


def _needs_validation() -> str | None:
  """The flag that needs a validation split, or None."""
  if FLAGS.schedule == 'plateau':
    return '--schedule=plateau'
  if FLAGS.early_stopping_patience:
    return f'--early_stopping_patience={FLAGS.early_stopping_patience}'
  if FLAGS.restore_best:
    return '--restore_best'
  return None


def _validation_planned(kind: str, layout: dict) -> bool | None:
  """Whether the run will have a validation split (None: known once TFDS is read)."""
  if FLAGS.validation_dataset or FLAGS.validation_split > 0:
    return True
  if kind == 'folder':
    return 'validation' in layout
  if kind == 'tfds':
    return None
  return False


def _check_optimizer_flags() -> None:
  """Ranges of the optimizer, plateau and early-stopping flags; flags that do nothing."""
  if FLAGS.momentum is not None:
    _check_number('momentum', 0.0 <= FLAGS.momentum < 1.0, 'use a value in [0, 1)')
  _check_number('plateau_factor', 0.0 < FLAGS.plateau_factor < 1.0,
                'a reduction factor in (0, 1), e.g. 0.1 or 0.5')
  for name in ('plateau_patience', 'plateau_cooldown', 'early_stopping_patience'):
    _check_number(name, FLAGS[name].value >= 0, 'a number of evaluations >= 0')
  for name in ('plateau_min_delta', 'min_delta', 'min_learning_rate'):
    _check_number(name, FLAGS[name].value >= 0, 'use a value >= 0')
  if FLAGS.schedule == 'plateau' and FLAGS.min_learning_rate >= FLAGS.learning_rate > 0:
    raise RunError(f'--min_learning_rate={FLAGS.min_learning_rate} is not below '
                   f'--learning_rate={FLAGS.learning_rate}: the plateau schedule could '
                   'never reduce it; lower --min_learning_rate')
  unused = []
  if FLAGS.momentum is not None and FLAGS.optimizer == 'adam':
    unused.append(('momentum', 'adam has no momentum flag (its betas are 0.9, 0.999)'))
  if FLAGS.schedule != 'plateau':
    unused += [(n, 'it applies to --schedule=plateau')
               for n in ('plateau_factor', 'plateau_patience', 'plateau_cooldown',
                         'plateau_min_delta', 'min_learning_rate')
               if FLAGS[n].value != FLAGS[n].default]
  if not FLAGS.early_stopping_patience and FLAGS.min_delta != FLAGS['min_delta'].default:
    unused.append(('min_delta', 'it applies to --early_stopping_patience'))
  for name, why in unused:
    logging.warning('--%s=%s has no effect: %s.', name, FLAGS[name].value, why)


def parse_class_weight(text: str):
  """'none' -> None; 'balanced'; 'A=2,B=0.5' -> [('A', 2.0), ('B', 0.5)]."""
  text = (text or 'none').strip()
  if text.lower() in ('none', 'balanced'):
    return None if text.lower() == 'none' else 'balanced'
  pairs = []
  for item in text.split(','):
    name, eq, value = item.strip().rpartition('=')
    try:
      w = float(value)
    except ValueError:
      w = None
    if not eq or not name or w is None or not math.isfinite(w) or w < 0:
      raise RunError(f'--class_weight={text!r}: use "none", "balanced" or CLASS=WEIGHT,... '
                     '(class names or indices, weights >= 0), e.g. --class_weight=cat=2,dog=1')
    pairs.append((name.strip(), w))
  return pairs


def class_weights_of(text: str, dataset) -> tuple[tuple[float, ...] | None, str]:
  """(per-class weights or None, how they were chosen) for --class_weight."""
  parsed = parse_class_weight(text)
  names = list(dataset.class_names)
  if parsed is None:
    return None, 'none'
  if parsed == 'balanced':
    counts = dataset.train.class_counts(len(names))
    if counts is None:
      raise RunError(f'--class_weight=balanced needs the class of every training image, '
                     f'which {dataset.name} does not list; give the weights: '
                     '--class_weight=CLASS=W,...')
    if (counts == 0).any():
      empty = [n for n, c in zip(names, counts) if c == 0]
      raise RunError(f'--class_weight=balanced: no training image of {empty}')
    weights = train_lib.balanced_class_weights(counts)
    return weights, 'balanced: n / (n_classes * count), training counts ' + ', '.join(
        f'{n} {int(c)}' for n, c in zip(names, counts))
  weights = [1.0] * len(names)
  for key, w in parsed:
    if key in names:
      i = names.index(key)
    elif key.isdigit() and int(key) < len(names):
      i = int(key)
    else:
      raise RunError(f'--class_weight: no class {key!r} in {dataset.name}; its classes: '
                     f'{", ".join(names)}')
    weights[i] = w
  if not any(weights):
    raise RunError('--class_weight gives every class weight 0')
  return tuple(weights), f'given ({text})'


def _check_bn_momentum() -> None:
  if FLAGS.bn_momentum == 'auto':
    return
  try:
    m = float(FLAGS.bn_momentum)
  except ValueError:
    raise RunError(f'--bn_momentum must be "auto" or a number in (0, 1), got '
                   f'{FLAGS.bn_momentum!r}') from None
  if not 0.0 < m < 1.0:
    raise RunError(f'--bn_momentum must be in (0, 1), got {m}')


def _resolve_run_dir(hparams: dict[str, Any]) -> tuple[str | None, bool]:
  """(run directory or None for a new one, resume?); refuses changed settings."""
  runs_dir = os.path.abspath(os.path.expanduser(FLAGS.runs_dir))
  if FLAGS.workdir:
    run_dir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
    if runs_lib.is_run_dir(run_dir):
      resume = True
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
      raise RunError(f'--workdir={FLAGS.workdir} exists and is not a run directory (no '
                     f'{runs_lib.FLAGS_JSON}); give a new or empty directory, or drop '
                     '--workdir for a new run in --runs_dir')
    elif FLAGS.resume:
      raise RunError(f'--resume: {run_dir} holds no run to resume')
    else:
      return run_dir, False
  elif FLAGS.resume:
    run_dir = runs_lib.latest_run(runs_dir, FLAGS.arch, FLAGS.dataset)
    if run_dir is None:
      raise RunError(f'--resume: no run of --arch={FLAGS.arch} --dataset={FLAGS.dataset} '
                     f'in {runs_dir}; give --workdir=RUN_DIR, or drop --resume')
    resume = True
  else:
    return None, False
  old = runs_lib.read_json(os.path.join(run_dir, runs_lib.FLAGS_JSON))
  old, renamed = upgrade_recorded_flags(old)
  defaults = _flag_defaults()
  diff = runs_lib.flag_diff(effective_flags(old, defaults), effective_flags(hparams, defaults),
                            defaults)
  flagfile = os.path.join(run_dir, runs_lib.FLAGS_TXT)
  if renamed and any(name == 'optimizer' for name, _, _ in diff):
    raise RunError(
        f'{run_dir} was trained with --optimizer=rmsprop before that name meant Keras\' '
        'RMSprop: its optimizer is the Inception papers\' TF RMSProp (decay 0.9, '
        'epsilon 1.0 inside the square root, momentum 0.9), now called rmsprop_tf. '
        'Resuming with another optimizer would change the run half way. Differences:\n'
        f'{runs_lib.format_diff(diff)}\nResume it with --optimizer=rmsprop_tf, e.g. '
        f'--flagfile={flagfile} --optimizer=rmsprop_tf --workdir={run_dir}')
  if diff:
    fix = f'--flagfile={flagfile} --workdir={run_dir}'
    if renamed:
      fix = f'--flagfile={flagfile} --optimizer=rmsprop_tf --workdir={run_dir}'
    raise RunError(
        f'{run_dir} was trained with other settings; resuming would mix them into its '
        f'model and records. Differences:\n{runs_lib.format_diff(diff)}\n'
        'Start a new run instead (drop --workdir/--resume), or resume with the run\'s '
        f'flags: {fix}')
  return run_dir, resume


# Flags that runs recorded before the rmsprop rename lack: their flags.json is read
# with the meanings of that time (optimizer 'rmsprop' was the TF RMSProp).
_FLAGS_SINCE_RMSPROP_RENAME = ('monitor', 'early_stopping_patience', 'class_weight')


def upgrade_recorded_flags(old: dict[str, Any]) -> tuple[dict[str, Any], bool]:
  """A recorded flags.json in today's meanings; True if 'rmsprop' became 'rmsprop_tf'."""
  if any(k in old for k in _FLAGS_SINCE_RMSPROP_RENAME) or old.get('optimizer') != 'rmsprop':
    return old, False
  return dict(old, optimizer='rmsprop_tf'), True


def effective_flags(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """Flags as the run uses them, for the resume comparison: the momentum resolved
  for the optimizer (none for Adam) and val_accuracy read as val_top1."""
  out = dict(values)
  optimizer = out.get('optimizer', defaults.get('optimizer'))
  momentum = out.get('momentum', defaults.get('momentum'))
  if optimizer == 'adam':
    out['momentum'] = None
  elif momentum is None:
    out['momentum'] = train_lib.DEFAULT_MOMENTUM.get(optimizer)
  if out.get('monitor') == 'val_accuracy':
    out['monitor'] = 'val_top1'
  return out


def _bn_momentum(arch: str, total_steps: int) -> float:
  """--bn_momentum, resolving 'auto'.

  An exponential moving average with momentum m keeps m**n of its initial value
  after n updates: 0.99 (the Inception default) still holds 64% of the
  initialisation after 44 steps (one epoch of the digits at batch 32), which makes
  a short run's validation accuracy meaningless. 'auto' keeps the architecture's
  momentum when the run is long enough (>= 1000 steps at 0.99) and otherwise uses
  1 - 10 / steps, i.e. an average over the last tenth of the run (0.9 at least).
  """
  _check_bn_momentum()
  if FLAGS.bn_momentum != 'auto':
    return float(FLAGS.bn_momentum)
  default = inception_jax.ModelConfig.for_arch(inception_jax.get_arch(arch)).bn_momentum
  return float(min(default, max(0.9, 1.0 - 10.0 / total_steps)))


@dataclasses.dataclass
class Setup:
  """Everything decided before compiling: data, model, preprocessing, schedule."""
  dataset: Any
  model: Any
  prep: prep_lib.Preprocessing
  aug: Any
  cfg: train_lib.TrainConfig
  steps_per_epoch: int
  total_steps: int
  pretrained_name: str | None
  bn_momentum: float
  class_weight_desc: str


def prepare(plan: Plan) -> Setup:
  """Loads the dataset and builds the model (no compilation)."""
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  n_dev = jax.device_count()
  if FLAGS.batch_size % n_dev:
    raise RunError(f'--batch_size={FLAGS.batch_size} is not divisible by the {n_dev} '
                   f'devices; use a multiple of {n_dev} (e.g. '
                   f'{max(n_dev, FLAGS.batch_size // n_dev * n_dev)})')
  aug = data_lib.Augmentation(
      horizontal_flip=FLAGS.horizontal_flip, vertical_flip=FLAGS.vertical_flip,
      rotation_range=FLAGS.rotation_range, width_shift_range=FLAGS.width_shift_range,
      height_shift_range=FLAGS.height_shift_range, shear_range=FLAGS.shear_range,
      zoom_range=FLAGS.zoom_range, fill_mode=FLAGS.fill_mode, cval=FLAGS.cval,
      random_resized_crop=FLAGS.random_resized_crop)

  dataset = data_lib.load_dataset(
      FLAGS.dataset, validation_split=FLAGS.validation_split, data_dir=FLAGS.data_dir,
      cache_dir=FLAGS.cache_dir, validation_dataset=FLAGS.validation_dataset,
      test_dataset=FLAGS.test_dataset)
  if dataset.val is None and _needs_validation():
    raise RunError(f'{_needs_validation()} needs validation data, and {dataset.name} has '
                   'no validation split: set --validation_split (e.g. 0.2) or '
                   '--validation_dataset=DIR, or drop it')
  class_weights, class_weight_desc = class_weights_of(FLAGS.class_weight, dataset)
  steps_per_epoch = dataset.train.num_examples // FLAGS.batch_size
  if steps_per_epoch < 1:
    raise RunError(f'{dataset.name} has {dataset.train.num_examples} training images, '
                   f'fewer than one batch of {FLAGS.batch_size}; lower --batch_size')

  total = FLAGS.steps or FLAGS.epochs * steps_per_epoch
  options = dict(pooling=FLAGS.pooling, aux_logits=FLAGS.aux_logits,
                 bn_momentum=_bn_momentum(plan.arch, total))
  if FLAGS.dropout_rate is not None:
    options['dropout_rate'] = FLAGS.dropout_rate
  rngs = nnx.Rngs(FLAGS.seed)
  if plan.pcfg is None and plan.path is None:
    model = inception_jax.create_model(plan.name, num_classes=dataset.num_classes,
                                       rngs=rngs, **options)
    logging.warning('No --pretrained weights: training %s from scratch (random '
                    'initialisation, inputs scaled to [-1, 1]).', plan.name)
  else:
    model = inception_jax.create_model(plan.name, pretrained=plan.path,
                                       num_classes=dataset.num_classes, rngs=rngs,
                                       **options)
    logging.info('Fine-tuning from %s', plan.pretrained_name)

  size = plan.image_size
  if plan.pcfg is not None:
    prep = prep_lib.Preprocessing(size, mean=tuple(plan.pcfg.mean), std=tuple(plan.pcfg.std),
                                  crop_pct=plan.pcfg.crop_pct,
                                  interpolation=plan.pcfg.interpolation,
                                  crop_mode=FLAGS.crop_mode)
  elif plan.start_prep is not None:
    prep = dataclasses.replace(plan.start_prep, image_size=size, crop_mode=FLAGS.crop_mode)
  else:
    prep = prep_lib.Preprocessing(size, crop_mode=FLAGS.crop_mode)

  cfg = train_lib.TrainConfig(
      optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
      schedule=FLAGS.schedule, warmup_steps=int(round(FLAGS.warmup_epochs * steps_per_epoch)),
      total_steps=total, decay_rate=FLAGS.decay_rate,
      decay_steps=max(1, int(round(FLAGS.decay_epochs * steps_per_epoch))),
      momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay, grad_clip=FLAGS.grad_clip,
      label_smoothing=FLAGS.label_smoothing, aux_loss_weight=FLAGS.aux_loss_weight,
      class_weights=class_weights, freeze=FLAGS.freeze,
      backbone_lr_mult=FLAGS.backbone_lr_mult, freeze_bn=FLAGS.freeze_bn,
      dtype=FLAGS.dtype)
  try:
    cfg.validate()
  except ValueError as e:
    raise RunError(str(e)) from None
  return Setup(dataset, model, prep, aug, cfg, steps_per_epoch, total,
               plan.pretrained_name, options['bn_momentum'], class_weight_desc)


# --------------------------------------------------------------------------- progress


class Progress:
  """tqdm bar on a terminal; plain periodic log lines otherwise (CI, files, pipes).

  Reports images/s over the recent window (compilation excluded) and the ETA.
  """

  def __init__(self, total_steps: int, start_step: int, batch_size: int, enabled: bool):
    self.total, self.batch = total_steps, batch_size
    self.enabled = enabled
    tty = sys.stderr.isatty() and not os.environ.get('CI')
    self.bar = None
    if enabled and tty:
      import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                           dynamic_ncols=True, smoothing=0.1)
    self.every = max(1, total_steps // 20)
    self.t_last, self.s_last = None, start_step
    self.rate = None

  def update(self, step: int, metrics: dict[str, float], epoch: int, epochs: int) -> None:
    """``step`` steps are done."""
    now = time.perf_counter()
    if self.t_last is None:  # first step: compilation; start timing after it
      self.t_last, self.s_last = now, step
    elif step - self.s_last >= 1 and (self.bar is not None or step % self.every == 0
                                      or step == self.total or now - self.t_last > 60):
      inst = (step - self.s_last) * self.batch / (now - self.t_last)
      self.rate = inst if self.rate is None else 0.7 * self.rate + 0.3 * inst
      self.t_last, self.s_last = now, step
      if self.bar is None and self.enabled:
        eta = (self.total - step) * self.batch / self.rate
        logging.info('step %d/%d (%.0f%%) epoch %d/%d loss %.4f acc %.3f lr %.2e | '
                     '%.1f img/s | ETA %s', step, self.total, 100 * step / self.total,
                     epoch, epochs, metrics['loss'], metrics['accuracy'], metrics['lr'],
                     self.rate, _hms(eta))
    if self.bar is not None:
      self.bar.n = step
      post = dict(ep=f'{epoch}/{epochs}', loss=f"{metrics['loss']:.4f}",
                  acc=f"{metrics['accuracy']:.3f}")
      if self.rate:
        post['img/s'] = f'{self.rate:.1f}'
      self.bar.set_postfix(post, refresh=True)

  def write(self, msg: str) -> None:
    if self.bar is not None:
      self.bar.write(msg)
    elif self.enabled:
      logging.info('%s', msg)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _hms(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


# ------------------------------------------------------------------------------- main


def _fetch(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _host(x):
  """A replicated global array as numpy on this host (any process count)."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return x
    return np.asarray(x.addressable_data(0))
  return x


def evaluate(eval_step, state, mesh, pipe, num_classes: int
             ) -> tuple[dict[str, float], np.ndarray]:
  """Validation loss/top-1/top-5 and the confusion matrix (rows: true class)."""
  sums = dict(loss_sum=0.0, top1_correct=0.0, top5_correct=0.0, count=0.0)
  cm = np.zeros((num_classes, num_classes), np.int64)
  for b in pipe.eval_batches():
    images, labels, mask = train_lib.shard_batch(mesh, b.images, b.labels, b.mask)
    out = eval_step(state, images, labels, mask)
    for k in sums:
      sums[k] += float(out[k])
    logits, y, m = _fetch(out['logits']), _fetch(labels), _fetch(mask)
    pred = logits.argmax(-1)
    keep = m > 0
    np.add.at(cm, (y[keep], pred[keep]), 1)
  n = max(sums['count'], 1.0)
  return dict(val_loss=sums['loss_sum'] / n, val_top1=sums['top1_correct'] / n,
              val_top5=sums['top5_correct'] / n), cm


def _model_of(graphdef, state):
  """The trained network on the host (eval mode), from a replicated train state."""
  params, batch_stats = jax.tree.map(_host, (state.params, state.batch_stats))
  model = nnx.merge(graphdef, params, batch_stats, state.rng_state)
  model.eval()
  return model


def _new_run_dir(plan: Plan) -> str:
  when = time.time()
  if jax.process_count() > 1:  # every process must pick the same name
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    when = float(multihost_utils.broadcast_one_to_all(np.float64(when)))
  name = runs_lib.new_run_name(plan.arch, FLAGS.dataset, when)
  parent = os.path.abspath(os.path.expanduser(FLAGS.runs_dir))
  if jax.process_count() > 1:
    return os.path.join(parent, name)
  return runs_lib.unique_dir(parent, name)


def run() -> dict[str, Any]:
  """One training run as configured by the flags; returns the final facts."""
  plan = check_flags()
  cache = FLAGS.compilation_cache_dir
  if cache != 'none':
    cache = os.path.expanduser(cache or os.path.join(inception_jax.pretrained.cache_dir(), 'xla'))
    jax.config.update('jax_compilation_cache_dir', cache)
    # Only programs that took a while to compile: the train and eval steps.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  train_lib.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                         FLAGS.process_id)
  pid, nproc = jax.process_index(), jax.process_count()
  lead = pid == 0
  s = prepare(plan)
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments import outputs  # pylint: disable=g-import-not-at-top
  from inception_jax import callbacks  # pylint: disable=g-import-not-at-top
  from inception_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from inception_jax import inference  # pylint: disable=g-import-not-at-top
  from inception_jax import weights as weights_lib  # pylint: disable=g-import-not-at-top
  ds, cfg = s.dataset, s.cfg
  workdir = plan.run_dir or _new_run_dir(plan)
  os.makedirs(os.path.join(workdir, 'plots'), exist_ok=True)
  if lead and not plan.resume:
    runs_lib.write_flags(workdir, plan.hparams, COMMAND)
  record = runs_lib.RunRecord(workdir) if lead else None
  G = FLAGS.batch_size
  epochs = math.ceil(s.total_steps / s.steps_per_epoch)
  logging.info('Run directory: %s%s', workdir, ' (resuming)' if plan.resume else '')
  logging.info('%s: %d classes, %d train / %s validation / %s test images; %dx%d input '
               '(%s), batch %d (%d devices, %d processes), %d steps (%d per epoch, %d '
               'epochs), BatchNorm momentum %g', ds.name, ds.num_classes,
               ds.train.num_examples, ds.val.num_examples if ds.val else 'no',
               ds.test.num_examples if ds.test else 'no', s.prep.image_size,
               s.prep.image_size, s.prep.crop_mode, G, jax.device_count(), nproc,
               s.total_steps, s.steps_per_epoch, epochs, s.bn_momentum)

  train_pipe = data_lib.Pipeline(ds.train, s.prep, s.aug, global_batch_size=G,
                                 seed=FLAGS.seed, process_index=pid, process_count=nproc)
  val_pipe = (data_lib.Pipeline(ds.val, s.prep, global_batch_size=G, process_index=pid,
                                process_count=nproc) if ds.val else None)

  pipeline_ips = None
  if FLAGS.measure_pipeline_seconds > 0:
    it = train_pipe.train_batches(0)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < FLAGS.measure_pipeline_seconds:
      n += len(next(it)[1].labels)
    it.close()
    pipeline_ips = n / (time.perf_counter() - t0) / data_lib.cpu_cores()
    logging.info('Input pipeline alone: %.1f images/s per CPU core at %dx%d '
                 '(%d cores, %.0f images/s in all, per process)', pipeline_ips,
                 s.prep.image_size, s.prep.image_size, data_lib.cpu_cores(),
                 pipeline_ips * data_lib.cpu_cores())

  num_params = weights_lib.num_weights(s.model)
  model_desc = dict(arch=plan.arch, num_classes=ds.num_classes,
                    options=inference.model_options(s.model))
  mesh = train_lib.make_mesh()
  graphdef, state = train_lib.create_train_state(s.model, cfg, mesh)
  del s.model
  monitor = 'val_top1' if FLAGS.monitor == 'val_accuracy' else FLAGS.monitor
  mode = callbacks.monitor_mode(monitor)
  ckpt = checkpoint_lib.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                          keep=FLAGS.keep_checkpoints,
                                          best_metric=monitor, best_mode=mode)
  stopper = (callbacks.EarlyStopping(monitor, patience=FLAGS.early_stopping_patience,
                                     min_delta=FLAGS.min_delta)
             if FLAGS.early_stopping_patience else None)
  plateau = (callbacks.ReduceLROnPlateau(
      FLAGS.learning_rate, monitor, factor=FLAGS.plateau_factor,
      patience=FLAGS.plateau_patience, min_delta=FLAGS.plateau_min_delta,
      cooldown=FLAGS.plateau_cooldown, min_lr=FLAGS.min_learning_rate)
             if FLAGS.schedule == 'plateau' else None)
  start = 0
  evaluations = 0  # evaluations with validation metrics so far (the callbacks' epoch)
  latest = ckpt.latest_step()
  if latest is not None:
    meta = ckpt.metadata(latest)
    if meta.get('class_names') != ds.class_names:
      raise RunError(f'the dataset\'s classes changed since {workdir} was trained: '
                     f'run {meta.get("class_names")}, now {ds.class_names}. Start a new '
                     'run for the new classes')
    state, meta = ckpt.restore(latest, state)
    start = int(meta['step'])
    saved = meta.get('callbacks') or {}
    evaluations = int(saved.get('evaluations', 0))
    for name, cb in (('early_stopping', stopper), ('plateau', plateau)):
      if cb is not None and name in saved:
        cb.load_state_dict(saved[name])
      elif cb is not None:
        logging.warning('Checkpoint %d has no %s state: it starts afresh.', latest, name)
    if meta.get('steps_per_epoch') != s.steps_per_epoch:
      logging.warning('Resuming from a run with %s steps per epoch (now %d): the data '
                      'order differs from an uninterrupted run.',
                      meta.get('steps_per_epoch'), s.steps_per_epoch)
    logging.info('Resumed from checkpoint step %d (epoch %d) in %s', start,
                 start // s.steps_per_epoch, ckpt.directory)
  elif plan.resume:
    logging.info('No checkpoint in %s yet: the run starts from step 0', workdir)
  status = record.data.get('status') if lead else None
  if (lead and latest is not None and status in ('finished', 'stopped early')
      and (latest >= s.total_steps or status == 'stopped early')):
    ckpt.close()
    print(f'\n{workdir} is complete ({latest} steps, {status}); nothing to train. Its '
          f'report: {os.path.join(workdir, "summary.md")}; evaluate it with\n  python -m '
          f'experiments.evaluate --run={workdir}\n')
    return dict(facts={}, val=record.data.get('final'), best=record.data.get('best'),
                images_per_second=float('nan'), wall_seconds=0.0, steps=latest,
                workdir=workdir, complete=True)
  logger = outputs.MetricsLogger(workdir, start if latest is not None else None,
                                 tensorboard=lead)
  hparams = plan.hparams
  if lead:
    record.update(arch=plan.arch, pretrained=s.pretrained_name, dataset=ds.name,
                  layout=ds.layout, class_names=ds.class_names,
                  num_classes=ds.num_classes, train_images=ds.train.num_examples,
                  validation_images=ds.val.num_examples if ds.val else 0,
                  test_images=ds.test.num_examples if ds.test else 0,
                  params=num_params, image_size=s.prep.image_size,
                  preprocessing=s.prep.to_dict(), steps=s.total_steps,
                  steps_per_epoch=s.steps_per_epoch, batch_size=G,
                  optimizer=dict(name=cfg.optimizer, momentum=cfg.effective_momentum,
                                 rmsprop_eps=cfg.effective_rmsprop_eps),
                  monitor=monitor,
                  class_weights=(dict(zip(ds.class_names, cfg.class_weights))
                                 if cfg.class_weights else None))
    record.start_attempt(start, {k: v for k, v in _flag_values().items()
                                 if k in runs_lib.PLUMBING})

  train_step = train_lib.make_train_step(graphdef, cfg, mesh)
  eval_step = train_lib.make_eval_step(graphdef, mesh)

  metadata = dict(arch=FLAGS.arch, pretrained=s.pretrained_name,
                  num_classes=ds.num_classes, class_names=ds.class_names,
                  preprocessing=s.prep.to_dict(), flags=hparams, model=model_desc,
                  steps_per_epoch=s.steps_per_epoch, data_seed=FLAGS.seed)
  eval_every = FLAGS.eval_every or s.steps_per_epoch
  ckpt_every = FLAGS.checkpoint_every or s.steps_per_epoch
  inference_file = os.path.join(workdir, inference.RUN_FILE)

  def callback_state():
    out = dict(evaluations=evaluations)
    if stopper is not None:
      out['early_stopping'] = stopper.state_dict()
    if plateau is not None:
      out['plateau'] = plateau.state_dict()
    return out

  def save(step, val=None):
    epoch, in_epoch = divmod(step, s.steps_per_epoch)
    ckpt.save(step, state, dict(metadata, step=step, epoch=epoch, step_in_epoch=in_epoch,
                                callbacks=callback_state()),
              metrics=val)

  def save_inference(step, val, selected):
    if lead:
      inference.save_classifier(
          inference_file, _model_of(graphdef, state), ds.class_names, s.prep,
          step=step, epoch=round(step / s.steps_per_epoch, 3),
          metrics=val, selected=selected, pretrained=s.pretrained_name,
          dataset=ds.name, run=os.path.basename(workdir))

  def better(value, than: dict | None) -> bool:
    """The one rule for the best model (callbacks.is_better: a tie keeps the first),
    which the checkpoint manager keeps too."""
    return callbacks.is_better(value, None if than is None else than[monitor], mode)

  def scored(r):
    return isinstance(r.get(monitor), (int, float))

  def when(step) -> str:
    """Keras' 'Epoch 3' for an evaluation at an epoch's end, else the step."""
    if step % s.steps_per_epoch == 0:
      return f'Epoch {step // s.steps_per_epoch}'
    return f'Step {step} (epoch {step / s.steps_per_epoch:.2f})'

  # The best so far (a resumed run included) comes from the evaluations kept.
  best = None
  for r in logger.evals.rows:
    if scored(r) and better(r[monitor], best):
      best = r
  progress = Progress(s.total_steps, start, G, enabled=lead)
  cm, last_val = None, None
  since = dict(loss=0.0, accuracy=0.0, n=0)
  t_train, n_images, t_first = None, 0, None
  t_line, steps_line = time.perf_counter(), 0
  data_wait = 0.0
  last_saved = latest
  step = start
  stopped_at = None
  if stopper is not None and stopper.stopped_epoch is not None:
    stopped_at = start  # killed after early stopping fired, before the reports
  try:
    batches = train_pipe.train_batches(start, s.total_steps)
    while step < s.total_steps and stopped_at is None:
      t0 = time.perf_counter()
      try:
        _, batch = next(batches)
      except StopIteration:
        break
      data_wait += time.perf_counter() - t0 if t_train is not None else 0.0
      images, labels = train_lib.shard_batch(mesh, batch.images, batch.labels)
      state, m = train_step(state, images, labels)
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      step += 1
      steps_line += 1
      if t_train is None:
        t_first = time.perf_counter() - t0
        t_train = 0.0
        logging.info('First step (compilation included): %.1f s', t_first)
      else:
        t_train += time.perf_counter() - t0
        n_images += G
      if not m.pop('finite', 1.0) or not math.isfinite(m['loss']):
        raise RunError(
            f'loss is {m["loss"]} at step {step} (grad norm {m["grad_norm"]}): stopping '
            f'without saving. The last good checkpoint is '
            f'{"step " + str(last_saved) if last_saved is not None else "none"} in '
            f'{ckpt.directory}. Lower --learning_rate, set --grad_clip (e.g. 2.0) or add '
            '--warmup_epochs.')
      epoch = (step - 1) // s.steps_per_epoch + 1
      row = dict(step=step, epoch=epoch, **m)
      if lead:
        logger.log_step(row)
      since['loss'] += m['loss']
      since['accuracy'] += m['accuracy']
      since['n'] += 1
      progress.update(step, m, epoch, epochs)

      end = step == s.total_steps
      val, improved, stop = None, False, False
      if (step % eval_every == 0 or end) and val_pipe is not None:
        val, cm = evaluate(eval_step, state, mesh, val_pipe, ds.num_classes)
        last_val = val
      if step % eval_every == 0 or end:
        erow = dict(step=step, epoch=round(step / s.steps_per_epoch, 3),
                    train_loss=since['loss'] / max(since['n'], 1),
                    train_accuracy=since['accuracy'] / max(since['n'], 1),
                    lr=m.get('lr'), **(val or {}))
        since = dict(loss=0.0, accuracy=0.0, n=0)
        if lead:
          logger.log_eval(erow)
        now = time.perf_counter()
        label = when(step)
        if step % s.steps_per_epoch == 0:
          label = f'{label}/{epochs}'
        progress.write(epoch_line(label, now - t_line, steps_line, erow))
        t_line, steps_line = now, 0
        if val:
          value, label = val[monitor], when(step)
          notes = []
          if better(value, best):
            was = 'inf' if best is None and mode == 'min' else (
                '-inf' if best is None else _fmt(best[monitor]))
            notes.append(f'{monitor} improved from {was} to {_fmt(value)}, saving '
                         f'{inference.RUN_FILE}')
            best, improved = erow, True
            # Before the checkpoint: a kill between the two re-evaluates this step.
            save_inference(step, val, f'best {monitor} (step {step})')
          else:
            notes.append(f'{monitor} did not improve from {_fmt(best[monitor])} '
                         f'({_fmt(value)})')
          if stopper is not None:
            stop = stopper.update(value, evaluations)
            notes.append(f'early stopping patience {stopper.wait}/{stopper.patience}')
          if plateau is not None:
            new_lr = plateau.update(value, evaluations)
            if new_lr is not None:
              factor = new_lr / FLAGS.learning_rate
              state = train_lib.set_lr_factor(state, factor)
              notes.append(f'ReduceLROnPlateau reducing learning rate to {new_lr:g}')
            else:
              notes.append(f'plateau patience {plateau.wait}/{plateau.patience}'
                           + (f' (cooldown {plateau.cooldown_counter})'
                              if plateau.in_cooldown() else ''))
          evaluations += 1
          progress.write(f'{label}: ' + '; '.join(notes))
          if stop:
            stopped_at = step
            progress.write(
                f'{label}: early stopping: {monitor} has not improved by more than '
                f'{FLAGS.min_delta:g} for {stopper.wait} evaluations (best '
                f'{_fmt(best[monitor])} at {when(best["step"]).lower()})')
      # A new best is always checkpointed, so its full state (evaluate --checkpoint,
      # --restore_best) is on disk while it is the best.
      if step % ckpt_every == 0 or end or stop or improved:
        save(step, val)
        last_saved = step
      if stop:
        break
    if val_pipe is None:
      save_inference(step, None, f'last step {step} (no validation split)')
    elif cm is None and step > 0:
      # Resumed a finished run (or evaluation never fell on a step): score it once.
      last_val, cm = evaluate(eval_step, state, mesh, val_pipe, ds.num_classes)
      if not os.path.exists(inference_file):
        save_inference(step, last_val, f'last step {step}')
    logger.flush()

    # The model the reports describe: the last one, or the best (--restore_best,
    # and by default when early stopping fired).
    restore = FLAGS.restore_best if FLAGS.restore_best is not None else stopped_at is not None
    final_step, final_desc = step, f'the last step ({step})'
    if restore and best is not None and best['step'] != step:
      best_step = int(best['step'])
      if best_step not in ckpt.all_steps():
        # A run begun before every best was checkpointed: another checkpoint would
        # not be the model of best.safetensors and run.json's best.
        logging.warning('No checkpoint of the best evaluation (step %s) is kept: the '
                        'reports describe the last model; %s holds the best.',
                        best_step, inference.RUN_FILE)
      else:
        state, _ = ckpt.restore(best_step, state)
        last_val, cm = evaluate(eval_step, state, mesh, val_pipe, ds.num_classes)
        final_step = best_step
        final_desc = (f'the best by {monitor}, restored: {when(best_step).lower()} '
                      f'(step {best_step})')
        progress.write(f'Restoring the model of the best evaluation: {when(best_step)} '
                       f'({monitor} {_fmt(last_val[monitor])})')
    elif restore and best is not None:
      final_desc = f'the best by {monitor}: the last step ({step})'
  except BaseException as e:
    if lead:
      record.end_attempt(step, time.time() - _T_PROCESS, status='failed',
                         error=f'{type(e).__name__}: {e}')
    raise
  finally:
    progress.close()

  wall = time.time() - _T_PROCESS
  ips = n_images / t_train if t_train else float('nan')
  facts = {
      'run directory': workdir,
      'architecture': FLAGS.arch,
      'weights': s.pretrained_name or 'none (trained from scratch)',
      'parameters': f'{num_params:,}',
      'dataset': f'{ds.name} ({ds.num_classes} classes, {ds.train.num_examples} train / '
                 f'{ds.val.num_examples if ds.val else 0} validation / '
                 f'{ds.test.num_examples if ds.test else 0} test images)',
      'input': f'{s.prep.image_size}x{s.prep.image_size} ({s.prep.crop_mode}), mean '
               f'{s.prep.mean}, std {s.prep.std}, crop_pct {s.prep.crop_pct}, '
               f'{s.prep.interpolation}',
      'steps': f'{step} ({step / s.steps_per_epoch:.2f} epochs of {s.steps_per_epoch} '
               f'steps, batch {G})',
      'optimizer': _optimizer_desc(cfg),
      'class weights': s.class_weight_desc,
      'BatchNorm momentum': f'{s.bn_momentum:g} (--bn_momentum={FLAGS.bn_momentum})',
      'devices': f'{jax.device_count()} x {jax.devices()[0].platform} '
                 f'({nproc} process{"es" if nproc > 1 else ""})',
      'wall time': f'{wall:.1f} s (first step incl. compilation '
                   f'{t_first if t_first is not None else float("nan"):.1f} s)',
      'training images/s': f'{ips:.1f} (train steps after the first, input wait '
                           f'included: {data_wait:.1f} s)',
      'input pipeline images/s per core': (f'{pipeline_ips:.1f}' if pipeline_ips
                                           else 'not measured'),
  }
  if stopped_at is not None:
    facts['early stopping'] = (f'stopped at step {stopped_at} (epoch '
                               f'{stopped_at / s.steps_per_epoch:.2f} of {epochs}): '
                               f'{monitor} did not improve for '
                               f'{FLAGS.early_stopping_patience} evaluations')
  if plateau is not None:
    facts['learning rate at the end'] = f'{plateau.lr:g} (plateau schedule)'
  if ds.report:
    r = ds.report
    facts['bad files'] = (f"{r['skipped']} skipped, {r['converted']} converted of "
                          f"{r['files']} ({r['reasons']})")
  if last_val is not None:
    facts['model reported'] = final_desc
    facts['final validation top-1'] = f"{100 * last_val['val_top1']:.2f}%"
    facts['final validation top-5'] = f"{100 * last_val['val_top5']:.2f}%"
    facts['final validation loss'] = f"{last_val['val_loss']:.4f}"
  if best is not None:
    facts[f'best validation {_METRIC_NAMES[monitor]}'] = (
        f"{_fmt_metric(monitor, best[monitor])} (step {best['step']}, epoch "
        f"{best['epoch']}; {inference.RUN_FILE})")
    if monitor != 'val_top1':
      facts['validation top-1 of the best'] = f"{100 * best['val_top1']:.2f}%"
  facts['inference file'] = inference_file

  if lead:
    plots = os.path.join(workdir, 'plots')
    outputs.plot_curves(os.path.join(plots, 'curves.png'), logger.steps.rows,
                        logger.evals.rows, steps_per_epoch=s.steps_per_epoch,
                        best_step=best['step'] if best else None,
                        stopped_step=stopped_at, monitor=monitor)
    if cm is not None:
      outputs.plot_confusion(os.path.join(plots, 'confusion_matrix.png'), cm,
                             ds.class_names)
      err, counts = outputs.per_class_errors(cm)
      outputs.plot_per_class_error(os.path.join(plots, 'per_class_error.png'),
                                   np.nan_to_num(err), counts, ds.class_names)
    text = outputs.write_summary(
        os.path.join(workdir, 'summary.md'),
        title=f'Fine-tuning {FLAGS.arch} on {ds.name}', hparams=hparams, facts=facts,
        evals=logger.evals.rows, cm=cm, class_names=ds.class_names)
    keys = ('step', 'epoch', 'val_loss', 'val_top1', 'val_top5')
    record.end_attempt(
        step, wall, status='stopped early' if stopped_at is not None else 'finished',
        epochs_done=round(step / s.steps_per_epoch, 3),
        best={k: best[k] for k in keys} if best else None,
        final=dict(last_val, step=final_step,
                   epoch=round(final_step / s.steps_per_epoch, 3),
                   restored=final_step != step)
        if last_val else None,
        stopped_early=(dict(step=stopped_at, epoch=round(stopped_at / s.steps_per_epoch, 3),
                            monitor=monitor, patience=FLAGS.early_stopping_patience)
                       if stopped_at is not None else None),
        train_images_per_second=None if math.isnan(ips) else round(ips, 2),
        pipeline_images_per_second_per_core=pipeline_ips, first_step_seconds=t_first)
    print('\n' + text.split('## Hyperparameters')[0].rstrip() + '\n')
    print(f'Outputs in {workdir}')
  ckpt.close()
  return dict(facts=facts, val=last_val, best=best, images_per_second=ips,
              pipeline_images_per_second_per_core=pipeline_ips, wall_seconds=wall,
              steps=step, workdir=workdir, stopped_at=stopped_at, final_step=final_step)


_METRIC_NAMES = {'val_top1': 'top-1', 'val_loss': 'loss'}


def _fmt(v: float) -> str:
  """A metric as Keras' progress bar prints it."""
  return f'{v:.4f}' if abs(v) > 1e-3 or v == 0 else f'{v:.4e}'


def _fmt_metric(name: str, v: float) -> str:
  return f'{100 * v:.2f}%' if name != 'val_loss' else f'{v:.4f}'


def epoch_line(label: str, seconds: float, steps: int, row: dict[str, Any]) -> str:
  """``Epoch 3/10 - 41s 930ms/step - loss: 0.5120 - accuracy: 0.8300 - val_loss: ...``."""
  parts = [label, f'{seconds:.0f}s {1000 * seconds / max(steps, 1):.0f}ms/step',
           f"loss: {_fmt(row['train_loss'])}", f"accuracy: {_fmt(row['train_accuracy'])}"]
  if isinstance(row.get('val_loss'), (int, float)):
    parts += [f"val_loss: {_fmt(row['val_loss'])}",
              f"val_accuracy: {_fmt(row['val_top1'])}",
              f"val_top5: {_fmt(row['val_top5'])}"]
  if row.get('lr') is not None:
    parts.append(f"lr: {row['lr']:.4g}")
  return ' - '.join(parts)


def _optimizer_desc(cfg: train_lib.TrainConfig) -> str:
  out = f'{cfg.optimizer}, learning rate {cfg.learning_rate:g} ({cfg.schedule})'
  if cfg.effective_momentum is not None:
    out += f', momentum {cfg.effective_momentum:g}'
  if cfg.effective_rmsprop_eps is not None:
    out += f', rho {cfg.rmsprop_decay:g}, epsilon {cfg.effective_rmsprop_eps:g}'
  return out


class _QuietLibraries:
  """Drops INFO lines of orbax/JAX internals from the absl log (keeps warnings)."""

  def filter(self, record) -> bool:
    noisy = any(f'{os.sep}{lib}{os.sep}' in record.pathname
                for lib in ('orbax', 'jax', 'optax', 'flax'))
    return record.levelno >= 30 or not noisy  # 30: logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    run()
  except (RunError, folders.DataError, ValueError, FileNotFoundError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
