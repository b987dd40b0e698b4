"""Keras' ``EarlyStopping`` and ``ReduceLROnPlateau`` as small pure decision classes.

They see one monitored value per evaluation (``update(value, epoch)``) and say what
to do; the training loop acts (stops, or sets the learning rate with
``train.set_lr_factor``). Their state is a small dict (``state_dict`` /
``load_state_dict``) that a checkpoint stores, so a resumed run continues them
exactly. The rules are those of Keras 3 (``keras/src/callbacks/early_stopping.py``,
``reduce_lr_on_plateau.py``, ``monitor_callback.py``), checked side by side in the
tests:

- ``mode`` 'auto' minimises a loss (``*loss``) and maximises an accuracy
  (``*accuracy``, ``*acc``, ``*top1``, ``*top5``).
- An improvement beats the reference by more than ``min_delta``: ``value <
  best - min_delta`` in 'min' mode, ``value > best + min_delta`` in 'max' mode; the
  first value always improves. A NaN never improves.
- ``EarlyStopping``: every evaluation increments ``wait``; an improvement resets it
  to 0 (and records the best); training stops when ``wait >= patience`` at an
  evaluation other than the first.
- ``ReduceLROnPlateau``: during a cooldown ``wait`` stays 0; after ``patience``
  evaluations without improvement the rate becomes ``max(lr * factor, min_lr)``
  (if it is above ``min_lr``), then ``cooldown`` evaluations are ignored.

This module imports neither JAX nor numpy: it is plain Python.
"""

from __future__ import annotations

import math
import struct
from typing import Any


def monitor_mode(monitor: str) -> str:
  """'min' for a loss, 'max' for an accuracy (Keras ``mode='auto'``)."""
  name = monitor.removeprefix('val_')
  if name.endswith('loss'):
    return 'min'
  if name.endswith(('accuracy', 'acc', 'top1', 'top5')):
    return 'max'
  raise ValueError(f'cannot tell whether {monitor!r} should go up or down; pass '
                   "mode='min' or mode='max'")


def is_better(value: float, reference: float | None, mode: str) -> bool:
  """Whether ``value`` replaces ``reference`` as the best (``mode`` 'min' or 'max').

  The one rule for "the best model" (``finetune``'s ``best.safetensors``, run.json's
  best, the kept best checkpoint): strictly better, so a tie keeps the first best
  (Keras' ``EarlyStopping(restore_best_weights=True)`` with ``min_delta=0``); a NaN
  or infinite value is never the best; the first finite value always is.
  """
  if mode not in ('min', 'max'):
    raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
  value = float(value)
  if not math.isfinite(value):
    return False
  if reference is None:
    return True
  return value > reference if mode == 'max' else value < reference


def _float32(x: float) -> float:
  """x rounded to float32, as Keras compares ``lr > np.float32(min_lr)``."""
  return struct.unpack('f', struct.pack('f', x))[0]


class _Monitor:
  """What counts as an improvement of ``monitor`` (Keras ``MonitorCallback``)."""

  def __init__(self, monitor: str, mode: str, min_delta: float):
    if mode == 'auto':
      mode = monitor_mode(monitor)
    if mode not in ('min', 'max'):
      raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))

  def is_improvement(self, value: float, reference: float | None) -> bool:
    if reference is None:
      return True
    if self.mode == 'min':
      return value + self.min_delta < reference
    return value - self.min_delta > reference


