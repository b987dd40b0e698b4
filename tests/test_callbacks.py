"""EarlyStopping and ReduceLROnPlateau against hand-computed sequences and Keras itself."""

import json
import os
import subprocess
import sys

import pytest

from inception_jax import callbacks


def run(cb, values):
  return [cb.update(v, epoch) for epoch, v in enumerate(values)]


def test_modes_from_the_metric_name():
  assert callbacks.monitor_mode('val_loss') == 'min'
  assert callbacks.monitor_mode('val_top1') == 'max'
  assert callbacks.monitor_mode('val_accuracy') == 'max'
  with pytest.raises(ValueError, match="mode='min' or mode='max'"):
    callbacks.monitor_mode('val_f1ish')


def test_early_stopping_by_hand():
  # val_loss, patience 2, min_delta 0.1: an improvement must be below best - 0.1.
  es = callbacks.EarlyStopping('val_loss', patience=2, min_delta=0.1)
  # e0: first value, best 1.0.  e1: 0.95 > 0.9, wait 1.  e2: 0.8 < 0.9, best 0.8,
  # wait 0.  e3: 0.75 > 0.7, wait 1.  e4: 0.79, wait 2 >= 2: stop at epoch 4.
  stops = run(es, [1.0, 0.95, 0.8, 0.75, 0.79])
  assert stops == [False, False, False, False, True]
  assert (es.stopped_epoch, es.best, es.best_epoch) == (4, 0.8, 2)
  # max mode on accuracy, min_delta 0: equal is no improvement.
  es = callbacks.EarlyStopping('val_top1', patience=1)
  assert run(es, [0.5, 0.5]) == [False, True]
  # The first evaluation never stops (Keras: epoch > 0), even with patience 0.
  es = callbacks.EarlyStopping('val_top1', patience=0)
  assert run(es, [0.5, 0.4]) == [False, True]
  # A NaN never improves.
  es = callbacks.EarlyStopping('val_loss', patience=1)
  assert run(es, [1.0, float('nan')]) == [False, True]


def test_is_better_by_hand():
  """The best model's rule: strictly better, so a tie keeps the first best."""
  assert callbacks.is_better(0.5, None, 'max') and callbacks.is_better(9.0, None, 'min')
  assert callbacks.is_better(0.6, 0.5, 'max') and not callbacks.is_better(0.5, 0.5, 'max')
  assert callbacks.is_better(0.4, 0.5, 'min') and not callbacks.is_better(0.5, 0.5, 'min')
  assert not callbacks.is_better(0.4, 0.5, 'max') and not callbacks.is_better(0.6, 0.5, 'min')
  for bad in (float('nan'), float('inf'), float('-inf')):
    assert not callbacks.is_better(bad, None, 'max')
    assert not callbacks.is_better(bad, 0.5, 'min')
  with pytest.raises(ValueError, match="'min' or 'max'"):
    callbacks.is_better(0.5, 0.4, 'auto')


def test_reduce_lr_on_plateau_by_hand():
  # val_top1 (max), factor 0.5, patience 2, min_delta 0.01, cooldown 1, min_lr 0.2.
  p = callbacks.ReduceLROnPlateau(1.0, 'val_top1', factor=0.5, patience=2, min_delta=0.01,
                                  cooldown=1, min_lr=0.2)
  values = [0.50, 0.505, 0.51, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60]
  # e0 best 0.50.  e1 0.505 <= 0.51: wait 1.  e2 0.51 <= 0.51: wait 2 -> lr 0.5,
  # cooldown 1.  e3 cooldown 1 -> 0, 0.60 > 0.51: best 0.60.  e4 wait 1.  e5 wait 2 ->
  # lr 0.25, cooldown 1.  e6 cooldown -> 0 (wait 0), no improvement, not in cooldown:
  # wait 1.  e7 wait 2 -> max(0.125, 0.2) = 0.2, cooldown 1.  e8 as e6: wait 1.  e9
  # wait 2, but lr 0.2 is not above min_lr: no change, wait not reset.  e10 wait 3.
  got = run(p, values)
  assert got == [None, None, 0.5, None, None, 0.25, None, 0.2, None, None, None]
  assert (p.lr, p.wait, p.cooldown_counter) == (0.2, 3, 0)


