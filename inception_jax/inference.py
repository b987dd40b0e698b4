"""The inference file of a trained classifier: writing it, and reading it for a build.

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

``inception_jax.load`` (``factory.load``) turns a run directory, such a file, a
converted ImageNet weight file or a pretrained tag into a ``Classifier`` (model +
class names + preprocessing); ``create_model(pretrained=RUN_DIR_OR_FILE)`` builds
the network alone.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from inception_jax import preprocessing as prep_lib
from inception_jax import weights as weights_lib

KIND = 'inception_jax.classifier'
FORMAT_VERSION = 1
RUN_FILE = 'best.safetensors'  # the inference file inside a run directory
# Left to whoever loads the file: the training-only aux heads, and how to compute.
_NOT_RECORDED = ('arch', 'num_classes', 'aux_logits', 'dtype', 'param_dtype', 'kernels')


class RunLoadError(ValueError):
  """A run, checkpoint or inference file cannot be loaded (the message says why)."""


def model_options(model) -> dict[str, Any]:
  """The options that rebuild ``model``'s network with ``create_model`` (no aux heads).

  Everything in ``model.config`` but the architecture, the class count and how to
  compute (dtypes, kernels), which the loader chooses.
  """
  return {k: v for k, v in model.config.to_dict().items() if k not in _NOT_RECORDED}


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
            if not k.startswith(weights_lib.AUX_PREFIXES)}
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


def read_classifier(source: str, *, name: str | None = None,
                    num_classes: int | None = None, **options: Any
                    ) -> tuple[weights_lib.Loaded, dict[str, Any]]:
  """The inference file of a run (or the file itself), and what to build from it.

  Args:
    source: a run directory (its ``best.safetensors``) or an inference file.
    name: architecture the caller expects, or None to take the file's.
    num_classes: None keeps the file's classifier; another value keeps the
      backbone and leaves the classifier to be initialised (fine-tuning from a run).
    **options: model options overriding the file's (e.g. ``dtype``).

  Returns:
    What to build (architecture, options, arrays) and the file's config.
  """
  path = _classifier_file(source)
  if path is None or not os.path.exists(path):
    raise FileNotFoundError(missing_message(source))
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
  if opts.get('aux_logits'):
    raise RunLoadError(f'{path} has no auxiliary heads (inference files leave them '
                       'out); drop aux_logits=True')
  file_classes = int(config['num_classes'])
  n = num_classes or file_classes
  skip = weights_lib.CLASSIFIER_KEYS if n != file_classes else ()
  return weights_lib.Loaded(arch, {**opts, 'num_classes': n}, arrays, skip, path), config


def missing_message(source) -> str:
  """Why ``source`` (a run directory or file) cannot be loaded, and what to give."""
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


__all__ = ['RunLoadError', 'is_classifier', 'missing_message', 'model_options',
           'read_classifier', 'read_config', 'save_classifier']
