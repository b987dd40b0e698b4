"""What a fine-tuning run leaves in its workdir: metrics, TensorBoard, plots, summary.

``workdir/``
  ``metrics/steps.jsonl`` + ``steps.csv``: one row per training step.
  ``metrics/evals.jsonl`` + ``evals.csv``: one row per evaluation (epoch, step, train
  averages since the previous one, validation loss/top-1/top-5).
  ``tensorboard/``: the same scalars as TF event files.
  ``plots/curves.png``, ``plots/confusion_matrix.png``, ``plots/per_class_error.png``.
  ``summary.md``: hyperparameters, wall time, images/s, best validation accuracy and
  the per-class error table.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Sequence

import numpy as np


def _clean(v: Any) -> Any:
  if isinstance(v, (np.floating, np.integer)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf
  return v


class _Table:
  """A JSONL file with a CSV twin; on resume keeps rows up to the restored step."""

  def __init__(self, directory: str, name: str, keep_until_step: int | None):
    self.jsonl = os.path.join(directory, name + '.jsonl')
    self.csv = os.path.join(directory, name + '.csv')
    self.rows: list[dict[str, Any]] = []
    if keep_until_step is not None and os.path.exists(self.jsonl):
      with open(self.jsonl) as f:
        for line in f:
          line = line.strip()
          if line:
            row = json.loads(line)
            if row.get('step', 0) <= keep_until_step:
              self.rows.append(row)
    self._rewrite()

  def _columns(self) -> list[str]:
    cols: list[str] = []
    for row in self.rows:
      cols += [k for k in row if k not in cols]
    return cols

  def _rewrite(self) -> None:
    with open(self.jsonl, 'w') as f:
      for row in self.rows:
        f.write(json.dumps(row) + '\n')
    cols = self._columns()
    with open(self.csv, 'w', newline='') as f:
      if cols:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(self.rows)

  def append(self, row: dict[str, Any]) -> None:
    row = {k: _clean(v) for k, v in row.items()}
    new_cols = [k for k in row if k not in self._columns()]
    self.rows.append(row)
    if new_cols and len(self.rows) > 1:
      self._rewrite()
      return
    with open(self.jsonl, 'a') as f:
      f.write(json.dumps(row) + '\n')
    with open(self.csv, 'a', newline='') as f:
      w = csv.DictWriter(f, self._columns())
      if len(self.rows) == 1:
        w.writeheader()
      w.writerow(row)


class MetricsLogger:
  """Per-step and per-evaluation metrics as JSONL, CSV and TensorBoard scalars.

  Args:
    workdir: run directory.
    resume_step: the restored checkpoint step; rows after it (written by the
      interrupted run) are dropped so the files describe one consistent run. None
      starts fresh.
    tensorboard: write TF event files (process 0 only).
  """

  def __init__(self, workdir: str, resume_step: int | None, tensorboard: bool = True):
    directory = os.path.join(workdir, 'metrics')
    os.makedirs(directory, exist_ok=True)
    self.steps = _Table(directory, 'steps', resume_step)
    self.evals = _Table(directory, 'evals', resume_step)
    self._tb = None
    if tensorboard:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
      self._tf = tf
      # What tensorboard's scalar summary writes, without needing the tensorboard
      # package: a float32 scalar tagged for the 'scalars' plugin.
      self._meta = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def _scalars(self, prefix: str, step: int, row: dict[str, Any]) -> None:
    if self._tb is None:
      return
    tf = self._tf
    with self._tb.as_default(step=step):
      for k, v in row.items():
        if k not in ('step', 'epoch') and isinstance(v, (int, float)):
          tf.summary.write(f'{prefix}/{k}', tf.constant(float(v), tf.float32),
                           metadata=self._meta)

  def log_step(self, row: dict[str, Any]) -> None:
    self.steps.append(row)
    self._scalars('train', row['step'], row)

  def log_eval(self, row: dict[str, Any]) -> None:
    self.evals.append(row)
    self._scalars('eval', row['step'], row)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()


# -------------------------------------------------------------------------------- plots


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
  if len(y) < n or n < 2:
    return y
  k = np.ones(n) / n
  return np.convolve(y, k, mode='valid')


def plot_curves(path: str, steps: Sequence[dict], evals: Sequence[dict]) -> None:
  """Loss and accuracy against step: training (raw and smoothed) and validation."""
  plt = _plt()
  fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
  s = np.array([r['step'] for r in steps])
  for ax, key, vkeys in ((ax_l, 'loss', ('val_loss',)),
                         (ax_a, 'accuracy', ('val_top1', 'val_top5'))):
    y = np.array([float(r.get(key, np.nan)) for r in steps])
    if len(s):
      ax.plot(s, y, color='C0', alpha=0.3, lw=0.8, label=f'train {key} (step)')
      n = max(1, len(s) // 20)
      if n > 1:
        ax.plot(s[n - 1:], _smooth(y, n), color='C0', label=f'train {key} ({n}-step mean)')
    es = [r['step'] for r in evals]
    for i, vk in enumerate(vkeys):
      vy = [r.get(vk) for r in evals]
      if any(v is not None for v in vy):
        ax.plot(es, [np.nan if v is None else v for v in vy], 'o-', color=f'C{i + 1}',
                label=vk.replace('_', ' '))
    ax.set_xlabel('step')
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax_l.set_title('loss')
  ax_a.set_title('accuracy')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_confusion(path: str, cm: np.ndarray, class_names: Sequence[str]) -> None:
  """Row-normalised confusion matrix (rows: true class), counts written in cells."""
  plt = _plt()
  k = len(class_names)
  side = min(4 + 0.4 * k, 20)
  fig, ax = plt.subplots(figsize=(side, side))
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
  if k <= 30:
    ax.set_xticks(range(k), class_names, rotation=90)
    ax.set_yticks(range(k), class_names)
    for i in range(k):
      for j in range(k):
        if cm[i, j]:
          ax.text(j, i, str(cm[i, j]), ha='center', va='center', fontsize=7,
                  color='white' if norm[i, j] > 0.5 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title('validation confusion matrix')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_per_class_error(path: str, errors: np.ndarray, counts: np.ndarray,
                         class_names: Sequence[str]) -> None:
  """Bar chart of the validation error rate of every class."""
  plt = _plt()
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(min(4 + 0.3 * k, 24), 4))
  ax.bar(range(k), errors * 100, color='C3')
  ax.set_xticks(range(k), class_names, rotation=90 if k > 10 else 0)
  ax.set_ylabel('error rate (%)')
  ax.set_title(f'validation error per class ({int(counts.sum())} images)')
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def per_class_errors(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(error rate, count) per true class from a confusion matrix."""
  counts = cm.sum(1)
  errors = 1.0 - np.diag(cm) / np.maximum(counts, 1)
  return np.where(counts > 0, errors, np.nan), counts


