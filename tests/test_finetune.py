"""The fine-tuning CLI: setup errors, an end-to-end run, bad files, resume, NaN, TFDS.

The loop is tested with a two-layer network registered here (the architectures
have their own tests in test_models.py), so each run compiles in seconds; the CLI
runs as a subprocess with ``CI=true`` (no terminal) where the behaviour of the
program as a whole is the point.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import data
from experiments import finetune
from inception_jax import checkpoint as checkpoint_lib
from inception_jax import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Registers 'tiny_test_net': conv 3x3/2 then a two-branch module (16 channels).
TINY_ARCH = '''
from inception_jax import registry, specs
if 'tiny_test_net' not in registry.list_models():
  registry.register_arch(specs.ArchSpec(
      name='tiny_test_net',
      layers=(specs.Conv('Conv2d_1a_3x3', 8, 3, stride=2, padding='VALID'),
              specs.Mixed('Mixed_5b', ((specs.Conv('Conv2d_0a_1x1', 8, 1),),
                                       (specs.Pool('MaxPool_0a_3x3', 'max', 3, 1),
                                        specs.Conv('Conv2d_0b_1x1', 8, 1))))),
      default_size=32, defaults={}))
'''
exec(TINY_ARCH)  # pylint: disable=exec-used

RUN_MAIN = TINY_ARCH + '''
from absl import app
from experiments import finetune
app.run(finetune.main)
'''

TINY = dict(arch='tiny_test_net', image_size=24, batch_size=16,
            measure_pipeline_seconds=0.0)


def _cli_args(**kw):
  return [f'--{k}={v}' for k, v in kw.items()]


def _env():
  env = dict(os.environ, CI='true', PYTHONPATH=ROOT)
  return env


def run_cli(workdir, **kw):
  args = _cli_args(**{**TINY, 'workdir': workdir, **kw})
  return subprocess.run([sys.executable, '-c', RUN_MAIN] + args, cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600)


def run_inprocess(workdir, **kw):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['finetune'])
  with flagsaver.flagsaver(**{**TINY, 'workdir': str(workdir), **kw}):
    return finetune.run()


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if the run gets as far as building train state or steps."""
  def boom(*a, **k):
    raise AssertionError('reached create_train_state/compilation')
  monkeypatch.setattr(train_lib, 'create_train_state', boom)
  monkeypatch.setattr(train_lib, 'make_train_step', boom)


def test_setup_errors_come_before_compilation(tmp_path, no_compile):
  with pytest.raises(data.DataError, match='no such directory'):
    run_inprocess(tmp_path / 'w', dataset=f'folder:{tmp_path}/nope')
  (tmp_path / 'ds' / 'cat').mkdir(parents=True)
  (tmp_path / 'ds' / 'dog').mkdir()
  from PIL import Image
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'ds' / 'cat' / 'a.png')
  with pytest.raises(data.DataError, match='dog is empty'):
    run_inprocess(tmp_path / 'w', dataset=f'folder:{tmp_path}/ds',
                  cache_dir=str(tmp_path / 'cache'))
  # conftest gives 8 devices: a global batch of 12 cannot be split evenly.
  with pytest.raises(finetune.RunError, match='not divisible by the 8 devices'):
    run_inprocess(tmp_path / 'w', batch_size=12)
  with pytest.raises(data.DataError, match='unknown TFDS dataset'):
    run_inprocess(tmp_path / 'w', dataset='tfds:no_such_dataset_xyz')
  with pytest.raises(finetune.RunError, match='below the minimum input'):
    run_inprocess(tmp_path / 'w', image_size=2)
  with pytest.raises(ValueError, match='unknown architecture'):
    run_inprocess(tmp_path / 'w', arch='inception_v99')
  with pytest.raises(finetune.RunError, match='cosine schedule needs'):
    run_inprocess(tmp_path / 'w', steps=4, warmup_epochs=100.0)


