"""The one way to build a model: ``create_model(name, ...)``.

Architectures register their ``ArchSpec`` here at import time (the only module-level
state of the library). ``name`` is an architecture (``inception_v3``) or a
pretrained tag (``inception_v3.tf_in1k``, see ``inception_jax.pretrained``).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from flax import nnx

from inception_jax import model as model_lib
from inception_jax import specs

_ARCHS: dict[str, specs.ArchSpec] = {}


def register_arch(spec: specs.ArchSpec) -> specs.ArchSpec:
  """Adds an architecture table to the registry (at import of its module)."""
  if spec.name in _ARCHS:
    raise ValueError(f'architecture {spec.name!r} registered twice')
  _ARCHS[spec.name] = spec
  return spec


def list_models(pattern: str | None = None) -> list[str]:
  """Registered architecture names, sorted; ``pattern`` is an fnmatch filter."""
  names = sorted(_ARCHS)
  return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_arch(name: str) -> specs.ArchSpec:
  """The ``ArchSpec`` of a registered architecture; unknown names list the valid ones."""
  if name not in _ARCHS:
    close = difflib.get_close_matches(name, list(_ARCHS), n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise ValueError(f'unknown architecture {name!r}.{hint} Valid names: '
                     f'{", ".join(list_models())}')
  return _ARCHS[name]


def create_model(name: str | None = None, *, num_classes: int | None = None,
                 rngs: nnx.Rngs | None = None, pretrained: str | None = None,
                 **options: Any) -> model_lib.Inception:
  """Builds a network of the family.

  Args:
    name: an architecture from ``list_models()`` or a pretrained tag
      ``arch.tag`` from ``list_pretrained()``; a tag sets the options that make
      the network match its source (padding, ``count_include_pad``, BN scale...).
      May be omitted when ``pretrained`` is a run or an inference file.
    num_classes: classifier width (default: the weights', else 1000). With
      pretrained weights a different value keeps the backbone and re-initialises
      the classifier (transfer learning).
    rngs: parameter/dropout RNGs; ``nnx.Rngs(0)`` when omitted.
    pretrained: path of a converted weight file (``third_party_weights.convert``)
      to load strictly into the network, or a fine-tuning run directory / its
      inference file (``inception_jax.inference``: architecture, options and
      classes come from the file).
    **options: ``include_top``, ``pooling`` ('avg', 'max' or None), ``dropout_rate``,
      ``aux_logits``, ``dtype``, ``param_dtype``, ``in_channels`` and the numerics
      options ``padding`` ('tf' | 'symmetric'), ``count_include_pad``,
      ``batch_norm``, ``bn_eps``, ``bn_momentum``, ``bn_scale``, ``conv_bias``; and
      ``scan_blocks`` (default True: the Inception-ResNet block loop stays rolled;
      False unrolls it).

  Returns:
    An ``Inception`` module in eval mode.
  """
  if rngs is None:
    rngs = nnx.Rngs(0)
  if pretrained is not None:
    from inception_jax import inference  # pylint: disable=g-import-not-at-top
    if inference.is_classifier(pretrained):
      return inference.create_from_classifier(pretrained, name=name,
                                              num_classes=num_classes, rngs=rngs,
                                              **options)
  if name is None:
    raise ValueError('create_model needs an architecture name (list_models()) unless '
                     'pretrained= is a run directory or an inference file')
  arch, _, tag = name.partition('.')
  if tag or pretrained is not None:
    from inception_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
    return pretrained_lib.create_pretrained(
        name, path=pretrained, num_classes=num_classes, rngs=rngs, **options)
  spec = get_arch(arch)
  try:
    return model_lib.Inception(spec, num_classes=1000 if num_classes is None else num_classes,
                               rngs=rngs, **options)
  except TypeError as e:
    if 'unexpected keyword' in str(e) or 'unknown option' in str(e):
      raise ValueError(f'{arch}: {e}. Valid options: {sorted(model_lib.OPTIONS)}') from e
    raise