class EarlyStopping(_Monitor):
  """Stops training when ``monitor`` has not improved for ``patience`` evaluations.

  Args:
    monitor: the metric's name ('val_loss', 'val_top1' ...), for messages and
      ``mode='auto'``.
    patience: evaluations without improvement before stopping (>= 0).
    min_delta: smallest change that counts as an improvement (Keras default 0).
    mode: 'auto', 'min' or 'max'.
    baseline: a value to beat: until one does, ``wait`` is not reset.

  Attributes (the state): ``wait``, ``best``, ``best_epoch``, ``stopped_epoch``
  (None until it stops).
  """

  def __init__(self, monitor: str = 'val_loss', patience: int = 0,
               min_delta: float = 0.0, mode: str = 'auto',
               baseline: float | None = None):
    super().__init__(monitor, mode, min_delta)
    if patience < 0:
      raise ValueError(f'patience must be >= 0, got {patience}')
    self.patience, self.baseline = int(patience), baseline
    self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, None, None, None

  def update(self, value: float, epoch: int) -> bool:
    """Sees the value of evaluation ``epoch`` (0-based); True: stop training."""
    value = float(value)
    self.wait += 1
    if self.is_improvement(value, self.best):
      self.best, self.best_epoch = value, epoch
      if self.baseline is None or self.is_improvement(value, self.baseline):
        self.wait = 0
      return False
    if self.wait >= self.patience and epoch > 0:
      self.stopped_epoch = epoch
      return True
    return False

  def state_dict(self) -> dict[str, Any]:
    return dict(wait=self.wait, best=self.best, best_epoch=self.best_epoch,
                stopped_epoch=self.stopped_epoch)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.wait = int(state['wait'])
    self.best = None if state['best'] is None else float(state['best'])
    self.best_epoch, self.stopped_epoch = state['best_epoch'], state['stopped_epoch']


class ReduceLROnPlateau(_Monitor):
  """Multiplies the learning rate by ``factor`` when ``monitor`` stops improving.

  Args:
    learning_rate: the rate to begin with.
    monitor: the metric's name.
    factor: in (0, 1) (Keras default 0.1).
    patience: evaluations without improvement before a reduction (Keras 10).
    min_delta: smallest change that counts as an improvement (Keras 1e-4).
    cooldown: evaluations to wait after a reduction before counting again
      (Keras 0).
    min_lr: the rate never goes below it (Keras 0).
    mode: 'auto', 'min' or 'max'.

  Attributes (the state): ``lr``, ``best``, ``wait``, ``cooldown_counter``.
  """

  def __init__(self, learning_rate: float, monitor: str = 'val_loss',
               factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
               cooldown: int = 0, min_lr: float = 0.0, mode: str = 'auto'):
    super().__init__(monitor, mode, min_delta)
    if not 0.0 < factor < 1.0:
      raise ValueError(f'factor must be in (0, 1), got {factor}')
    if patience < 0 or cooldown < 0 or min_lr < 0:
      raise ValueError(f'patience ({patience}), cooldown ({cooldown}) and min_lr '
                       f'({min_lr}) must be >= 0')
    self.factor, self.patience = float(factor), int(patience)
    self.cooldown, self.min_lr = int(cooldown), float(min_lr)
    self.lr = float(learning_rate)
    self.best, self.wait, self.cooldown_counter = None, 0, 0

  def in_cooldown(self) -> bool:
    return self.cooldown_counter > 0

  def update(self, value: float, epoch: int) -> float | None:
    """Sees the value of evaluation ``epoch``; returns the new rate, or None."""
    del epoch  # Keras uses it only in its message
    value = float(value)
    if self.in_cooldown():
      self.cooldown_counter -= 1
      self.wait = 0
    if self.is_improvement(value, self.best):
      self.best, self.wait = value, 0
    elif not self.in_cooldown():
      self.wait += 1
      if self.wait >= self.patience and self.lr > _float32(self.min_lr):
        self.lr = max(self.lr * self.factor, self.min_lr)
        self.cooldown_counter, self.wait = self.cooldown, 0
        return self.lr
    return None

  def state_dict(self) -> dict[str, Any]:
    return dict(lr=self.lr, best=self.best, wait=self.wait,
                cooldown_counter=self.cooldown_counter)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.lr = float(state['lr'])
    self.best = None if state['best'] is None else float(state['best'])
    self.wait, self.cooldown_counter = int(state['wait']), int(state['cooldown_counter'])


__all__ = ['EarlyStopping', 'ReduceLROnPlateau', 'is_better', 'monitor_mode']
