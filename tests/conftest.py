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


def pytest_collection_modifyitems(config, items):
  """Keeps the tests that share a module- or session-scoped fixture on one xdist worker.

  With ``-n 2`` pytest-xdist hands tests to whichever worker is free, so both
  workers would build a module fixture (a parity worker converting ten reference
  networks, a trained run) for their share of the module's tests. Grouping them
  (``--dist loadgroup`` in setup.cfg) builds each fixture once; other tests still
  spread over both workers.
  """
  del config
  import pytest  # pylint: disable=g-import-not-at-top
  for item in items:
    info = getattr(item, '_fixtureinfo', None)
    if info is None:
      continue
    # baseid is '' for pytest's own fixtures (tmp_path_factory is session-scoped).
    shared = any(d.scope in ('module', 'session') and d.baseid
                 for defs in info.name2fixturedefs.values() for d in defs)
    if shared:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
