"""The fine-tuning CLI: setup errors, an end-to-end run, bad files, resume, NaN, TFDS.

The loop is tested with a two-layer network registered here (the architectures
have their own tests in test_models.py), so each run compiles in seconds; the CLI
runs as a subprocess with ``CI=true`` (no terminal) where the behaviour of the
program as a whole is the point.
"""

import json
import os
import re
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
                   (dict(learning_rate=-1), '--learning_rate=-1.0 is invalid'),
                   (dict(schedule='plateau', validation_split=0.0),
                    '--schedule=plateau needs validation data'),
                   (dict(class_weight='cat=heavy'), "--class_weight='cat=heavy': use"),
                   (dict(monitor='val_f1'), 'value should be one of'),
                   # digits: 1,438 training images (80% of 1,797)
                   (dict(batch_size=2048), 'has 1438 training images, fewer than one '
                    'batch of 2048; lower --batch_size')]:
    t0 = time.time()
    r = subprocess.run([sys.executable, '-c', RUN_MAIN] +
                       _cli_args(**{**TINY, 'workdir': tmp_path / 'w', **kw}),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert want in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    print(f'{kw}: refused after {time.time() - t0:.1f} s')
  assert not (tmp_path / 'w').exists()  # no run directory for a refused run


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------- early stopping, plateau


def _script_validation(monkeypatch, by_step, metric='val_loss'):
  """finetune.evaluate with ``metric`` replaced at the given steps (the decisions
  become known in advance); everything else is real."""
  real = finetune.evaluate
  calls = []

  def evaluate(eval_step, state, mesh, pipe, num_classes):
    val, cm = real(eval_step, state, mesh, pipe, num_classes)
    step = int(np.asarray(state.step.addressable_data(0)))
    calls.append((step, dict(val)))
    if step in by_step:
      val = dict(val, **{metric: by_step[step]})
    return val, cm

  monkeypatch.setattr(finetune, 'evaluate', evaluate)
  return calls


# val_loss at each evaluation (every 2 steps). With patience 4 (early stopping) and 1
# (plateau, factor 0.5): step 4 is the best; steps 6, 8, 10 halve the rate (no
# improvement, patience 1); at step 12 the fourth evaluation without improvement
# stops the run, and the model of step 4 is restored.
SCRIPT = {2: 1.0, 4: 0.9, 6: 0.95, 8: 0.96, 10: 0.97, 12: 0.98, 14: 0.99, 16: 1.0,
          18: 1.0, 20: 1.0}
CALLBACK_FLAGS = dict(steps=20, eval_every=2, checkpoint_every=2, monitor='val_loss',
                      early_stopping_patience=4, schedule='plateau', plateau_patience=1,
                      plateau_factor=0.5, plateau_min_delta=0.0, learning_rate=0.01)


@pytest.fixture
def colours(tmp_path):
  from test_runs import make_folder  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / 'colours')
  return dict(dataset=f'folder:{root}', cache_dir=str(tmp_path / 'cache'), batch_size=16)


