"""Trained classifiers as one file, and one call that loads a run, a file or a tag.

A fine-tuning run writes its best model as an *inference file*
(``RUN_DIR/best.safetensors``): the project weight format (``weights.py``) holding
only what prediction needs, i.e. parameters and BatchNorm statistics (no optimizer
state, no auxiliary heads), with a JSON config in the safetensors metadata::

  kind             'inception_jax.classifier'
  arch, num_classes, options   how to build the network (create_model arguments)
  class_names      label order of the classifier
  preprocessing    inception_jax.preprocessing.Preprocessing fields
  pretrained       the weights the run started from (or None)
  step, epoch, metrics, selected   which model this is and why it was kept

``load`` turns a run directory, such a file, a converted ImageNet weight file or a
pretrained tag into a ``Classifier`` (model + class names + preprocessing);
``create_model(pretrained=RUN_DIR_OR_FILE)`` builds the network alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from flax import nnx

from inception_jax import preprocessing as prep_lib
from inception_jax import weights as weights_lib

KIND = 'inception_jax.classifier'
FORMAT_VERSION = 1
RUN_FILE = 'best.safetensors'  # the inference file inside a run directory
# Heads used only in training; an inference file leaves them out.
_AUX_PREFIXES = ('AuxLogits/', 'aux1/', 'aux2/')
# Model options an inference file records (everything but the compute dtype).
_OPTION_KEYS = ('include_top', 'pooling', 'in_channels', 'dropout_rate', 'padding',
                'count_include_pad', 'batch_norm', 'bn_eps', 'bn_momentum', 'bn_scale',
                'conv_bias', 'scan_blocks')


class RunLoadError(ValueError):
  """A run, checkpoint or inference file cannot be loaded (the message says why)."""


def model_options(model) -> dict[str, Any]:
  """The options that rebuild ``model``'s network with ``create_model`` (no aux heads)."""
  config = getattr(model, 'config', None)
  if dataclasses.is_dataclass(config):
    opts = dataclasses.asdict(config)
  else:
    opts = dict(getattr(model, 'options', ()))
  opts.update(include_top=model.include_top, pooling=model.pooling,
              in_channels=model.in_channels)
  return {k: opts[k] for k in _OPTION_KEYS if k in opts}


