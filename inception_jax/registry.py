"""The architecture registry: register, get and list ``ArchSpec`` tables.

Architectures register their ``ArchSpec`` here at import time (the only module-level
state of the library). Networks are built by ``inception_jax.factory.create_model``.
"""

from __future__ import annotations

import difflib
import fnmatch

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
