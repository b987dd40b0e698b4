"""Test set-up, before JAX loads: 8 fake CPU devices, and quick XLA:CPU compiling.

8 devices: the data-parallel tests. The other two flags make XLA compile whole
networks (most of the suite's time) in about half the time, and change the
machine code of XLA's elementwise fusions, not the HLO program; convolutions and
matmuls run the same library kernels:

* ``--xla_backend_optimization_level=0``: LLVM's optimisation passes were 40% of
  compiling (Inception-v4's train step: 16 to 10 CPU seconds);
* ``--xla_cpu_use_fusion_emitters=false``: fusions go through XLA's older
  elemental emitters instead of the MLIR fusion emitters (on top of -O0, the
  same train step compiles in 2.6-3.1 s instead of 4.1-4.9 s at its smallest input).

Numbers move at float32 rounding (about 5e-6 of the largest value on
Inception-v3's logits and gradients; the 8-device flag alone moves them 2e-6):
``test_xla_flags.test_test_compile_flags_change_no_number`` checks that against
the flags a user gets. Workers that need one device get these flags less the
device count (``one_device_xla_flags``); the speed benchmarks, run from the
command line as a user runs them, never see them.
"""

import os
import re
import tempfile

TEST_XLA_FLAGS = ('--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'
                  ' --xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('XLA_FLAGS', TEST_XLA_FLAGS)
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Converted weights and the finetune XLA cache go to a per-run directory, not ~/.cache.
os.environ.setdefault('INCEPTION_JAX_CACHE', tempfile.mkdtemp(prefix='inception_jax_test_cache_'))

import inception_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

# The import added its XLA:CPU flags to XLA_FLAGS, as it does for every user.


def one_device_xla_flags() -> str:
  """This process's XLA_FLAGS without the device count: for a worker with one device."""
  return re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                os.environ.get('XLA_FLAGS', '')).strip()


# The longest modules first (in-suite seconds on the 2-core CPU, 2026-12-07: models
# 171, parity_torch 154, finetune 144, fid_parity 106, sweep 103, parity_slim 96,
# train 92, parity_keras 85, xla_flags 50). With ``--dist loadfile`` a module is
# one unit of work and xdist hands units out in collection order; alphabetically,
# test_train and test_xla_flags came last and ran alone on one worker while the
# other idled.
LONGEST_FIRST = ('test_models.py', 'test_parity_torch.py', 'test_finetune.py',
                 'test_fid_parity.py', 'test_sweep.py', 'test_parity_slim.py',
                 'test_train.py', 'test_parity_keras.py', 'test_xla_flags.py')


def pytest_collection_modifyitems(items):
  """Runs the modules of LONGEST_FIRST first, in that order; the rest as collected."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
