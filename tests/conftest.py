"""Test set-up, before JAX loads: 8 fake CPU devices, and LLVM at -O0 for compiling.

8 devices: the data-parallel tests. ``--xla_backend_optimization_level=0``: most of
the suite's time is XLA compiling whole networks, and LLVM's optimisation passes
are 40% of that (Inception-v4's train step: 16 to 10 CPU seconds). It changes the
machine code of XLA's fusions, not the HLO program; convolutions and matmuls run the
same library kernels. Numbers move at float32 rounding (about 2e-6 of the largest
value on Inception-v3's logits and gradients, as much as the 8-device flag alone
moves them): ``test_xla_flags.test_test_compile_flag_changes_no_number`` checks
that against the flags a user gets. The Keras parity workers drop XLA_FLAGS, and
the speed benchmarks, run from the command line as a user runs them, never see it.
"""

import os
import tempfile

TEST_XLA_FLAGS = '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'
os.environ.setdefault('XLA_FLAGS', TEST_XLA_FLAGS)
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Converted weights and the finetune XLA cache go to a per-run directory, not ~/.cache.
os.environ.setdefault('INCEPTION_JAX_CACHE', tempfile.mkdtemp(prefix='inception_jax_test_cache_'))

import inception_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

# The import added its XLA:CPU flags to XLA_FLAGS, as it does for every user.


# The longest modules first (in-suite seconds on the 2-core CPU, 2026-12: models 354,
# parity_torch 240, finetune 197, fid_parity 179, train 154, parity_slim 152,
# sweep 120, parity_keras 112, layers 89). With ``--dist loadfile`` a module is one
# unit of work and xdist hands units out in collection order; alphabetically,
# test_train and test_xla_flags came last and ran alone on one worker while the
# other idled.
LONGEST_FIRST = ('test_models.py', 'test_parity_torch.py', 'test_finetune.py',
                 'test_fid_parity.py', 'test_train.py', 'test_parity_slim.py',
                 'test_sweep.py', 'test_parity_keras.py', 'test_layers.py')


def pytest_collection_modifyitems(items):
  """Runs the modules of LONGEST_FIRST first, in that order; the rest as collected."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
