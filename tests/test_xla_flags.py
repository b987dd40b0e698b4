"""experiments.xla_flags: adds its XLA:CPU flags, keeps the user's, can be turned off."""

from experiments import xla_flags

FLAG = 'xla_cpu_experimental_ynn_fusion_type'


def test_adds_flags_to_existing_xla_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  out = xla_flags.apply(env)
  assert out == env['XLA_FLAGS']
  assert out.split() == ['--xla_force_host_platform_device_count=8', f'--{FLAG}=reduce']
  assert xla_flags.apply(env) == out  # idempotent


def test_user_value_wins():
  env = {'XLA_FLAGS': f'--{FLAG}=dot,reduce'}
  assert xla_flags.apply(env) == f'--{FLAG}=dot,reduce'


def test_opt_out():
  env = {'INCEPTION_JAX_XLA_DEFAULTS': '0'}
  assert xla_flags.apply(env) == ''
  assert 'XLA_FLAGS' not in env


def test_flags_reach_this_test_process():
  import os  # pylint: disable=g-import-not-at-top
  assert f'--{FLAG}=reduce' in os.environ['XLA_FLAGS'].split()