def _atomic_save(path: str, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
  try:
    weights_lib.save(tmp, arrays, config)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_classifier(path: str, model, class_names: Sequence[str],
                    preprocessing: prep_lib.Preprocessing, **info: Any) -> None:
  """Writes ``model`` as an inference file (atomically: write, fsync, rename).

  Args:
    path: the ``.safetensors`` file.
    model: a trained ``Inception`` with a classifier.
    class_names: one name per output, in label order.
    preprocessing: the evaluation transform the model expects.
    **info: JSON-able facts stored with it (step, epoch, metrics, pretrained, ...).
  """
  if not model.include_top or model.num_classes != len(class_names):
    raise ValueError(f'{len(class_names)} class names for a model with '
                     f'{model.num_classes} outputs')
  arrays = {k: v for k, v in weights_lib.to_numpy(model).items()
            if not k.startswith(_AUX_PREFIXES)}
  config = dict(info, kind=KIND, format_version=FORMAT_VERSION, arch=model.arch,
                num_classes=int(model.num_classes), options=model_options(model),
                class_names=list(class_names), preprocessing=preprocessing.to_dict())
  json.dumps(config)  # fail before writing anything if a value is not JSON
  _atomic_save(path, arrays, config)


def _classifier_file(source: str) -> str | None:
  """The inference file of a run directory or file ``source``, else None."""
  source = os.path.expanduser(os.fspath(source))
  if os.path.isdir(source):
    return os.path.join(source, RUN_FILE)
  return source if os.path.isfile(source) else None


def is_classifier(source: Any) -> bool:
  """Whether ``source`` is a run directory or an inference file (not a tag file)."""
  if not isinstance(source, (str, os.PathLike)):
    return False
  source = os.path.expanduser(os.fspath(source))
  if os.path.isdir(source):
    return True
  if not os.path.isfile(source):
    return False
  try:
    return read_config(source).get('kind') == KIND
  except weights_lib.WeightLoadError:
    return False


def read_config(path: str) -> dict[str, Any]:
  """The JSON config of a project weight file, without reading its arrays."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework='numpy') as f:
      meta = f.metadata() or {}
  except FileNotFoundError:
    raise
  except Exception as e:  # safetensors raises several types for corrupt files
    raise weights_lib.WeightLoadError(f'{path} is not a readable inception_jax weight '
                                      f'file (truncated or corrupt?): {e}') from e
  return json.loads(meta.get('config', '{}'))


def _build(arch: str, num_classes: int, options: dict, arrays: dict, source: str,
           rngs: nnx.Rngs | None, requested_classes: int | None = None):
  """The network of an inference file, filled strictly from ``arrays``."""
  from inception_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  from inception_jax import registry  # pylint: disable=g-import-not-at-top
  n = requested_classes or num_classes
  skip = list(pretrained_lib.CLASSIFIER_KEYS) if n != num_classes else []
  if options.get('aux_logits'):
    raise RunLoadError(f'{source} has no auxiliary heads (inference files leave them '
                       'out); drop aux_logits=True')
  return pretrained_lib._build_loaded(  # pylint: disable=protected-access
      lambda r: registry.create_model(arch, num_classes=n, rngs=r, **options),
      arrays, skip=skip, source=source, rngs=rngs or nnx.Rngs(0))


def create_from_classifier(source: str, *, name: str | None = None,
                           num_classes: int | None = None,
                           rngs: nnx.Rngs | None = None, **options: Any):
  """``create_model(pretrained=RUN_DIR_OR_FILE)``: the network of an inference file.

  Args:
    source: a run directory (its ``best.safetensors``) or an inference file.
    name: architecture the caller expects, or None to take the file's.
    num_classes: None keeps the file's classifier; another value keeps the
      backbone and re-initialises the classifier (fine-tuning from a run).
    rngs: RNGs for a re-initialised classifier and dropout.
    **options: model options overriding the file's (e.g. ``dtype``).
  """
  path = _classifier_file(source)
  if path is None or not os.path.exists(path):
    raise FileNotFoundError(_missing_message(source))
  arrays, config = weights_lib.load(path)
  if config.get('kind') != KIND:
    raise RunLoadError(f'{path} is not an inference file of a run (it holds '
                       f"{config.get('arch')}.{config.get('tag')} weights); use "
                       "create_model('ARCH.TAG', pretrained=PATH)")
  arch = config['arch']
  if name is not None and name.partition('.')[0] != arch:
    raise RunLoadError(f'{path} holds a {arch} model, not {name}; call '
                       f"create_model('{arch}', pretrained=...) or create_model("
                       'pretrained=...) without a name')
  opts = {**config['options'], **options}
  model = _build(arch, int(config['num_classes']), opts, arrays, path, rngs, num_classes)
  model.classifier_config = config
  return model


def _missing_message(source) -> str:
  source = os.fspath(source)
  if os.path.isdir(source):
    ckpt = os.path.join(source, 'checkpoints')
    why = ('it has checkpoints but no evaluated model yet (killed before the first '
           "evaluation?): load with checkpoint='latest', or resume the run"
           if os.path.isdir(ckpt) else
           'it is not a run directory of experiments.finetune')
    return f'no {RUN_FILE} in {source}: {why}'
  return (f'{source}: no such run directory or file. Give a run directory (e.g. '
          './runs/inception_v3-digits-20260101-120000), an inference file, a converted '
          'weight file or a tag from inception_jax.list_pretrained()')


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A model with what using it takes: class names and preprocessing.

  Unpacks as ``model, class_names, preprocessing = inception_jax.load(...)``.

  Attributes:
    model: the ``Inception`` network, eval mode.
    class_names: one name per output, in label order.
    preprocessing: the evaluation transform (``inception_jax.preprocessing``).
    source: what was loaded (run directory, file or tag).
    info: the file's config (arch, step, metrics, ...) or the tag's cfg.
  """
  model: Any
  class_names: tuple[str, ...]
  preprocessing: prep_lib.Preprocessing
  source: str
  info: dict[str, Any]

  def __iter__(self):
    return iter((self.model, self.class_names, self.preprocessing))

  def predict(self, images: Sequence[Any], top_k: int = 5
              ) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image (paths, PIL images, uint8 arrays)."""
    return prep_lib.classify(self.model, self.preprocessing, images, top_k=top_k,
                             class_names=self.class_names)


def load(source: str, *, checkpoint: str | int | None = None,
         rngs: nnx.Rngs | None = None, **options: Any) -> Classifier:
  """Loads a classifier with its class names and preprocessing, in one call.

  Args:
    source: a run directory of ``experiments.finetune``, an inference file, a
      converted ImageNet weight file, or a pretrained tag (``inception_v3.tf_in1k``,
      from the converted-weights cache).
    checkpoint: for a run directory: None or 'best' (the inference file),
      'latest' or a step number (parameters and BN statistics read from that
      training checkpoint; needs orbax).
    rngs: RNGs (dropout streams of the model).
    **options: model options (e.g. ``dtype=jnp.bfloat16``).

  Returns:
    A ``Classifier``.

  Raises:
    FileNotFoundError: no such run, file, checkpoint or converted tag (the
      message says what to do).
    RunLoadError / WeightLoadError: the file or checkpoint does not fit.
  """
  src = os.path.expanduser(os.fspath(source))
  if checkpoint not in (None, 'best'):
    if not os.path.isdir(src):
      raise RunLoadError(f'checkpoint={checkpoint!r} needs a run directory, got {source}')
    return _load_checkpoint(src, checkpoint, rngs, options)
  if os.path.isdir(src) or (os.path.isfile(src) and is_classifier(src)):
    model = create_from_classifier(src, rngs=rngs, **options)
    c = model.classifier_config
    return Classifier(model, tuple(c['class_names']),
                      prep_lib.Preprocessing.from_dict(c['preprocessing']), src, c)
  from inception_jax import registry  # pylint: disable=g-import-not-at-top
  if os.path.isfile(src):
    config = read_config(src)
    name = f"{config.get('arch')}.{config.get('tag')}"
    model = registry.create_model(name, pretrained=src, rngs=rngs, **options)
  elif '.' in src and not os.sep in src:
    model = registry.create_model(src, rngs=rngs, **options)
  else:
    raise FileNotFoundError(_missing_message(src))
  cfg = model.pretrained_cfg
  names = prep_lib.imagenet_classes()
  if cfg.label_offset:
    names = ('background',) + names
  return Classifier(model, tuple(names), prep_lib.as_preprocessing(cfg), src,
                    cfg.to_dict())


def _load_checkpoint(run_dir: str, checkpoint, rngs, options) -> Classifier:
  """Parameters and BN statistics of a training checkpoint (no optimizer needed)."""
  from inception_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from inception_jax import registry  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(run_dir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'{run_dir} has no checkpoints/ folder: not a run directory '
                            'of experiments.finetune')
  reader = checkpoint_lib.CheckpointManager(ckpt_dir)
  try:
    steps = reader.all_steps()
    if not steps:
      raise FileNotFoundError(f'{ckpt_dir} holds no checkpoint')
    if checkpoint == 'latest':
      step = steps[-1]
    else:
      try:
        step = int(checkpoint)
      except ValueError:
        raise RunLoadError(f"checkpoint must be 'best', 'latest' or a step number, got "
                           f'{checkpoint!r}') from None
      if step not in steps:
        raise FileNotFoundError(f'no checkpoint of step {step} in {ckpt_dir}; '
                                f'available: {steps}')
    meta = reader.metadata(step)
    if 'model' not in meta:
      raise RunLoadError(f'checkpoint {step} in {ckpt_dir} has no model description '
                         '(written by an older version); resume the run to rewrite it')
    m = meta['model']
    opts = {**m['options'], **options}
    abstract = nnx.eval_shape(lambda: registry.create_model(
        m['arch'], num_classes=m['num_classes'], rngs=nnx.Rngs(0), **opts))
    arrays = reader.restore_weights(step, abstract)
  finally:
    reader.close()
  arrays = {k: v for k, v in arrays.items() if not k.startswith(_AUX_PREFIXES)}
  opts.pop('aux_logits', None)
  model = _build(m['arch'], int(m['num_classes']), opts, arrays,
                 f'{ckpt_dir} step {step}', rngs)
  info = dict(meta, step=step, selected=f'checkpoint {step}')
  return Classifier(model, tuple(meta['class_names']),
                    prep_lib.Preprocessing.from_dict(meta['preprocessing']), run_dir, info)


__all__ = ['Classifier', 'RunLoadError', 'create_from_classifier', 'is_classifier', 'load',
           'model_options', 'save_classifier']
