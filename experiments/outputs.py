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


# Fonts tried, in order, for each glyph: DejaVu (matplotlib's own) for Latin, Greek
# and Cyrillic, NanumGothic (shipped in the koreanize-matplotlib wheel) for Hangul,
# then CJK fonts a system may have. Only the installed ones are used.
_FALLBACK_FONTS = ('DejaVu Sans', 'NanumGothic', 'Noto Sans CJK KR', 'Noto Sans CJK JP',
                   'Noto Sans CJK SC', 'Droid Sans Fallback', 'Arial Unicode MS')


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  _register_fonts(matplotlib)
  return plt


def _register_fonts(matplotlib) -> None:
  """Registers the Hangul font of koreanize-matplotlib and sets a per-glyph fallback list.

  The package's font file is added directly: importing the package would switch
  the whole process to that font (and imports ``distutils``).
  """
  from matplotlib import font_manager  # pylint: disable=g-import-not-at-top
  if getattr(_register_fonts, 'done', False):
    return
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('koreanize_matplotlib')
  if spec is not None and spec.submodule_search_locations:
    for d in spec.submodule_search_locations:
      ttf = os.path.join(d, 'fonts', 'NanumGothic.ttf')
      if os.path.exists(ttf):
        font_manager.fontManager.addfont(ttf)
  have = {f.name for f in font_manager.fontManager.ttflist}
  matplotlib.rcParams['font.family'] = [f for f in _FALLBACK_FONTS if f in have] or [
      'sans-serif']
  matplotlib.rcParams['axes.unicode_minus'] = False
  _register_fonts.done = True


def save_figure(fig, path: str, dpi: int = 100) -> None:
  """Saves a figure atomically (a killed process leaves the old PNG) and closes it."""
  plt = _plt()
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                     f'.{os.path.basename(path)}.{os.getpid()}.tmp')
  fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:] or 'png')
  os.replace(tmp, path)
  plt.close(fig)


def _short(name: str, n: int = 24) -> str:
  return name if len(name) <= n else name[:n - 1] + '\u2026'


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
  if len(y) < n or n < 2:
    return y
  k = np.ones(n) / n
  return np.convolve(y, k, mode='valid')