def test_flag_errors_come_before_tensorflow(tmp_path):
  # A TensorFlow that cannot be imported: the errors must come before it is needed.
  fake = tmp_path / 'fake' / 'tensorflow'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text('raise ImportError("TensorFlow was imported")\n')
  env = dict(_env(), PYTHONPATH=f'{tmp_path / "fake"}{os.pathsep}{ROOT}')
  for kw, want in [(dict(image_size=2), '--image_size=2 is below the minimum input of '
                    'tiny_test_net (3); use --image_size=3 or more'),
                   (dict(dataset=f'folder:{tmp_path}/nope'), 'no such directory'),
                   (dict(learning_rate=-1), '--learning_rate=-1.0 is invalid')]:
    t0 = time.time()
    r = subprocess.run([sys.executable, '-c', RUN_MAIN] +
                       _cli_args(**{**TINY, 'workdir': tmp_path / 'w', **kw}),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert want in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    print(f'{kw}: refused after {time.time() - t0:.1f} s')
  assert not (tmp_path / 'w').exists()  # no run directory for a refused run


def test_cli_end_to_end_writes_every_output(tmp_path):
  w = tmp_path / 'run'
  r = run_cli(w, steps=4, eval_every=2, horizontal_flip=True, rotation_range=10,
              zoom_range=0.1, fill_mode='reflect', random_resized_crop=True,
              measure_pipeline_seconds=0.5, compilation_cache_dir=tmp_path / 'xla')
  assert r.returncode == 0, r.stderr[-3000:]
  assert (tmp_path / 'xla').is_dir()  # --compilation_cache_dir reached JAX
  assert 'training tiny_test_net from scratch' in r.stderr
  assert 'images/s per CPU core' in r.stderr
  assert 'img/s | ETA' in r.stderr           # plain progress lines without a TTY
  assert '\r' not in r.stderr
  assert 'final validation top-1' in r.stdout
  steps = _rows(w / 'metrics' / 'steps.jsonl')
  assert [s['step'] for s in steps] == [1, 2, 3, 4]
  assert all(np.isfinite(s['loss']) for s in steps)
  evals = _rows(w / 'metrics' / 'evals.jsonl')
  assert [e['step'] for e in evals] == [2, 4]
  assert all(0 <= e['val_top1'] <= e['val_top5'] <= 1 for e in evals)
  for f in ('metrics/steps.csv', 'metrics/evals.csv', 'plots/curves.png',
            'plots/confusion_matrix.png', 'plots/per_class_error.png', 'flags.json'):
    assert (w / f).stat().st_size > 0, f
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(w / 'tensorboard'))
  summary = (w / 'summary.md').read_text()
  for s in ('Per-class validation error', 'best validation top-1', 'wall time',
            'training images/s', '| learning_rate |'):
    assert s in summary
  ckpt = checkpoint_lib.CheckpointManager(w / 'checkpoints')
  assert ckpt.latest_step() == 4
  meta = ckpt.metadata(4)
  assert meta['class_names'] == [str(i) for i in range(10)]
  assert meta['preprocessing']['image_size'] == 24


def test_tensorboard_events_hold_the_scalars(tmp_path):
  import tensorflow as tf
  run_inprocess(tmp_path, steps=2, eval_every=2)
  tags = set()
  for name in os.listdir(tmp_path / 'tensorboard'):
    for ev in tf.compat.v1.train.summary_iterator(str(tmp_path / 'tensorboard' / name)):
      for v in ev.summary.value:
        assert v.metadata.plugin_data.plugin_name == 'scalars'
        tags.add(v.tag)
  assert {'train/loss', 'train/accuracy', 'eval/val_top1'} <= tags


def test_folder_with_bad_files_trains(tmp_path):
  from test_data import _bad_files, _rgb  # pylint: disable=g-import-not-at-top
  from PIL import Image
  for c in ('cat', 'dog'):
    _bad_files(str(tmp_path / 'ds' / c))
    for i in range(4):
      Image.fromarray(_rgb(i)).save(tmp_path / 'ds' / c / f'more{i}.jpg')
  out = run_inprocess(tmp_path / 'w', dataset=f'folder:{tmp_path}/ds',
                      cache_dir=str(tmp_path / 'cache'), batch_size=8, epochs=2,
                      validation_split=0.25, rotation_range=20, horizontal_flip=True)
  # 16 usable images per class (5 kept + 7 converted + 4), 25% held out: 24 train
  # images = 3 steps of 8 per epoch.
  assert out['steps'] == 6
  assert 'bad files' in out['facts'] and '10 skipped' in out['facts']['bad files']
  assert np.isfinite(out['val']['val_loss'])


