"""The project weight format: flat arrays keyed by NNX state path, in safetensors.

A key is the model's state path joined by '/', e.g.
``Mixed_5b/Branch_1/Conv2d_0b_5x5/conv/kernel`` (HWIO), ``.../bn/mean``,
``Repeat/block35/Conv2d_1x1/conv/bias`` (stacked: leading axis = block index),
``Logits/kernel`` ([in, out]). The safetensors metadata holds a JSON ``config``
describing the weights (arch, tag, options, classes, preprocessing, source).

Loading is strict: every key must match a parameter or batch statistic of the model
with the same shape, and every parameter must be present, unless it is explicitly
excluded (a re-initialised classifier, absent aux heads).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax import nnx
from safetensors import numpy as st_numpy
from safetensors import safe_open

WEIGHT_KINDS = (nnx.Param, nnx.BatchStat)


class WeightLoadError(ValueError):
  """A weight file does not fit the model it is being loaded into."""


def path_key(path) -> str:
  """The flat key of an nnx state path: its parts joined by '/'."""
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def flat_state(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Parameters and batch statistics of ``model`` by flat key."""
  state = nnx.state(model, nnx.Any(*WEIGHT_KINDS))
  return {path_key(path): var for path, var in nnx.to_flat_state(state)}


def to_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
  """A model's weights as flat float arrays (the project format's content)."""
  return {k: np.asarray(v[...]) for k, v in flat_state(model).items()}


# Keys whose shape depends on num_classes, and the auxiliary heads (aux_logits=True).
CLASSIFIER_KEYS = (r'Logits/.*', r'AuxLogits/Logits/.*', r'aux1/fc2/.*', r'aux2/fc2/.*')
AUX_PREFIXES = ('AuxLogits/', 'aux1/', 'aux2/')


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, 'shape') else tuple(x)