# ------------------------------------------------------------------------------ summary


def write_summary(path: str, *, title: str, hparams: dict[str, Any], facts: dict[str, Any],
                  evals: Sequence[dict], cm: np.ndarray | None,
                  class_names: Sequence[str]) -> str:
  """Writes ``summary.md``; returns its text."""
  lines = [f'# {title}', '']
  lines += ['## Result', '', '| | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in facts.items()]
  if evals:
    lines += ['', '## Evaluations', '',
              '| epoch | step | train loss | train acc | val loss | val top-1 | val top-5 |',
              '|---|---|---|---|---|---|---|']

    def f(v, pct=False):
      if v is None or isinstance(v, str):
        return '-' if v is None else v
      return f'{100 * v:.2f}%' if pct else f'{v:.4f}'

    for r in evals:
      lines.append(f"| {r.get('epoch', '-')} | {r['step']} | {f(r.get('train_loss'))} | "
                   f"{f(r.get('train_accuracy'), True)} | {f(r.get('val_loss'))} | "
                   f"{f(r.get('val_top1'), True)} | {f(r.get('val_top5'), True)} |")
  if cm is not None:
    errors, counts = per_class_errors(cm)
    lines += ['', '## Per-class validation error (last evaluation)', '',
              '| class | images | errors | error rate | most confused with |',
              '|---|---|---|---|---|']
    for i, name in enumerate(class_names):
      row = cm[i].copy()
      row[i] = 0
      worst = (f'{class_names[int(row.argmax())]} ({int(row.max())})'
               if row.max() > 0 else '-')
      err = '-' if np.isnan(errors[i]) else f'{100 * errors[i]:.1f}%'
      lines.append(f'| {name} | {int(counts[i])} | {int(counts[i] - cm[i, i])} | {err} | '
                   f'{worst} |')
  lines += ['', '## Hyperparameters', '', '| flag | value |', '|---|---|']
  lines += [f'| {k} | `{v}` |' for k, v in sorted(hparams.items())]
  lines += ['', 'Plots: `plots/curves.png`, `plots/confusion_matrix.png`, '
            '`plots/per_class_error.png`. Metrics: `metrics/*.jsonl|csv`, '
            'TensorBoard: `tensorboard/`.', '']
  text = '\n'.join(lines)
  with open(path, 'w') as fh:
    fh.write(text)
  return text
