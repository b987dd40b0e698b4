"""The XLA:CPU flags inception_jax runs with, set in ``XLA_FLAGS`` before JAX starts.

XLA:CPU (jaxlib 0.10) hands reductions, elementwise fusions and dots to YNNPACK
by default. On the 2-core Xeon (AVX-512, AMX) these were measured on, YNNPACK
reductions are fast but its elementwise fusions and dots slowed Inception
badly; keeping only ``reduce`` (``--xla_cpu_experimental_ynn_fusion_type=reduce``)
made inception_v3 at batch 8, 299x299, float32 go from 6.9 to ~15 img/s for
inference and 1.9 to ~3.3 img/s for a train step (median of 12 and 6 steps).

``import inception_jax`` adds ``CPU_FLAGS`` to ``XLA_FLAGS`` (``configure_xla``)
when JAX has not started its backends yet: XLA reads ``XLA_FLAGS`` when the first
computation creates its clients, so importing JAX first is fine, computing with it
first is not. It logs one INFO line (logger ``inception_jax``) saying what it set.

* A flag of the same name already in ``XLA_FLAGS`` (the user's) is kept as it is.
* ``INCEPTION_JAX_XLA_DEFAULTS=0`` in the environment turns all of this off.
* If JAX already computed on the CPU before ``import inception_jax``, nothing is
  changed (flags are read once per process); a WARNING says how to get the fast
  path: ``import inception_jax`` or call ``inception_jax.configure_xla()`` before
  the first JAX computation, or set ``XLA_FLAGS`` yourself.

The flags are XLA:CPU flags: on GPU and TPU they change nothing but the CPU
client that JAX also creates (host-side work), so they are harmless there.
"""

from __future__ import annotations

import logging
import os
from typing import MutableMapping

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=reduce',)
OPT_OUT = 'INCEPTION_JAX_XLA_DEFAULTS'  # '0' turns the defaults off

_log = logging.getLogger('inception_jax')
_logged: set[str] = set()  # messages already logged by this process (each once)


def _log_once(level: int, message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    _log.log(level, message)


def apply(environ: MutableMapping[str, str] | None = None) -> str:
  """Adds ``CPU_FLAGS`` to ``environ['XLA_FLAGS']`` (default ``os.environ``).

  Flags the environment already sets by name are left as they are;
  ``INCEPTION_JAX_XLA_DEFAULTS=0`` adds nothing. Only edits the mapping (use it to
  build a subprocess's environment); it takes effect for JAX when done before the
  first computation. Returns the resulting ``XLA_FLAGS``.
  """
  env = os.environ if environ is None else environ
  flags = env.get('XLA_FLAGS', '')
  if env.get(OPT_OUT, '1') != '0':
    for flag in CPU_FLAGS:
      if flag.split('=')[0] not in flags:
        flags = f'{flags} {flag}'.strip()
  if flags:
    env['XLA_FLAGS'] = flags
  return flags


def missing_flags(environ: MutableMapping[str, str] | None = None) -> list[str]:
  """``CPU_FLAGS`` whose name ``XLA_FLAGS`` does not set."""
  flags = (os.environ if environ is None else environ).get('XLA_FLAGS', '')
  return [f for f in CPU_FLAGS if f.split('=')[0] not in flags]


def _backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, 'backends_are_initialized', None)
  return started() if started else bool(getattr(xla_bridge, '_backends', {}))


def _too_late_message(missing: list[str]) -> str:
  return (f'JAX started its CPU backend before inception_jax could add {" ".join(missing)} '
          'to XLA_FLAGS: Inception runs 1.5-2x slower on XLA:CPU without it. Import '
          'inception_jax (or call inception_jax.configure_xla()) before the first JAX '
          f'computation, or set XLA_FLAGS yourself; {OPT_OUT}=0 silences this.')


def configure_xla() -> bool:
  """Adds the XLA:CPU flags to ``XLA_FLAGS`` unless JAX already started.

  Call it before the first JAX computation (``import inception_jax`` does). A
  value the user set for a flag is kept; ``INCEPTION_JAX_XLA_DEFAULTS=0`` turns
  this off. See the module docstring for the flags and why.

  Returns:
    True when the flags are in effect for this process (set now, set before, or
    set by the user), False when opted out or when JAX started too early (then a
    WARNING, once, says what to do).
  """
  if os.environ.get(OPT_OUT, '1') == '0':
    return False
  missing = missing_flags()
  if not missing:
    return True
  if _backends_started():
    _log_once(logging.WARNING, _too_late_message(missing))
    return False
  apply()
  return True


def configure_on_import() -> None:
  """What ``import inception_jax`` runs: ``configure_xla``, quieter and with a notice.

  Sets the flags with one INFO line saying so; when JAX already computed, warns
  (once) only if its default backend is the CPU, the only place the flags matter.
  """
  if os.environ.get(OPT_OUT, '1') == '0':
    return
  missing = missing_flags()
  if not missing:
    return
  if _backends_started():
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() == 'cpu':
      _log_once(logging.WARNING, _too_late_message(missing))
    return
  apply()
  _log_once(logging.INFO,
            f'inception_jax added {" ".join(missing)} to XLA_FLAGS (XLA:CPU runs Inception '
            f'1.5-2x faster with it; no effect on GPU/TPU); {OPT_OUT}=0 turns this off.')