def test_state_round_trip_continues_exactly():
  values = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.9, 0.95, 0.99]
  for make in (lambda: callbacks.EarlyStopping('val_loss', patience=3),
               lambda: callbacks.ReduceLROnPlateau(0.1, 'val_loss', patience=1, cooldown=1)):
    ref = run(make(), values)
    first = make()
    head = [first.update(v, e) for e, v in enumerate(values[:4])]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    second = make()
    second.load_state_dict(state)
    tail = [second.update(v, e) for e, v in enumerate(values[4:], start=4)]
    assert head + tail == ref


KERAS = """
import json
import keras

class FakeModel:  # what the callbacks touch: stop_training, the optimizer's rate and
  def __init__(self):  # the weights (here: the epoch that produced them)
    self.stop_training = False
    self.optimizer = keras.optimizers.SGD(learning_rate=1.0)
    self.epoch = None

  def get_weights(self):
    return [self.epoch]

out, best = {}, {}
for name, values, kw in %r:
  model = FakeModel()
  if name == 'es':
    cb = keras.callbacks.EarlyStopping(restore_best_weights=True, **kw)
  else:
    cb = keras.callbacks.ReduceLROnPlateau(**kw)
  cb.set_model(model)
  cb.on_train_begin()
  seen = []
  for epoch, v in enumerate(values):
    model.epoch = epoch
    cb.on_epoch_end(epoch, {kw['monitor']: v})
    seen.append([model.stop_training, float(model.optimizer.learning_rate)])
    if model.stop_training:
      break
  if name == 'es':  # the epoch of the weights restore_best_weights would restore
    best[str(len(out))] = cb.best_weights[0]
  out[str(len(out))] = seen
print(json.dumps(dict(out, best=best)))
"""

CASES = [
    ('es', [1.0, 0.95, 0.8, 0.75, 0.79, 0.1],
     dict(monitor='val_loss', patience=2, min_delta=0.1, mode='min')),
    ('es', [0.3, 0.5, 0.5, 0.49, 0.6, 0.6, 0.6, 0.6],
     dict(monitor='val_top1', patience=3, mode='max')),
    ('es', [0.3, 0.2, 0.4], dict(monitor='val_top1', patience=0, mode='max')),
    ('es', [1.0, 0.8, 0.9, 0.8, 0.8, 0.85], dict(monitor='val_loss', patience=10,
                                                 mode='min')),
    ('rl', [0.50, 0.505, 0.51, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60],
     dict(monitor='val_top1', factor=0.5, patience=2, min_delta=0.01, cooldown=1,
          min_lr=0.2, mode='max')),
    ('rl', [2.0, 1.9, 1.95, 1.9, 1.7, 1.8, 1.8, 1.8, 1.8],
     dict(monitor='val_loss', factor=0.1, patience=1, mode='min')),
]


def test_same_decisions_as_keras():
  """keras.callbacks.EarlyStopping / ReduceLROnPlateau driven with the same values."""
  r = subprocess.run([sys.executable, '-c', KERAS % (CASES,)],
                     env=dict(os.environ, KERAS_BACKEND='jax'), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  keras_out = json.loads(r.stdout.strip().splitlines()[-1])
  for i, (name, values, kw) in enumerate(CASES):
    kw = {k: v for k, v in kw.items()}
    if name == 'es':
      cb = callbacks.EarlyStopping(**kw)
      ours = []
      for epoch, v in enumerate(values):
        stop = cb.update(v, epoch)
        ours.append([stop, 1.0])
        if stop:
          break
    else:
      cb = callbacks.ReduceLROnPlateau(1.0, **kw)
      ours = [[False, (cb.update(v, epoch), cb.lr)[1]] for epoch, v in enumerate(values)]
    theirs = keras_out[str(i)]
    assert len(ours) == len(theirs), (i, ours, theirs)
    for (s1, lr1), (s2, lr2) in zip(ours, theirs):
      assert s1 == s2 and lr1 == pytest.approx(lr2, rel=1e-6), (i, ours, theirs)
    if name == 'es' and not kw.get('min_delta'):
      # The best model (callbacks.is_better over the evaluations seen: finetune's
      # best.safetensors and kept checkpoint) is the one Keras restores; ties too.
      mode, best = callbacks.monitor_mode(kw['monitor']), None
      for epoch, v in enumerate(values[:len(ours)]):
        if callbacks.is_better(v, None if best is None else values[best], mode):
          best = epoch
      assert best == keras_out['best'][str(i)], (i, best, keras_out['best'])
