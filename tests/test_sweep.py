"""Sweeps and comparisons.

One 4-cell sweep (``batch_size=16,48 x optimizer=adam,sgd`` of ``tiny_test_net`` on
a generated 3-class folder of 36 training images: the two cells of batch 48 fail
at run time, fewer than one batch) is shared by the module; the same grid is then
swept again in two shards, one of them killed mid-cell and resumed, and the two
comparison tables must agree. Each cell is a finetune process, as in real use.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import compare
from experiments import sweep
from test_finetune import ROOT, TINY_ARCH  # registers tiny_test_net
from test_runs import make_folder

# A cell's program: finetune with tiny_test_net registered; with
# SWEEP_TEST_STEP_SECONDS set every training step also sleeps (a window to kill it).
CHILD = f'import sys; sys.path.insert(0, {ROOT!r})\n' + TINY_ARCH + '''
import os, time
from absl import app
from experiments import finetune
from inception_jax import train as train_lib
_pause = float(os.environ.get('SWEEP_TEST_STEP_SECONDS', 0))
if _pause:
  _make = train_lib.make_train_step
  def _slow(*a, **k):
    step = _make(*a, **k)
    def run(*b):
      time.sleep(_pause)
      return step(*b)
    return run
  train_lib.make_train_step = _slow
app.run(finetune.main)
'''
COMMAND = [sys.executable, '-c', CHILD]
# The sweep command itself, for the test that kills it.
SWEEP_MAIN = f'import sys; sys.path.insert(0, {ROOT!r})\n' + TINY_ARCH + f'''
from experiments import sweep
sweep.run_main({COMMAND!r})
'''
GRID = 'batch_size=16,48 optimizer=adam,sgd'
CELLS = ['batch_size=16+optimizer=adam', 'batch_size=16+optimizer=sgd',
         'batch_size=48+optimizer=adam', 'batch_size=48+optimizer=sgd']
# Timing and place: differ between two sweeps of the same grid.
VARIES = ('wall_seconds', 'train_images_per_second', 'first_step_seconds', 'run_dir')


@pytest.fixture(scope='module')
def test_folder(tmp_path_factory):
  """The colour folder: train/ and val/ for the runs; its test/ kept apart (a run with
  a test split would also evaluate it, which the sweep tests do not need)."""
  data = make_folder(tmp_path_factory.mktemp('sweep_data') / 'colours')
  shutil.move(data / 'test', data.parent / 'colours_test')
  return data.parent / 'colours_test'


@pytest.fixture(scope='module')
def fixed(test_folder):
  data = test_folder.parent / 'colours'
  return ['--arch=tiny_test_net', '--image_size=24', '--measure_pipeline_seconds=0',
          f'--dataset=folder:{data}', '--epochs=3', f'--cache_dir={data}_cache']


@pytest.fixture(scope='module')
def swept(fixed, tmp_path_factory):
  root = tmp_path_factory.mktemp('sweep') / 'root'
  result = sweep.run_sweep(str(root), GRID, fixed, quiet=True, command=COMMAND)
  return root, result


def _csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _no_process(monkeypatch):
  def boom(*a, **k):
    raise AssertionError('a cell was started')
  monkeypatch.setattr(subprocess, 'Popen', boom)


@pytest.mark.slow
def test_sweep_runs_each_cell_and_records_the_failures(swept, fixed):
  root, result = swept
  assert [c.name for c in result.cells] == CELLS
  assert result.states == {CELLS[0]: 'done', CELLS[1]: 'done', CELLS[2]: 'failed',
                           CELLS[3]: 'failed'}
  for name in CELLS[:2]:
    flags_json = json.loads((root / name / 'flags.json').read_text())
    batch, opt = name.replace('batch_size=', '').split('+optimizer=')
    assert (flags_json['batch_size'], flags_json['optimizer']) == (int(batch), opt)
    assert flags_json['epochs'] == 3 and flags_json['arch'] == 'tiny_test_net'
    assert json.loads((root / name / 'run.json').read_text())['status'] == 'finished'
  for name in CELLS[2:]:
    cell = json.loads((root / 'logs' / f'{name}.json').read_text())
    assert cell['status'] == 'failed' and cell['values']['batch_size'] == 48
    assert 'fewer than one batch of 48' in cell['error']
    assert 'fewer than one batch' in (root / 'logs' / f'{name}.log').read_text()
  # One row per cell; the failed ones last, with their error.
  rows = _csv(root / 'comparison.csv')
  assert [r['run'] for r in rows][2:] == CELLS[2:]
  assert sorted(r['run'] for r in rows[:2]) == CELLS[:2]
  assert [r['status'] for r in rows] == ['finished', 'finished', 'failed', 'failed']
  assert float(rows[0]['best_val_top1']) >= float(rows[1]['best_val_top1'])
  assert all(r['error'] == '' for r in rows[:2])
  assert all('fewer than one batch' in r['error'] for r in rows[2:])
  assert list(rows[0])[2:4] == ['batch_size', 'optimizer']  # the varied flags, grid order
  md = (root / 'comparison.md').read_text()
  assert '| # | batch_size | optimizer | status |' in md and '## Errors' in md
  assert (root / 'comparison.png').stat().st_size > 10_000
  assert json.loads((root / 'sweep.json').read_text())['cells'] == CELLS


@pytest.mark.slow
def test_rerun_skips_finished_cells(swept, fixed, monkeypatch):
  root, _ = swept
  _no_process(monkeypatch)
  result = sweep.run_sweep(str(root), GRID, fixed, quiet=True, retry_failed=False,
                           command=COMMAND)
  assert result.states == {CELLS[0]: 'done', CELLS[1]: 'done', CELLS[2]: 'failed',
                           CELLS[3]: 'failed'}
  # Other fixed flags: a finished cell is not passed off as the new sweep's.
  with pytest.raises(sweep.SweepError, match=r'--epochs +run: 3 +now: 4'):
    sweep.run_sweep(str(root), GRID, [f for f in fixed if 'epochs' not in f] +
                    ['--epochs=4'], quiet=True, command=COMMAND)


def test_mistakes_are_refused_before_anything_runs(fixed, tmp_path, monkeypatch):
  _no_process(monkeypatch)
  root = str(tmp_path / 'root')
  no_size = [f for f in fixed if not f.startswith('--image_size')]
  for grid, args, want in [
      ('batchsize=16,32', [], r"unknown flag 'batchsize'.*did you mean --batch_size"),
      ('batch_size=16,4.5', [], r'batch_size=4.5 is not a valid value of --batch_size'),
      ('optimizer=adam,adamw', [], r'optimizer=adamw is not a valid value.*adam\|sgd'),
      ('horizontal_flip=yes_please', [], r'not a valid value of --horizontal_flip'),
      ('seed=1,1', [], 'lists the value'),
      ('workdir=a,b', [], 'cannot be an axis'),
      ('optimizer=adam seed=1 optimizer=sgd', [], 'given twice'),
      ('optimizer', [], 'is not NAME=VALUE'),
      ('', [], '--grid is empty'),
      ('seed=1,2', ['--optimiser=sgd'], r"after --: unknown flag 'optimiser'.*--optimizer"),
      ('seed=1,2', ['--epochs=two'], 'after --'),
      ('seed=1,2', ['--seed=3'], 'both a grid axis and a fixed flag'),
      ('seed=1,2', ['--runs_dir=x'], 'cannot be given to a sweep'),
  ]:
    with pytest.raises(sweep.SweepError, match=want):
      sweep.run_sweep(root, grid, fixed + args, quiet=True, command=COMMAND)
  # finetune's own checks, per cell.
  with pytest.raises(sweep.SweepError,
                     match=r'cell image_size=2: --image_size=2 is below the minimum'):
    sweep.run_sweep(root, 'image_size=24,2', no_size, quiet=True, command=COMMAND)
  with pytest.raises(sweep.SweepError, match='cell arch=inception_v99: .*unknown arch'):
    sweep.run_sweep(root, 'arch=tiny_test_net,inception_v99',
                    [f for f in fixed if not f.startswith('--arch')], command=COMMAND)
  with pytest.raises(sweep.SweepError, match='--root is required'):
    sweep.run_sweep('', 'seed=1,2', fixed, command=COMMAND)
  for shard in ('2/2', '1', '-1/2', 'a/b'):
    with pytest.raises(sweep.SweepError, match='--shard'):
      sweep.run_sweep(root, 'seed=1,2', fixed, shard=shard, command=COMMAND)
  assert not os.path.exists(root)


def test_cell_names_and_pretrained_tags_as_an_axis(fixed, tmp_path, monkeypatch):
  axes = sweep.parse_grid('arch=inception_v3.tf_in1k,inception_resnet_v2.tf_in1k '
                          'learning_rate=1e-3,0.01 dataset=folder:/data/a,folder:/x/b')
  cells, _ = sweep.check_grid(axes, [])
  assert len(cells) == 8
  assert cells[0].name == 'arch=inception_v3.tf_in1k+learning_rate=1e-3+dataset=a'
  assert cells[-1].args() == ['--arch=inception_resnet_v2.tf_in1k', '--learning_rate=0.01',
                              '--dataset=folder:/x/b']
  assert dict(cells[0].parsed)['learning_rate'] == 0.001
  with pytest.raises(sweep.SweepError, match='would share the directory'):
    sweep.check_grid(sweep.parse_grid('dataset=folder:/a/x,folder:/b/x'), [])
  # Tags pass finetune's checks (the weights are needed only when the cell runs).
  _no_process(monkeypatch)
  result = sweep.run_sweep(str(tmp_path / 'r'), 'arch=inception_v3.tf_in1k,inception_v3',
                           [f for f in fixed if 'arch' not in f and 'image_size' not in f]
                           + ['--image_size=75'], dry_run=True, command=COMMAND)
  assert result.states == {'arch=inception_v3.tf_in1k': 'new', 'arch=inception_v3': 'new'}


def _killed_mid_cell(root, fixed):
  """Runs shard 1/2 as a command and kills it (and its cell) after a checkpoint."""
  env = dict(os.environ, CI='true', SWEEP_TEST_STEP_SECONDS='0.5')
  proc = subprocess.Popen(
      [sys.executable, '-c', SWEEP_MAIN, f'--root={root}', f'--grid={GRID}', '--shard=1/2',
       '--'] + fixed, env=env, cwd=ROOT, start_new_session=True,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  steps = root / CELLS[1] / 'metrics' / 'steps.jsonl'
  deadline = time.time() + 300
  try:
    while time.time() < deadline and proc.poll() is None:
      if steps.exists() and len(steps.read_text().splitlines()) >= 3:
        break  # step 3 of 6: the checkpoint of epoch 1 (step 2) is written
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  # The cell's process (not our child) may take a moment to go after SIGKILL.
  lock = root / 'logs' / f'{CELLS[1]}.lock'
  pids = json.loads(lock.read_text())['pids']
  while time.time() < deadline and any(sweep._alive(p) for p in pids):  # pylint: disable=protected-access
    time.sleep(0.1)
  return len(steps.read_text().splitlines())


@pytest.mark.slow
def test_shards_gather_into_the_same_table_and_a_killed_cell_resumes(swept, fixed,
                                                                      tmp_path):
  root_a, _ = swept
  root = tmp_path / 'sharded'
  sweep.run_sweep(str(root), GRID, fixed, shard='0/2', quiet=True, command=COMMAND)
  assert {p for p in os.listdir(root) if '=' in p} == {CELLS[0]}  # cell 2 failed early

  killed_at = _killed_mid_cell(root, fixed)
  assert 3 <= killed_at < 6
  record = json.loads((root / CELLS[1] / 'run.json').read_text())
  assert record['status'] == 'running'  # killed: no end recorded
  result = sweep.run_sweep(str(root), GRID, fixed, shard='1/2', quiet=True,
                           command=COMMAND)
  assert result.states == {CELLS[1]: 'done', CELLS[3]: 'failed'}
  record = json.loads((root / CELLS[1] / 'run.json').read_text())
  starts = [a['start_step'] for a in record['attempts']]
  assert starts[0] == 0 and starts[1] in (2, 4)  # resumed at its last epoch checkpoint
  cell = json.loads((root / 'logs' / f'{CELLS[1]}.json').read_text())
  assert [a['resumed'] for a in cell['attempts']] == [False, True]

  a = _csv(root_a / 'comparison.csv')
  b = _csv(root / 'comparison.csv')
  assert [r['run'] for r in a] == [r['run'] for r in b]
  for ra, rb in zip(a, b):
    for k in ra:
      if k in VARIES or not ra[k]:
        assert bool(ra[k]) == bool(rb[k]) or k in VARIES, k
        continue
      try:
        np.testing.assert_allclose(float(ra[k]), float(rb[k]), rtol=1e-5, err_msg=k)
      except ValueError:
        assert ra[k] == rb[k], k


# --------------------------------------------------------------------------- compare


def _write_run(root, name, flags, record, evals):
  d = root / name
  (d / 'metrics').mkdir(parents=True)
  (d / 'flags.json').write_text(json.dumps(flags))
  (d / 'run.json').write_text(json.dumps(record))
  (d / 'metrics' / 'evals.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in evals))
  return d


def _ev(epoch, top1, loss):
  return dict(step=10 * epoch, epoch=float(epoch), train_loss=1.0, val_top1=top1,
              val_loss=loss, val_top5=1.0)


def test_compare_hand_written_runs(tmp_path):
  base = dict(arch='inception_v3', dataset='folder:/data/flowers', epochs=3,
              batch_size=32, workdir='/somewhere', compilation_cache_dir='/c')
  rec = dict(status='finished', params=21_800_000, wall_seconds=600.0,
             train_images_per_second=50.0, first_step_seconds=30.0)
  root = tmp_path / 'runs'
  # a: best top-1 0.80 at epoch 2, best loss 0.50 at epoch 3, final 0.78.
  _write_run(root, 'a', dict(base, image_size=150, optimizer='adam'), rec,
             [_ev(1, 0.60, 0.90), _ev(2, 0.80, 0.55), _ev(3, 0.78, 0.50)])
  # b: best 0.90 at epoch 3 (tested), slower.
  _write_run(root, 'b', dict(base, image_size=299, optimizer='adam', workdir='/else'),
             dict(rec, wall_seconds=3725.0, test=dict(top1=0.875, top5=0.99, loss=0.4,
                                                      count=40)),
             [_ev(1, 0.70, 0.80), _ev(2, 0.85, 0.60), _ev(3, 0.90, 0.45)])
  # c: ties a at 0.80 with a lower best loss (0.40): ranks before a. NaN written as
  # a string by the metrics logger is no score.
  _write_run(root, 'c', dict(base, image_size=150, optimizer='rmsprop'), rec,
             [_ev(1, 'nan', 'nan'), _ev(2, 0.80, 0.40)])
  # d: killed before its first evaluation.
  _write_run(root, 'd', dict(base, image_size=299, optimizer='rmsprop'),
             dict(status='running', params=21_800_000), [])
  # A sweep cell that failed before its run directory existed.
  (root / 'logs').mkdir()
  (root / 'logs' / 'x.json').write_text(json.dumps(dict(
      name='image_size=75+optimizer=sgd', status='failed', error='out of memory\nmore',
      values=dict(image_size=75, optimizer='sgd'))))
  (root / 'not_a_run').mkdir()

  runs = compare.find_runs([str(root)])
  assert compare.varied_flags(runs) == ['image_size', 'optimizer']  # workdir: plumbing
  text = compare.write_comparison(str(root), runs)
  rows = _csv(root / 'comparison.csv')
  assert [r['run'] for r in rows] == ['b', 'c', 'a', 'd', 'image_size=75+optimizer=sgd']
  want = {  # run: best top-1 (epoch), best loss (epoch), final top-1 (epoch), test top-1
      'b': ('0.9', '3.0', '0.45', '3.0', '0.9', '3.0', '0.875'),
      'c': ('0.8', '2.0', '0.4', '2.0', '0.8', '2.0', ''),
      'a': ('0.8', '2.0', '0.5', '3.0', '0.78', '3.0', ''),
      'd': ('', '', '', '', '', '', ''),
  }
  for r in rows[:4]:
    assert (r['best_val_top1'], r['best_val_top1_epoch'], r['best_val_loss'],
            r['best_val_loss_epoch'], r['final_val_top1'], r['final_epoch'],
            r['test_top1']) == want[r['run']], r['run']
  assert [r['status'] for r in rows] == ['finished'] * 3 + ['running', 'failed']
  assert rows[4]['image_size'] == '75' and rows[4]['error'].startswith('out of memory')
  lines = text.splitlines()
  assert ('| # | image_size | optimizer | status | params | best val top-1 (epoch) | best val '
          'loss (epoch) | final val top-1 (epoch) | test top-1 / top-5 / loss | wall time | '
          'train img/s | run |') in lines
  assert ('| 1 | 299 | adam | finished | 21.80M | 90.00% (3) | 0.4500 (3) | 90.00% (3) | '
          '87.50% / 99.00% / 0.4000 | 1:02:05 | 50.0 | b |') in lines
  assert ('| 3 | 150 | adam | finished | 21.80M | 80.00% (2) | 0.5000 (3) | 78.00% (3) | - '
          '| 0:10:00 | 50.0 | a |') in lines
  assert '| 5 | 75 | sgd | failed | - | - | - | - | - | - | - | image_size=75+optimizer=sgd |' \
      in lines
  assert ('Shared by all runs: arch=inception_v3, dataset=folder:flowers, batch_size=32, '
          'epochs=3') in text
  assert '- image_size=75+optimizer=sgd: out of memory' in lines
  assert (root / 'comparison.png').stat().st_size > 10_000

  # A run directory given alone; an empty folder; nothing at all.
  assert [r.name for r in compare.find_runs([str(root / 'a'), str(root / 'b')])] == ['a', 'b']
  with pytest.raises(compare.CompareError, match='holds no run directories'):
    compare.find_runs([str(root / 'not_a_run')])
  with pytest.raises(compare.CompareError, match='no such directory'):
    compare.find_runs([str(tmp_path / 'nope')])


def test_compare_final_is_the_model_the_run_ended_with(tmp_path):
  """run.json's final (the restored best with --restore_best or early stopping) is
  the final column; records without one, or of a run not finished, fall back to
  the last evaluation."""
  root = tmp_path / 'runs'
  evals = [_ev(1, 0.60, 0.90), _ev(2, 0.85, 0.50), _ev(3, 0.75, 0.70), _ev(4, 0.70, 0.80)]
  # Stopped early at epoch 4, the model of epoch 2 restored and re-evaluated (its
  # record's numbers, here a little off the evaluation of epoch 2, are what counts).
  _write_run(root, 'early', dict(arch='x', seed=1), dict(
      status='stopped early', final=dict(step=20, epoch=2.0, restored=True,
                                         val_top1=0.84, val_loss=0.51, val_top5=1.0)),
             evals)
  # Finished without restoring: the record's final is the last evaluation.
  _write_run(root, 'last', dict(arch='x', seed=2), dict(
      status='finished', final=dict(step=40, epoch=4.0, restored=False, val_top1=0.70,
                                    val_loss=0.80, val_top5=1.0)), evals)
  # A record from before run.json had a final.
  _write_run(root, 'old', dict(arch='x', seed=3), dict(status='finished'), evals)
  # Resumed after it finished, then failed: its final is of an earlier attempt.
  _write_run(root, 'failed', dict(arch='x', seed=4), dict(
      status='failed', error='boom', final=dict(step=20, epoch=2.0, restored=True,
                                                val_top1=0.84, val_loss=0.51)),
             evals + [_ev(5, 0.65, 0.85)])
  runs = compare.find_runs([str(root)])
  got = {r.name: (r.final.get('val_top1'), r.final.get('epoch'), r.final.get('restored'))
         for r in runs}
  assert got == {'early': (0.84, 2.0, True), 'last': (0.70, 4.0, False),
                 'old': (0.70, 4.0, None), 'failed': (0.65, 5.0, None)}
  text = compare.write_comparison(str(root), runs)
  rows = {r['run']: r for r in _csv(root / 'comparison.csv')}
  assert (rows['early']['final_val_top1'], rows['early']['final_val_loss'],
          rows['early']['final_epoch'], rows['early']['final_restored']) == (
              '0.84', '0.51', '2.0', 'True')
  assert (rows['old']['final_val_top1'], rows['old']['final_epoch'],
          rows['old']['final_restored']) == ('0.7', '4.0', '')
  assert rows['failed']['final_val_top1'] == '0.65'
  lines = text.splitlines()
  # Best (0.85, epoch 2, from the evaluations) and final (the restored model) differ;
  # equal best scores rank by name.
  assert any(l.startswith('| 1 | 1 | stopped early | - | 85.00% (2) | 0.5000 (2) | '
                          '84.00% (2, restored) |') for l in lines), text
  assert any(l.startswith('| 3 | 2 | finished | - | 85.00% (2) | 0.5000 (2) | '
                          '70.00% (4) |') for l in lines), text
  assert '"final" is the model the run ended with' in text


def test_compare_command(tmp_path):
  _write_run(tmp_path / 'r', 'a', dict(arch='x', seed=1), dict(status='finished'),
             [_ev(1, 0.5, 1.0)])
  _write_run(tmp_path / 'r', 'b', dict(arch='x', seed=2), dict(status='finished'),
             [_ev(1, 0.6, 0.9)])
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, '-m', 'experiments.compare', str(tmp_path / 'r')],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert '| 1 | 2 | finished |' in r.stdout and (tmp_path / 'r' / 'comparison.csv').exists()
  r = subprocess.run([sys.executable, '-m', 'experiments.compare', str(tmp_path / 'empty')],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and 'no such directory' in r.stderr
  assert 'Traceback' not in r.stderr
