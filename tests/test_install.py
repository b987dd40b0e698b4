"""The core install: ``import inception_jax`` needs only what a model needs.

A fresh process hides the packages only the extras install (TensorFlow, torch,
timm, Keras, matplotlib, tqdm, TFDS, scikit-learn, h5py) as if they were not
installed, then builds, runs and summarises a model through the library and
imports the train step and the checkpointing (optax and orbax come with flax
itself). The packaging metadata is read from setup.cfg: the core requirements
and the one installed package.
"""

import configparser
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ('tensorflow', 'torch', 'torchvision', 'timm', 'keras', 'matplotlib', 'tqdm',
               'tensorflow_datasets', 'sklearn', 'h5py', 'tf_keras', 'tf_slim')

_SCRIPT = r'''
import importlib.abc, json, sys
HIDDEN = set(sys.argv[1].split(','))

class Hide(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in HIDDEN:
      raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)')
    return None

sys.meta_path.insert(0, Hide())
import jax, jax.numpy as jnp
import inception_jax as ij
out = {}
m = ij.create_model('inception_v3', num_classes=5)
m.eval()
y = jax.jit(lambda x: m(x))(jnp.zeros((1, 75, 75, 3)))
out['logits_shape'] = list(y.shape)
out['config_arch'] = m.config.arch
out['summary_has_total'] = 'inception_v1 at 224x224x3' in str(ij.summary('inception_v1', 224))
import inception_jax.train, inception_jax.checkpoint, inception_jax.fid
out['train_step'] = callable(inception_jax.train.make_train_step)
out['loaded'] = sorted(k for k in sys.modules if k.split('.')[0] in HIDDEN)
print('RESULT ' + json.dumps(out))
'''


def test_library_runs_without_the_extras():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = str(ROOT)
  r = subprocess.run([sys.executable, '-c', _SCRIPT, ','.join(EXTRAS_ONLY)], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')][-1]
  out = json.loads(line[len('RESULT '):])
  assert out['logits_shape'] == [1, 5]
  assert out['config_arch'] == 'inception_v3'
  assert out['summary_has_total']
  assert out['train_step']
  assert out['loaded'] == []


def test_setup_cfg_core_requirements_and_packages():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  core = {l.split('>')[0].split('=')[0].split('<')[0].split('[')[0].strip().lower()
          for l in cfg['options']['install_requires'].strip().splitlines() if l.strip()}
  assert core == {'jax', 'jaxlib', 'flax', 'numpy', 'safetensors', 'pillow'}, core
  packages = cfg['options.packages.find']['include'].split()
  assert all(p.startswith('inception_jax') for p in packages), packages
