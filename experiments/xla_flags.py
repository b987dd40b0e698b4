"""XLA:CPU flags the experiments set before JAX starts (not the library: flags are per process).

XLA:CPU (jaxlib 0.10) hands reductions, elementwise fusions and dots to YNNPACK
by default. On the 2-core Xeon (AVX-512, AMX) these were measured on, YNNPACK
reductions are fast but its elementwise fusions and dots slowed Inception
badly; keeping only ``reduce`` (``--xla_cpu_experimental_ynn_fusion_type=reduce``)
made inception_v3 at batch 8, 299x299, float32 go from 6.9 to ~15 img/s for
inference and 1.9 to ~3.3 img/s for a train step (``/tmp`` probes, median of
12 and 6 steps). Recorded per run in ``experiments.benchmark``'s report.

A user who sets ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` keeps
their value; ``INCEPTION_JAX_XLA_DEFAULTS=0`` turns this off.
"""

from __future__ import annotations

import os
from typing import MutableMapping

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=reduce',)


def apply(environ: MutableMapping[str, str] | None = None) -> str:
  """Adds ``CPU_FLAGS`` to ``environ['XLA_FLAGS']`` (default ``os.environ``).

  Call before JAX creates its CPU client (the first computation). Flags the
  user already set by name are left as they are. Returns the resulting XLA_FLAGS.
  """
  env = os.environ if environ is None else environ
  flags = env.get('XLA_FLAGS', '')
  if env.get('INCEPTION_JAX_XLA_DEFAULTS', '1') != '0':
    for flag in CPU_FLAGS:
      if flag.split('=')[0] not in flags:
        flags = f'{flags} {flag}'.strip()
  if flags:
    env['XLA_FLAGS'] = flags
  return flags