def plot_curves(path: str, steps: Sequence[dict], evals: Sequence[dict],
                steps_per_epoch: int | None = None, best_step: int | None = None,
                stopped_step: int | None = None, monitor: str = 'val_top1') -> None:
  """Loss, accuracy and learning rate: training (per step and smoothed) and validation.

  With ``steps_per_epoch`` and more than one epoch the x axis is the epoch
  (training steps at fractional epochs, the per-evaluation training means at the
  evaluations), as Keras users plot ``history``; otherwise the step. ``best_step``
  (the best evaluation by ``monitor``) and ``stopped_step`` (where early stopping
  fired) are marked with vertical lines. The learning-rate panel appears when the
  steps record one.
  """
  plt = _plt()
  s = np.array([r['step'] for r in steps], dtype=float)
  es = np.array([r['step'] for r in evals], dtype=float)
  last = max(s.max() if len(s) else 0, es.max() if len(es) else 0)
  by_epoch = bool(steps_per_epoch) and last > steps_per_epoch
  scale = steps_per_epoch if by_epoch else 1
  lr = np.array([float(r['lr']) if isinstance(r.get('lr'), (int, float)) else np.nan
                 for r in steps])
  has_lr = bool(len(lr)) and np.isfinite(lr).any()
  fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(16 if has_lr else 11, 4))
  ax_l, ax_a = axes[0], axes[1]
  for ax, key, vkeys in ((ax_l, 'loss', ('val_loss',)),
                         (ax_a, 'accuracy', ('val_top1', 'val_top5'))):
    y = np.array([float(r.get(key, np.nan)) for r in steps])
    if len(s):
      ax.plot(s / scale, y, color='C0', alpha=0.3, lw=0.8, label=f'train {key} (step)')
      n = max(1, len(s) // 20)
      if n > 1:
        ax.plot(s[n - 1:] / scale, _smooth(y, n), color='C0',
                label=f'train {key} ({n}-step mean)')
    tkey = 'train_loss' if key == 'loss' else 'train_accuracy'
    ty = [r.get(tkey) for r in evals]
    if by_epoch and any(isinstance(v, (int, float)) for v in ty):
      ax.plot(es / scale, [v if isinstance(v, (int, float)) else np.nan for v in ty],
              's--', color='C0', label=f'train {key} (epoch mean)')
    for i, vk in enumerate(vkeys):
      vy = [r.get(vk) for r in evals]
      if any(isinstance(v, (int, float)) for v in vy):
        ax.plot(es / scale, [v if isinstance(v, (int, float)) else np.nan for v in vy],
                'o-', color=f'C{i + 1}', label=vk.replace('_', ' '))
    ax.set_ylabel(key)
  if has_lr:
    ax_r = axes[2]
    ax_r.plot(s / scale, lr, color='C4', label='learning rate')
    if np.nanmin(lr) > 0:
      ax_r.set_yscale('log')
    ax_r.set_ylabel('learning rate')
    ax_r.set_title('learning rate')
  for ax in axes:
    if best_step is not None:
      ax.axvline(best_step / scale, color='C2', ls=':', lw=1,
                 label=f"best {monitor.replace('_', ' ')}")
    if stopped_step is not None:
      ax.axvline(stopped_step / scale, color='C3', ls='--', lw=1, label='early stop')
    ax.set_xlabel('epoch' if by_epoch else 'step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax_l.set_title('loss')
  ax_a.set_title('accuracy')
  fig.tight_layout()
  save_figure(fig, path)


def _font_size(k: int) -> float:
  """Tick-label size for k classes: 10 pt for a few, 5 pt at 100."""
  return float(np.clip(10 - (k - 10) * 5 / 90, 5, 10))


def plot_confusion(path: str, cm: np.ndarray, class_names: Sequence[str],
                   title: str = 'validation confusion matrix',
                   column_names: Sequence[str] | None = None) -> None:
  """Row-normalised confusion matrix (rows: true class) with counts in the cells.

  The figure grows with the class count (readable from 2 to 100 classes: cells
  of 0.28-0.6 inch at 100 dpi, labels 10-5 pt); names in any script (Hangul
  through the registered fallback font). ``column_names`` when the predicted
  classes differ from the true ones (e.g. an '(other)' column).
  """
  plt = _plt()
  rows, cols = len(class_names), cm.shape[1]
  column_names = list(column_names or class_names)
  k = max(rows, cols)
  cell = float(np.clip(0.6 - (k - 10) * 0.0035, 0.28, 0.6))
  longest = max(len(_short(n)) for n in list(class_names) + column_names)
  fs = _font_size(k)
  margin = 1.2 + longest * fs / 72 * 0.6
  fig, ax = plt.subplots(figsize=(margin + cols * cell + 1.0, margin + rows * cell + 0.6))
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  im = ax.imshow(norm, cmap='Blues', vmin=0, vmax=1, aspect='equal')
  ax.set_xticks(range(cols), [_short(n) for n in column_names], rotation=90, fontsize=fs)
  ax.set_yticks(range(rows), [_short(n) for n in class_names], fontsize=fs)
  count_fs = max(4.0, fs - 1 - (1 if cm.max() >= 100 else 0) - (1 if cm.max() >= 1000 else 0))
  for i in range(rows):
    for j in range(cols):
      if cm[i, j]:
        ax.text(j, i, str(int(cm[i, j])), ha='center', va='center', fontsize=count_fs,
                color='white' if norm[i, j] > 0.5 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label='fraction of the true class')
  fig.tight_layout()
  save_figure(fig, path)


def plot_per_class_error(path: str, errors: np.ndarray, counts: np.ndarray,
                         class_names: Sequence[str], title: str | None = None) -> None:
  """Horizontal bars of each class's error rate, worst first (readable up to 100+)."""
  plt = _plt()
  k = len(class_names)
  order = np.argsort(-np.nan_to_num(errors, nan=-1), kind='stable')
  fs = _font_size(k)
  fig, ax = plt.subplots(figsize=(7.5, 1.2 + k * max(0.12, fs / 60)))
  y = np.arange(k)
  ax.barh(y, np.nan_to_num(errors[order]) * 100, color='C3')
  ax.set_yticks(y, [f'{_short(class_names[i])} ({int(counts[i])})' for i in order],
                fontsize=fs)
  ax.invert_yaxis()
  ax.set_xlabel('error rate (%)')
  ax.set_xlim(0, 100)
  ax.set_title(title or f'error per class, worst first ({int(counts.sum())} images; '
               'images per class in brackets)', fontsize=9)
  ax.grid(axis='x', alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path)


def plot_misclassified(path: str, thumbs: Sequence[np.ndarray], captions: Sequence[str],
                       title: str) -> None:
  """A grid of images captioned ``true -> predicted (p)`` (most confident first)."""
  plt = _plt()
  n = len(thumbs)
  cols = int(min(5, max(1, n)))
  rows = max(1, -(-n // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.6 + 0.4),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for ax, im, cap in zip(axes.ravel(), thumbs, captions):
    ax.imshow(im, cmap='gray' if im.ndim == 2 else None)
    ax.set_title(cap, fontsize=8)
  if not n:
    axes[0, 0].text(0.5, 0.5, 'no misclassified images', ha='center', va='center')
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


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
    from experiments import report  # pylint: disable=g-import-not-at-top
    lines += ['', '## Per-class validation error (last evaluation)', '']
    lines += report.per_class_table(cm, class_names)
  lines += ['', '## Hyperparameters', '', '| flag | value |', '|---|---|']
  lines += [f'| {k} | `{v}` |' for k, v in sorted(hparams.items())]
  lines += ['', 'Plots: `plots/curves.png`, `plots/confusion_matrix.png`, '
            '`plots/per_class_error.png`. Metrics: `metrics/*.jsonl|csv`, '
            'TensorBoard: `tensorboard/`.', '']
  text = '\n'.join(lines)
  with open(path, 'w') as fh:
    fh.write(text)
  return text