def _likely_cause(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
  """What usually produces this pattern of missing, unexpected and mis-shaped keys."""
  def only(keys, test):
    return bool(keys) and all(test(k) for k in keys)

  top = lambda k: k.startswith('Logits/')
  aux = lambda k: k.startswith(AUX_PREFIXES)
  classifier = lambda k: any(re.fullmatch(r, k.split(':')[0]) for r in CLASSIFIER_KEYS)
  if only(missing, top) and not unexpected and not shapes:
    return ('the file has no classifier (a no-top file): pass include_top=False for '
            'features, or num_classes=N for a new randomly initialised classifier')
  if only(unexpected, top) and not missing and not shapes:
    return 'the file has a classifier and the model none: build it with include_top=True'
  if only(missing, aux) and not unexpected and not shapes:
    return ('the model has auxiliary heads the file lacks: drop aux_logits=True (or '
            'load a file converted with them)')
  if only(unexpected, aux) and not missing and not shapes:
    return 'the file has auxiliary heads: pass aux_logits=True to load them'
  if only(shapes, classifier) and not missing and not unexpected:
    return ("another number of classes: num_classes=None keeps the file's classifier, "
            'another value re-initialises it')
  scale = lambda k: k.endswith('/bn/scale')
  if only(missing, scale) or only(unexpected, scale):
    return ('BatchNorm scale (gamma) differs: Keras and TF-slim weights have none '
            '(bn_scale=False), torch ports have one; build with the options of the '
            "file's tag (create_model('ARCH.TAG', pretrained=PATH))")
  if any(k.startswith('Bottleneck/') for k in missing + unexpected):
    return 'embedding_size differs from the file (FaceNet weights: embedding_size=512)'
  return ('a file of another architecture or tag, or model options (aux_logits, '
          'include_top, bn_scale, num_classes) that differ from the file. Convert with '
          '`python -m third_party_weights.convert --tag ARCH.TAG` for this architecture')


def check(target: nnx.Module | Mapping[str, Any], arrays: Mapping[str, Any], *,
          skip: Iterable[str] = (), source: str = 'weight file',
          allow_unexpected: bool = False, cause: str | None = None) -> list[str]:
  """The one strict key and shape check of arrays read from a file against a target.

  Args:
    target: the network (concrete or from ``nnx.eval_shape``), or key -> shape (or
      anything with ``.shape``) of another target, such as a train state.
    arrays: flat key -> array (or anything with ``.shape``) read from ``source``.
    skip: regexes of target keys that keep their initial values and may be absent
      from (or present in) ``arrays``: a re-initialised head, say.
    source: what the arrays were read from, for the message.
    allow_unexpected: keys of ``arrays`` the target lacks are allowed (a partial read).
    cause: the likely cause to state; by default diagnosed from the keys (no-top
      file, aux heads, another num_classes or tag, BN scale, another architecture).

  Returns:
    The target keys that are skipped.

  Raises:
    WeightLoadError: naming the missing, unexpected and mis-shaped keys and the
      likely cause.
  """
  skip_re = [re.compile(s) for s in skip]
  skipped = lambda k: any(r.fullmatch(k) or r.match(k) for r in skip_re)
  if isinstance(target, nnx.Module):
    name = getattr(target, 'arch', type(target).__name__)
    target = flat_state(target)
  else:
    name = 'the target'
  want = {k: _shape(v) for k, v in target.items()}
  have = {k: _shape(v) for k, v in arrays.items()}
  missing = sorted(k for k in want if k not in have and not skipped(k))
  unexpected = [] if allow_unexpected else sorted(
      k for k in have if k not in want and not skipped(k))
  shapes = [f'{k}: {have[k]} given, {want[k]} expected' for k in sorted(have)
            if k in want and not skipped(k) and have[k] != want[k]]
  if missing or unexpected or shapes:
    parts = [f'{source} does not fit {name}:']
    for what, keys in (('missing', missing), ('unexpected', unexpected),
                       ('shape mismatch', shapes)):
      if keys:
        more = f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''
        parts.append(f'  {what} ({len(keys)}): {keys[:8]}{more}')
    parts.append(f'  Likely cause: {cause or _likely_cause(missing, unexpected, shapes)}.')
    raise WeightLoadError('\n'.join(parts))
  return [k for k in want if skipped(k)]


def assign(model: nnx.Module, arrays: Mapping[str, Any], *,
           skip: Iterable[str] = (), source: str = 'weight file') -> list[str]:
  """Strictly copies ``arrays`` into ``model`` (see ``check`` for the arguments).

  ``model`` may be abstract (``nnx.eval_shape``): its variables then hold the
  arrays, and only the skipped ones stay abstract.

  Returns:
    The model keys that were skipped.

  Raises:
    WeightLoadError: naming missing, unexpected and mis-shaped keys and the likely
      cause.
  """
  done = set(check(model, arrays, skip=skip, source=source))
  todo = [(k, var) for k, var in flat_state(model).items() if k not in done]
  values = jax.device_put([np.asarray(arrays[k], var.dtype) for k, var in todo])
  for (_, var), value in zip(todo, values):
    var.set_value(value)
  return sorted(done)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """Arrays read from a file, and the network they are loaded into.

  Attributes:
    arch: the architecture to build.
    options: ``create_model`` options of that network, ``num_classes`` included.
    arrays: flat key -> array, exactly the network's keys but ``skip``.
    skip: regexes of keys the file does not provide (initialised instead).
    source: the file, for messages.
  """
  arch: str
  options: dict[str, Any]
  arrays: dict[str, np.ndarray]
  skip: tuple[str, ...]
  source: str


def save(path: str, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> None:
  """Writes flat arrays and their config to a safetensors file."""
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  st_numpy.save_file(arrays, path, metadata={'config': json.dumps(config, sort_keys=True)})


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a project weight file: (flat arrays, config).

  Raises:
    WeightLoadError: the file is missing, truncated or not a project weight file.
  """
  try:
    with safe_open(path, framework='numpy') as f:
      meta = f.metadata() or {}
      arrays = {k: f.get_tensor(k) for k in f.keys()}
  except FileNotFoundError:
    raise
  except Exception as e:  # safetensors raises several types for corrupt files
    raise WeightLoadError(f'{path} is not a readable inception_jax weight file '
                          f'(truncated or corrupt?): {e}') from e
  if 'config' not in meta:
    raise WeightLoadError(f'{path} has no inception_jax config; convert the source file '
                          'with `python -m third_party_weights.convert`')
  return arrays, json.loads(meta['config'])


def num_weights(model: nnx.Module, kind=nnx.Param) -> int:
  """Number of scalars in the model's variables of ``kind``."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, kind)))
