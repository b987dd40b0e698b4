"""inception_jax.xla_flags: the XLA:CPU flags a plain ``import inception_jax`` sets.

The import-time behaviour is tested in fresh subprocesses (flags are per process):
the flag is in XLA_FLAGS after ``import inception_jax`` and XLA compiles with it
(no YNNPACK fusion in the compiled program, where the opt-out has one), a value
the user set is kept, ``INCEPTION_JAX_XLA_DEFAULTS=0`` sets nothing, and the log
line appears once.
"""

import json
import os
import subprocess
import sys

import numpy as np

from inception_jax import xla_flags

FLAG = 'xla_cpu_experimental_ynn_fusion_type'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  assert f'--{FLAG}=reduce' in os.environ['XLA_FLAGS'].split()


# A library user's script: logging on, JAX imported first, then inception_jax.
_SCRIPT = r'''
import importlib, json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format='LOG %(name)s %(levelname)s %(message)s')
import jax, jax.numpy as jnp
if sys.argv[1] == 'compute_first':
  jnp.ones(2).block_until_ready()
import inception_jax
again = inception_jax.configure_xla()
importlib.reload(inception_jax)  # a second import: nothing more is logged
f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 2 + 1)
hlo = f.lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile().as_text()
print(json.dumps({'XLA_FLAGS': os.environ.get('XLA_FLAGS'), 'configure_xla': again,
                  'ynn_fusion': 'ynn_fusion' in hlo}))
'''


def _user_script(mode='import_first', **env):
  base = {k: v for k, v in os.environ.items()
          if k not in ('XLA_FLAGS', xla_flags.OPT_OUT)}
  base['PYTHONPATH'] = ROOT + os.pathsep + base.get('PYTHONPATH', '')
  r = subprocess.run([sys.executable, '-c', _SCRIPT, mode], env={**base, **env}, cwd=ROOT,
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  logs = [line for line in r.stderr.splitlines() if line.startswith('LOG inception_jax')]
  return json.loads(r.stdout.strip().splitlines()[-1]), logs


def test_import_sets_the_flag_and_logs_once():
  out, logs = _user_script()
  assert out['XLA_FLAGS'] == f'--{FLAG}=reduce'
  assert out['configure_xla'] is True
  assert not out['ynn_fusion']  # XLA read the flag: no YNNPACK elementwise/dot fusion
  assert len(logs) == 1, logs
  assert logs[0].startswith('LOG inception_jax INFO')
  assert f'--{FLAG}=reduce' in logs[0] and 'INCEPTION_JAX_XLA_DEFAULTS=0' in logs[0]


def test_opt_out_sets_nothing():
  out, logs = _user_script(INCEPTION_JAX_XLA_DEFAULTS='0')
  assert out['XLA_FLAGS'] is None and out['configure_xla'] is False
  assert out['ynn_fusion']  # XLA's default: the program the flag changes
  assert not logs


def test_a_value_the_user_set_is_kept():
  user = f'--xla_force_host_platform_device_count=2 --{FLAG}=reduce,eltwise'
  out, logs = _user_script(XLA_FLAGS=user)
  assert out['XLA_FLAGS'] == user and out['configure_xla'] is True
  assert not logs


def test_too_late_changes_nothing_and_says_how_once():
  out, logs = _user_script('compute_first')
  assert out['XLA_FLAGS'] is None and out['configure_xla'] is False
  assert out['ynn_fusion']
  assert len(logs) == 1 and logs[0].startswith('LOG inception_jax WARNING'), logs
  assert 'inception_jax.configure_xla()' in logs[0] and 'before the first JAX' in logs[0]


# Eval logits and eval-mode parameter gradients of Inception-v3 at its smallest
# input, written to argv[1] (.npz): the programs most of the suite compiles.
# Eval mode, because train-mode BatchNorm over 2 images of a 1x1 or 3x3 map is
# ill-conditioned: there even the device-count flag alone moves some gradients by
# tens of percent, so such a comparison could not tell a real change from noise.
_NUMBERS = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import inception_jax as ij
model = ij.create_model('inception_v3', num_classes=5, rngs=nnx.Rngs(3))
m = model.min_input_size
x = jax.random.normal(jax.random.key(1), (2, m, m, 3))
def loss(mod):
  logits = mod(x)
  return jnp.sum(logits ** 2), logits
grads, logits = nnx.jit(nnx.grad(loss, has_aux=True))(model)  # one program
leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
np.savez(sys.argv[1], np.asarray(logits), *[np.asarray(g) for g in leaves])
'''


def test_test_compile_flags_change_no_number(tmp_path):
  """The suite's quick-compile flags (conftest) give a user's numbers, to rounding.

  Inception-v3's eval logits and parameter gradients, computed in three fresh
  processes: with this suite's XLA_FLAGS, with the flags a user's
  ``import inception_jax`` gives (no XLA_FLAGS of their own), and with only the
  8-device flag (which every data-parallel test has always used). LLVM's
  optimiser (-O2 for a user, -O0 here) and the two fusion emitters may contract
  or reorder float operations inside a fusion, so the numbers are not
  bit-identical; the bar is float32 rounding (1e-5 of the largest value), and the
  suite's difference must be no bigger than ten times the difference the
  device-count flag alone makes.
  """
  import conftest  # pylint: disable=g-import-not-at-top
  assert {'--xla_backend_optimization_level=0',
          '--xla_cpu_use_fusion_emitters=false'} <= set(conftest.TEST_XLA_FLAGS.split())
  base = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', xla_flags.OPT_OUT)}
  base['PYTHONPATH'] = ROOT + os.pathsep + base.get('PYTHONPATH', '')
  out = {}
  runs = (('tests', conftest.TEST_XLA_FLAGS), ('user', None),
          ('devices', '--xla_force_host_platform_device_count=8'))
  for name, flags in runs:
    env = dict(base, **({'XLA_FLAGS': flags} if flags else {}))
    path = tmp_path / f'{name}.npz'
    r = subprocess.run([sys.executable, '-c', _NUMBERS, str(path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(path) as f:
      out[name] = [f[k] for k in f.files]
  assert len(out['tests']) == len(out['user']) > 100  # logits and every gradient

  def worst(a_list, b_list):
    """Largest |a - b| per array, over the largest |b| of that array."""
    w = 0.0
    for a, b in zip(a_list, b_list):
      assert a.shape == b.shape
      w = max(w, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-30))
    return w

  suite, devices = worst(out['tests'], out['user']), worst(out['devices'], out['user'])
  print(f'max |diff| / max |value| vs user flags: suite {suite:.3g}, 8 devices {devices:.3g}')
  assert suite <= 1e-5, suite
  assert suite <= 10 * max(devices, 1e-7), (suite, devices)