@pytest.mark.slow
def test_early_stopping_and_plateau_restore_the_best_and_resume_exactly(
    tmp_path, colours, monkeypatch):
  import inception_jax as ij  # pylint: disable=g-import-not-at-top
  calls = _script_validation(monkeypatch, SCRIPT)
  ref = run_inprocess(tmp_path / 'ref', **colours, **CALLBACK_FLAGS)
  assert ref['stopped_at'] == 12 and ref['final_step'] == 4
  steps = _rows(tmp_path / 'ref' / 'metrics' / 'steps.jsonl')
  assert [r['step'] for r in steps] == list(range(1, 13))
  want_lr = [0.01] * 6 + [0.005] * 2 + [0.0025] * 2 + [0.00125] * 2
  np.testing.assert_allclose([r['lr'] for r in steps], want_lr, rtol=1e-6)
  record = json.loads((tmp_path / 'ref' / 'run.json').read_text())
  assert record['status'] == 'stopped early'
  assert record['stopped_early']['step'] == 12 and record['best']['step'] == 4
  # The reports describe the restored model of step 4, as evaluated at step 4.
  real_at_4 = [v for step, v in calls if step == 4][0]
  final = record['final']
  assert final['step'] == 4 and final['restored'] is True
  assert final['val_top1'] == real_at_4['val_top1'] and final['val_loss'] == 0.9
  assert ij.load(str(tmp_path / 'ref')).info['step'] == 4
  summary = (tmp_path / 'ref' / 'summary.md').read_text()
  assert 'the best by val_loss, restored: epoch 2 (step 4)' in summary
  assert 'early stopping | stopped at step 12' in summary
  ref_evals = _rows(tmp_path / 'ref' / 'metrics' / 'evals.jsonl')

  # Interrupted during step 7 (the last checkpoint is step 6, after the first
  # reduction), then resumed: the callbacks continue exactly.
  make = train_lib.make_train_step

  def dies_at_step_7(*a, **k):
    step = make(*a, **k)
    count = [0]

    def run(*b):
      count[0] += 1
      if count[0] == 7:
        raise KeyboardInterrupt
      return step(*b)
    return run

  monkeypatch.setattr(train_lib, 'make_train_step', dies_at_step_7)
  with pytest.raises(KeyboardInterrupt):
    run_inprocess(tmp_path / 'b', **colours, **CALLBACK_FLAGS)
  monkeypatch.setattr(train_lib, 'make_train_step', make)
  assert checkpoint_lib.CheckpointManager(tmp_path / 'b' / 'checkpoints').latest_step() == 6
  out = run_inprocess(tmp_path / 'b', **colours, **CALLBACK_FLAGS)
  assert (out['stopped_at'], out['final_step']) == (12, 4)
  rows = _rows(tmp_path / 'b' / 'metrics' / 'steps.jsonl')
  assert [r['step'] for r in rows] == list(range(1, 13))
  for a, b in zip(rows, steps):
    for k in ('loss', 'lr'):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=f'step {a["step"]} {k}')
  evals = _rows(tmp_path / 'b' / 'metrics' / 'evals.jsonl')
  assert [e['step'] for e in evals] == [e['step'] for e in ref_evals] == [2, 4, 6, 8, 10, 12]
  np.testing.assert_allclose([e['val_top1'] for e in evals],
                             [e['val_top1'] for e in ref_evals], rtol=1e-6)
  # A stopped run is complete: resuming it trains nothing.
  again = run_inprocess(tmp_path / 'b', **colours, **CALLBACK_FLAGS)
  assert again['complete']


# val_top1 (the default --monitor) at each evaluation: 0.8 first at step 6, tied at
# steps 8 and 12. Evaluations every 2 steps, checkpoints every 4 (step 6 is off the
# checkpoint grid), one recent checkpoint kept.
TIE_SCRIPT = {2: 0.5, 4: 0.6, 6: 0.8, 8: 0.8, 10: 0.7, 12: 0.8}