def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
  kw = dict(steps=24, checkpoint_every=3, eval_every=6, rotation_range=15,
            horizontal_flip=True, dropout_rate=0.3)
  run_inprocess(tmp_path / 'ref', **kw)  # the uninterrupted run (same 8 devices)
  ref_rows = _rows(tmp_path / 'ref' / 'metrics' / 'steps.jsonl')

  w = tmp_path / 'runs' / 'killed'
  args = _cli_args(**{**TINY, 'workdir': w, **kw})
  proc = subprocess.Popen([sys.executable, '-c', RUN_MAIN] + args, cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  steps_file = w / 'metrics' / 'steps.jsonl'
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      if steps_file.exists() and len(_rows(steps_file)) >= 8:
        break
      time.sleep(0.02)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = len(_rows(steps_file))
  assert 8 <= killed_at < 24 and not (w / 'summary.md').exists()
  # Killed at any point, the last complete checkpoint and inference file load.
  import inception_jax as ij  # pylint: disable=g-import-not-at-top
  assert ij.load(str(w)).info['step'] >= 6
  assert ij.load(str(w), checkpoint='latest').info['step'] >= 6
  assert json.loads((w / 'run.json').read_text())['status'] == 'running'

  # --resume finds the newest run of this arch and dataset in --runs_dir.
  args = _cli_args(**{**TINY, **kw, 'runs_dir': tmp_path / 'runs'}) + ['--resume']
  resumed = subprocess.run([sys.executable, '-c', RUN_MAIN] + args, cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Run directory: {w} (resuming)' in resumed.stderr
  assert 'Resumed from checkpoint step' in resumed.stderr
  rows = _rows(steps_file)
  assert [r['step'] for r in rows] == list(range(1, 25))
  for a, b in zip(rows, ref_rows):
    for k in ('loss', 'accuracy', 'grad_norm', 'lr'):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=f'step {a["step"]} {k}')
  evals = _rows(w / 'metrics' / 'evals.jsonl')
  ref_evals = _rows(tmp_path / 'ref' / 'metrics' / 'evals.jsonl')
  assert [e['step'] for e in evals] == [6, 12, 18, 24]
  np.testing.assert_allclose([e['val_loss'] for e in evals],
                             [e['val_loss'] for e in ref_evals], rtol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  with pytest.raises(finetune.RunError, match='loss is (nan|inf).*last good checkpoint'):
    run_inprocess(tmp_path, steps=20, checkpoint_every=1, optimizer='sgd',
                  learning_rate=1e30, schedule='constant')
  ckpt = checkpoint_lib.CheckpointManager(tmp_path / 'checkpoints')
  last = ckpt.latest_step()
  rows = _rows(tmp_path / 'metrics' / 'steps.jsonl')
  assert last is not None and last == len(rows)  # every logged step was finite and saved
  assert all(np.isfinite(r['loss']) for r in rows)
  assert not (tmp_path / 'summary.md').exists()


def test_tfds_dataset_trains(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=32):
    out = run_inprocess(tmp_path, dataset='tfds:mnist', steps=2)
  assert out['steps'] == 2 and np.isfinite(out['val']['val_loss'])


@pytest.mark.parametrize('steps,expected', [
    (44, 0.9),      # 1 - 10/44 = 0.77 -> floor 0.9
    (500, 0.98),    # 1 - 10/500
    (5000, 0.99),   # long enough: the architecture's 0.99
])
def test_auto_bn_momentum_fits_the_run_length(steps, expected):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['finetune'])
  with flagsaver.flagsaver(bn_momentum='auto'):
    assert finetune._bn_momentum('tiny_test_net', steps) == pytest.approx(expected)
  with flagsaver.flagsaver(bn_momentum='0.95'):
    assert finetune._bn_momentum('tiny_test_net', steps) == 0.95
  with flagsaver.flagsaver(bn_momentum='1.5'):
    with pytest.raises(finetune.RunError, match='bn_momentum'):
      finetune._bn_momentum('tiny_test_net', steps)
