"""Test set-up: 8 fake CPU devices for the data-parallel tests, set before JAX loads."""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Converted weights and the finetune XLA cache go to a per-run directory, not ~/.cache.
os.environ.setdefault('INCEPTION_JAX_CACHE', tempfile.mkdtemp(prefix='inception_jax_test_cache_'))

import inception_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import

# The import added its XLA:CPU flags to XLA_FLAGS, as it does for every user.