@pytest.mark.slow
@pytest.mark.parametrize('restore_best', [False, True])
def test_a_tie_keeps_the_first_best_everywhere(tmp_path, colours, monkeypatch,
                                               restore_best):
  """run.json's best, best.safetensors, the kept checkpoint and (with
  --restore_best) the restored model are all step 6: a tie is no improvement."""
  import inception_jax as ij  # pylint: disable=g-import-not-at-top
  _script_validation(monkeypatch, TIE_SCRIPT, metric='val_top1')
  workdir = tmp_path / 'w'
  out = run_inprocess(workdir, **colours, steps=12, eval_every=2, checkpoint_every=4,
                      keep_checkpoints=1, restore_best=restore_best)
  record = json.loads((workdir / 'run.json').read_text())
  assert record['best']['step'] == out['best']['step'] == 6
  assert record['best']['epoch'] == 3.0 and record['best']['val_top1'] == 0.8
  clf = ij.load(str(workdir))
  assert clf.info['step'] == 6
  ckpt = checkpoint_lib.CheckpointManager(workdir / 'checkpoints')
  assert ckpt.all_steps() == [6, 12] and ckpt.best_step() == 6
  # The inference file is the weights of that checkpoint.
  from_ckpt = ij.load(str(workdir), checkpoint=6)
  x = np.random.default_rng(0).normal(size=(2, 24, 24, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(clf.model(x)), np.asarray(from_ckpt.model(x)))
  final = record['final']
  if restore_best:
    assert (final['step'], final['restored'], final['val_top1']) == (6, True, 0.8)
    assert out['final_step'] == 6
  else:
    assert (final['step'], final['restored']) == (12, False)
  # experiments.evaluate of that step gives the inference file's numbers.
  from experiments import evaluate  # pylint: disable=g-import-not-at-top
  at_best = evaluate.run(['evaluate', f'--run={workdir}', '--checkpoint=6'])
  best_file = evaluate.run(['evaluate', f'--run={workdir}'])
  np.testing.assert_allclose(at_best['log_probs'], best_file['log_probs'], atol=1e-6)


def test_epoch_lines_and_callback_messages(tmp_path, colours, monkeypatch):
  """Keras-style lines, without a terminal: metrics, patience counts, new rates."""
  _script_validation(monkeypatch, SCRIPT)
  lines = []
  monkeypatch.setattr(finetune.logging, 'info',
                      lambda msg, *a: lines.append(str(msg) % a if a else str(msg)))
  run_inprocess(tmp_path / 'w', **colours, **dict(CALLBACK_FLAGS, steps=8, eval_every=2))
  text = '\n'.join(lines)
  # 36 training images, batch 16: 2 steps per epoch, so every evaluation ends an epoch.
  assert re.search(r'Epoch 3/4 - \d+s \d+ms/step - loss: \d\.\d{4} - accuracy: '
                   r'\d\.\d{4} - val_loss: 0\.9500 - val_accuracy: \d\.\d{4} - '
                   r'val_top5: \d\.\d{4} - lr: 0\.01\b', text), text
  assert 'Epoch 2: val_loss improved from 1.0000 to 0.9000' in text
  assert ('Epoch 3: val_loss did not improve from 0.9000 (0.9500); early stopping '
          'patience 1/4; ReduceLROnPlateau reducing learning rate to 0.005') in text
  assert 'lr: 0.005' in text  # epoch 4 trained at the reduced rate


def test_class_weight_flag(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  counts = {'blue': 8, 'green': 16, 'red': 24}  # training images per class
  for c, n in counts.items():
    for split, k in (('train', n), ('val', 4)):
      d = tmp_path / 'ds' / split / c
      d.mkdir(parents=True)
      for i in range(k):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            d / f'{i}.png')
  out = run_inprocess(tmp_path / 'w', dataset=f'folder:{tmp_path}/ds', steps=1,
                      cache_dir=str(tmp_path / 'cache'), class_weight='balanced')
  # Keras / scikit-learn 'balanced': n / (n_classes * count) = 48 / (3 * [8, 16, 24]).
  record = json.loads((tmp_path / 'w' / 'run.json').read_text())
  assert record['class_weights'] == pytest.approx({'blue': 2.0, 'green': 1.0,
                                                   'red': 2 / 3})
  assert out['facts']['class weights'].startswith('balanced')

  class Fake:  # what class_weights_of reads of a dataset
    name, class_names = 'fake', ['cat', 'dog', 'eel']
  assert finetune.class_weights_of('dog=3,0=0.5', Fake)[0] == (0.5, 3.0, 1.0)
  with pytest.raises(finetune.RunError, match="no class 'emu' in fake; its classes: cat"):
    finetune.class_weights_of('emu=2', Fake)
  assert finetune.class_weights_of('none', Fake) == (None, 'none')


def test_a_run_recorded_with_the_old_rmsprop_is_not_resumed_as_keras_rmsprop(tmp_path):
  """flags.json from before the rename: optimizer=rmsprop meant the TF RMSProp."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['finetune'])
  w = tmp_path / 'old'
  w.mkdir()
  with flagsaver.flagsaver(**TINY, optimizer='rmsprop', workdir=str(tmp_path / 'new')):
    recorded = finetune.check_flags().hparams
  new_flags = ('monitor', 'early_stopping_patience', 'min_delta', 'restore_best',
               'class_weight', 'plateau_factor', 'plateau_patience', 'plateau_cooldown',
               'plateau_min_delta', 'min_learning_rate')
  old = {k: v for k, v in recorded.items() if k not in new_flags}
  old['momentum'] = 0.9  # recorded explicitly then (the old default)
  (w / 'flags.json').write_text(json.dumps(old))
  with flagsaver.flagsaver(**TINY, optimizer='rmsprop', workdir=str(w)):
    with pytest.raises(finetune.RunError) as e:
      finetune.check_flags()
  msg = str(e.value)
  assert 'now called rmsprop_tf' in msg and '--optimizer=rmsprop_tf' in msg
  assert "run: 'rmsprop_tf'" in msg and "now: 'rmsprop'" in msg
  with flagsaver.flagsaver(**TINY, optimizer='rmsprop_tf', workdir=str(w)):
    plan = finetune.check_flags()  # the same optimizer: resumed
  assert plan.resume and plan.run_dir == str(w)
  # A new run's record says rmsprop and means Keras' RMSprop.
  (w / 'flags.json').write_text(json.dumps(recorded))
  with flagsaver.flagsaver(**TINY, optimizer='rmsprop_tf', workdir=str(w)):
    with pytest.raises(finetune.RunError, match="--optimizer +run: 'rmsprop' +now: "
                                                "'rmsprop_tf'"):
      finetune.check_flags()


def test_plot_curves_uses_epochs_when_there_are_several(tmp_path, monkeypatch):
  from experiments import outputs  # pylint: disable=g-import-not-at-top
  figures = []
  monkeypatch.setattr(outputs, 'save_figure', lambda fig, path: figures.append(fig))
  steps = [dict(step=i, loss=1.0 / i, accuracy=0.1, lr=0.01 if i < 7 else 0.001)
           for i in range(1, 13)]
  evals = [dict(step=i, train_loss=1.0, train_accuracy=0.5, val_loss=0.5, val_top1=0.5,
                val_top5=0.9) for i in (4, 8, 12)]
  outputs.plot_curves(str(tmp_path / 'c.png'), steps, evals, steps_per_epoch=4,
                      best_step=8, stopped_step=12)
  outputs.plot_curves(str(tmp_path / 'c.png'), steps[:4], evals[:1], steps_per_epoch=4)
  several, one = figures
  assert [ax.get_xlabel() for ax in several.axes] == ['epoch'] * 3
  val_line = [l for l in several.axes[0].lines if l.get_label() == 'val loss'][0]
  np.testing.assert_allclose(val_line.get_xdata(), [1, 2, 3])  # evaluations at epochs
  assert several.axes[2].get_title() == 'learning rate'
  assert [ax.get_xlabel() for ax in one.axes] == ['step'] * 3


@pytest.mark.slow
def test_fine_tuning_from_a_pretrained_file_starts_from_its_values(tmp_path, colours):
  """--pretrained with a converted inception_v1_bn file written here (random values).

  GoogLeNet-BN, the smallest ported architecture: the loading path is the same for
  every tag, and its train step compiles in a fraction of Inception-v3's.
  """
  import inception_jax as ij  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from inception_jax import weights  # pylint: disable=g-import-not-at-top
  cfg = ij.get_pretrained_cfg('inception_v1_bn.tv_in1k')
  abstract = nnx.eval_shape(lambda: ij.create_model('inception_v1_bn', num_classes=1000,
                                                    **dict(cfg.options)))
  rng = np.random.default_rng(0)  # values no initialiser produces
  arrays = {k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith('/var') else
                rng.normal(0.0, 0.05, v.shape)).astype(np.float32)
            for k, v in weights.flat_state(abstract).items()}
  path = tmp_path / 'v1_bn.safetensors'
  weights.save(str(path), arrays, dict(arch='inception_v1_bn', tag='tv_in1k', num_classes=1000))
  run = tmp_path / 'run'
  out = run_inprocess(run, **dict(colours, batch_size=8), arch='inception_v1_bn',
                      pretrained=str(path), image_size=75, steps=2, freeze='backbone')
  assert out['steps'] == 2 and np.isfinite(out['val']['val_loss'])
  record = json.loads((run / 'run.json').read_text())
  assert record['status'] == 'finished' and record['pretrained'] == 'inception_v1_bn.tv_in1k'
  trained = weights.to_numpy(ij.load(str(run)).model)
  backbone = [k for k in arrays if not k.startswith('Logits')
              and not k.endswith(('/mean', '/var'))]  # BN statistics do train
  # 57 convolutions (3 in the stem, 6 in each of the 9 Inception modules), each a
  # kernel and a BN scale and bias.
  assert len(backbone) == 57 * 3
  for k in backbone:  # frozen: still the file's values after two steps
    np.testing.assert_array_equal(trained[k], arrays[k], err_msg=k)
  # BN statistics are not frozen by --freeze: they moved in training.
  var = 'Mixed_5c/Branch_0/Conv2d_0a_1x1/bn/var'
  assert not np.array_equal(trained[var], arrays[var])
  assert trained['Logits/kernel'].shape == (1024, 3)  # a new classifier for 3 classes
