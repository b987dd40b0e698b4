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

import json
import re
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import numpy as st_numpy
from safetensors import safe_open

WEIGHT_KINDS = (nnx.Param, nnx.BatchStat)


class WeightLoadError(ValueError):
  """A weight file does not fit the model it is being loaded into."""


def _key(path) -> str:
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def flat_state(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Parameters and batch statistics of ``model`` by flat key."""
  state = nnx.state(model, nnx.Any(*WEIGHT_KINDS))
  return {_key(path): var for path, var in nnx.to_flat_state(state)}


def to_numpy(model: nnx.Module) -> dict[str, np.ndarray]:
  """A model's weights as flat float arrays (the project format's content)."""
  return {k: np.asarray(v[...]) for k, v in flat_state(model).items()}


def check(model: nnx.Module, arrays: dict[str, np.ndarray], *,
          skip: Iterable[str] = (), source: str = 'weight file') -> list[str]:
  """Checks that ``arrays`` fit ``model`` exactly (``model`` may be abstract).

  Args:
    model: the target network (concrete or from ``nnx.eval_shape``).
    arrays: flat key -> array.
    skip: regexes of model keys that keep their initial values and may be absent
      from (or present in) ``arrays``: a re-initialised head, say.
    source: name of the file, used in error messages.

  Returns:
    The model keys that are skipped.

  Raises:
    WeightLoadError: naming missing, unexpected and mis-shaped keys and the likely
      cause.
  """
  skip_re = [re.compile(s) for s in skip]
  skipped = lambda k: any(r.fullmatch(k) or r.match(k) for r in skip_re)
  target = flat_state(model)
  missing = [k for k in target if k not in arrays and not skipped(k)]
  unexpected = [k for k in arrays if k not in target and not skipped(k)]
  shapes = [f'{k}: file {tuple(arrays[k].shape)} vs model {tuple(target[k].shape)}'
            for k in arrays if k in target and not skipped(k)
            and tuple(arrays[k].shape) != tuple(target[k].shape)]
  if missing or unexpected or shapes:
    arch = getattr(model, 'arch', type(model).__name__)
    parts = [f'{source} does not fit {arch}:']
    for what, keys in (('missing', missing), ('unexpected', unexpected),
                       ('shape mismatch', shapes)):
      if keys:
        more = f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''
        parts.append(f'  {what} ({len(keys)}): {keys[:8]}{more}')
    parts.append('  Likely cause: a file converted for another architecture or tag, '
                 'or model options (aux_logits, include_top, bn_scale, num_classes) '
                 'that differ from the file. Convert with `python -m '
                 'third_party_weights.convert --arch TAG` for this architecture.')
    raise WeightLoadError('\n'.join(parts))
  return [k for k in target if skipped(k)]


def assign(model: nnx.Module, arrays: dict[str, np.ndarray], *,
           skip: Iterable[str] = (), source: str = 'weight file') -> list[str]:
  """Strictly copies ``arrays`` into ``model`` (see ``check`` for the arguments).

  Returns:
    The model keys that were skipped.

  Raises:
    WeightLoadError: naming missing, unexpected and mis-shaped keys and the likely
      cause.
  """
  done = check(model, arrays, skip=skip, source=source)
  for k, var in flat_state(model).items():
    if k not in done:
      var[...] = jnp.asarray(arrays[k], dtype=var[...].dtype)
  return done


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
