"""Classification reports: metrics from predicted probabilities, and the files of one.

The numbers (numpy only, no TensorFlow, no JAX):

* ``topk_metrics``: top-1, top-5 (top-k with k = min(5, classes)) and the loss,
  the mean negative log-probability of the true class (cross-entropy; for an
  ensemble or test-time views, of the averaged probabilities).
* ``confusion_matrix``: rows the true class, columns the predicted one (argmax;
  ties go to the lower class index).
* ``per_class_metrics``: precision ``tp / predicted``, recall ``tp / support``,
  F1 ``2 tp / (2 tp + fp + fn)`` (the harmonic mean of the two where both are
  defined, 0 where nothing was right), error rate ``1 - recall``, and the class
  each one is most often mistaken for. Macro averages follow scikit-learn's
  ``zero_division=0``: a class never predicted counts with precision 0.

``write_report`` writes what ``experiments.evaluate`` and ``experiments.ensemble``
leave in their output directory: ``summary.md``, ``confusion_matrix.csv`` and
``.png``, ``per_class_error.png``, ``predictions.csv`` and ``misclassified.png``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from experiments import outputs

OTHER = '(other)'  # the column of predictions outside the classes shown


# ------------------------------------------------------------------------------ metrics


def topk_metrics(log_probs: np.ndarray, labels: np.ndarray, k: int = 5) -> dict[str, Any]:
  """``top1``, ``top5`` (top-min(k, C)), ``loss`` and ``count`` of ``[N, C]`` log-probabilities."""
  log_probs = np.asarray(log_probs, np.float64)
  labels = np.asarray(labels, np.int64)
  n, c = log_probs.shape
  if n == 0:
    raise ValueError('no examples to score')
  k = min(k, c)
  # Stable sort of -logp: equal scores keep the lower class first (argmax's rule).
  top = np.argsort(-log_probs, axis=1, kind='stable')[:, :k]
  hit = top == labels[:, None]
  return dict(top1=float(hit[:, 0].mean()), top5=float(hit.any(1).mean()),
              loss=float(-log_probs[np.arange(n), labels].mean()), count=int(n))


def predictions(log_probs: np.ndarray) -> np.ndarray:
  """Predicted class per row (argmax, the lower index on ties)."""
  return np.argmax(np.asarray(log_probs), axis=1)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts, rows the true class, columns the predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return cm


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class statistics of a square confusion matrix (see the module docstring).

  Returns:
    arrays of length C: ``support`` (true images), ``predicted`` (images predicted
    as the class), ``tp``, ``precision`` (NaN when never predicted), ``recall``
    and ``error`` (NaN without images), ``f1`` (NaN when neither), ``confused_with``
    (the most frequent wrong prediction of the class's images, -1 if none; the
    lower index on ties) and ``confused_count``.
  """
  cm = np.asarray(cm, np.int64)
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(1)
  predicted = cm.sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = np.where(predicted > 0, tp / predicted, np.nan)
    recall = np.where(support > 0, tp / support, np.nan)
    denom = support + predicted  # 2 tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
  off = cm.copy()
  np.fill_diagonal(off, 0)
  confused = np.where(off.max(1) > 0, off.argmax(1), -1)
  return dict(support=support, predicted=predicted, tp=tp.astype(np.int64),
              precision=precision, recall=recall, error=1.0 - recall, f1=f1,
              confused_with=confused, confused_count=off.max(1))


def macro_averages(stats: dict[str, np.ndarray], rows: Sequence[int] | None = None
                   ) -> dict[str, float]:
  """Macro precision / recall / F1 over ``rows`` (default: classes with images);
  undefined values count as 0 (scikit-learn's ``zero_division=0``)."""
  if rows is None:
    rows = np.flatnonzero(stats['support'] > 0)
  rows = np.asarray(rows)
  return {k: float(np.nan_to_num(stats[k][rows]).mean()) for k in ('precision', 'recall',
                                                                    'f1')}


# ------------------------------------------------------------------------------- files


def _pct(v: float) -> str:
  return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{100 * v:.1f}%'


def per_class_table(cm: np.ndarray, class_names: Sequence[str],
                    rows: Sequence[int] | None = None) -> list[str]:
  """Markdown rows: class, images, precision, recall, F1, error rate, errors,
  most confused with (its count)."""
  stats = per_class_metrics(cm)
  rows = range(len(class_names)) if rows is None else rows
  lines = ['| class | images | precision | recall | F1 | error rate | errors | '
           'most confused with |', '|---|---|---|---|---|---|---|---|']
  for i in rows:
    j = int(stats['confused_with'][i])
    worst = f'{class_names[j]} ({int(stats["confused_count"][i])})' if j >= 0 else '-'
    lines.append(f'| {class_names[i]} | {int(stats["support"][i])} | '
                 f'{_pct(stats["precision"][i])} | {_pct(stats["recall"][i])} | '
                 f'{_pct(stats["f1"][i])} | {_pct(stats["error"][i])} | '
                 f'{int(stats["support"][i] - stats["tp"][i])} | {worst} |')
  return lines


def shown_matrix(cm: np.ndarray, rows: Sequence[int]) -> tuple[np.ndarray, bool]:
  """The rows/columns of ``rows`` and, when other classes were predicted, an
  ``(other)`` column with the rest of each row. Returns (matrix, has_other)."""
  rows = np.asarray(rows)
  sub = cm[np.ix_(rows, rows)]
  other = cm[rows].sum(1) - sub.sum(1)
  if len(rows) == cm.shape[0] or not other.any():
    return sub, False
  return np.concatenate([sub, other[:, None]], axis=1), True


def confusion_csv(cm: np.ndarray, row_names: Sequence[str],
                  column_names: Sequence[str]) -> str:
  """CSV text: a header of predicted classes, one row per true class."""
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(['true \\ predicted'] + list(column_names))
  for name, row in zip(row_names, cm):
    w.writerow([name] + [int(v) for v in row])
  return buf.getvalue()


def predictions_csv(sources: Sequence[str], labels: np.ndarray | None,
                    log_probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> str:
  """CSV text: path, true, predicted, probability, true_probability, correct,
  top-k classes and probabilities (``|``-separated, most likely first)."""
  probs = np.exp(np.asarray(log_probs, np.float64))
  k = min(k, probs.shape[1])
  top = np.argsort(-probs, axis=1, kind='stable')[:, :k]
  buf = io.StringIO()
  w = csv.writer(buf)
  head = ['path', 'true', 'predicted', 'probability', 'true_probability', 'correct',
          f'top{k}_classes', f'top{k}_probabilities']
  w.writerow(head if labels is not None else
             [h for h in head if h not in ('true', 'true_probability', 'correct')])
  for i, src in enumerate(sources):
    t = top[i]
    row = [src]
    if labels is not None:
      row.append(class_names[int(labels[i])])
    row += [class_names[int(t[0])], f'{probs[i, t[0]]:.6f}']
    if labels is not None:
      row += [f'{probs[i, int(labels[i])]:.6f}', int(t[0] == labels[i])]
    row += ['|'.join(class_names[int(j)] for j in t),
            '|'.join(f'{probs[i, j]:.6f}' for j in t)]
    w.writerow(row)
  return buf.getvalue()


def most_confident_mistakes(log_probs: np.ndarray, labels: np.ndarray, n: int
                            ) -> np.ndarray:
  """Indices of up to ``n`` misclassified examples, highest predicted probability first."""
  preds = predictions(log_probs)
  wrong = np.flatnonzero(preds != labels)
  conf = np.asarray(log_probs)[wrong, preds[wrong]]
  return wrong[np.argsort(-conf, kind='stable')][:n]


def _thumb(image: np.ndarray, side: int = 160) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  im = Image.fromarray(np.asarray(image, np.uint8).squeeze())
  im.thumbnail((side, side))
  return np.asarray(im)


def write_report(out_dir: str, *, title: str, facts: dict[str, Any],
                 class_names: Sequence[str], labels: np.ndarray, log_probs: np.ndarray,
                 sources: Sequence[str], load_image: Callable[[int], Any] | None = None,
                 rows: Sequence[int] | None = None, sections: Sequence[str] = (),
                 num_misclassified: int = 20) -> dict[str, Any]:
  """Writes the report files of one evaluation into ``out_dir``.

  Args:
    out_dir: the directory (created).
    title: summary.md's heading.
    facts: what was evaluated (model, data, settings), in order.
    class_names: the model's classes, in label order.
    labels: true label per example (indices into ``class_names``).
    log_probs: ``[N, C]`` log-probabilities.
    sources: one name (file path) per example.
    load_image: index -> uint8 image for the misclassified grid (None: no grid
      images, an empty grid with a note).
    rows: the classes to show (default all); other predicted classes are summed
      into an ``(other)`` column (ImageNet weights on a folder of a few of its
      classes).
    sections: extra markdown blocks placed after the result (ensemble members).
    num_misclassified: images in the grid.

  Returns:
    ``topk_metrics`` plus ``macro`` (precision/recall/F1), ``cm`` and ``text``.
  """
  from experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  labels = np.asarray(labels, np.int64)
  num_classes = len(class_names)
  rows = list(range(num_classes)) if rows is None else list(rows)
  metrics = topk_metrics(log_probs, labels)
  preds = predictions(log_probs)
  cm = confusion_matrix(labels, preds, num_classes)
  stats = per_class_metrics(cm)
  macro = macro_averages(stats, [r for r in rows if stats['support'][r] > 0])
  shown, has_other = shown_matrix(cm, rows)
  row_names = [class_names[r] for r in rows]
  col_names = row_names + ([OTHER] if has_other else [])
  runs_lib.atomic_write_text(os.path.join(out_dir, 'confusion_matrix.csv'),
                             confusion_csv(shown, row_names, col_names))
  outputs.plot_confusion(os.path.join(out_dir, 'confusion_matrix.png'), shown, row_names,
                         title=f'confusion matrix ({metrics["count"]} images)',
                         column_names=col_names)
  errors = np.array([stats['error'][r] for r in rows])
  outputs.plot_per_class_error(os.path.join(out_dir, 'per_class_error.png'),
                               np.nan_to_num(errors), stats['support'][rows], row_names)
  runs_lib.atomic_write_text(os.path.join(out_dir, 'predictions.csv'),
                             predictions_csv(sources, labels, log_probs, class_names))
  worst = most_confident_mistakes(log_probs, labels, num_misclassified)
  thumbs, captions = [], []
  for i in worst:
    image = load_image(int(i)) if load_image is not None else None
    if image is None:
      continue
    p = float(np.exp(log_probs[i, preds[i]]))
    thumbs.append(_thumb(image))
    captions.append(f'{outputs._short(class_names[labels[i]], 16)} -> '  # pylint: disable=protected-access
                    f'{outputs._short(class_names[preds[i]], 16)} ({p:.2f})')  # pylint: disable=protected-access
  n_wrong = int((preds != labels).sum())
  outputs.plot_misclassified(
      os.path.join(out_dir, 'misclassified.png'), thumbs, captions,
      f'most confident mistakes: {len(thumbs)} of {n_wrong} misclassified '
      f'(true -> predicted (probability))')

  lines = [f'# {title}', '', '| | |', '|---|---|']
  lines += [f'| {k_} | {v} |' for k_, v in facts.items()]
  bad = int((~np.isfinite(np.asarray(log_probs))).any(1).sum())
  if bad:
    lines.append(f'| WARNING | the model gave non-finite outputs (NaN/inf) for {bad} images: '
                 'its weights are broken (a diverged run?) |')
  lines += [f'| images | {metrics["count"]} |',
            f'| top-1 | {100 * metrics["top1"]:.2f}% |',
            f'| top-5 | {100 * metrics["top5"]:.2f}%'
            + (f' ({num_classes} classes: all in the top 5)' if num_classes <= 5 else '')
            + ' |',
            f'| loss (cross-entropy) | {metrics["loss"]:.4f} |',
            f'| macro precision / recall / F1 | {100 * macro["precision"]:.1f}% / '
            f'{100 * macro["recall"]:.1f}% / {100 * macro["f1"]:.1f}% |']
  for block in sections:
    lines += ['', block.rstrip()]
  lines += ['', '## Per class', '']
  lines += per_class_table(cm, class_names, rows)
  if has_other:
    lines += ['', f'Precision counts the images shown here only; `{OTHER}` in the '
              'confusion matrix sums predictions of classes without images here.']
  lines += ['', 'Files: `confusion_matrix.csv` and `.png` (rows: true class), '
            '`per_class_error.png`, `predictions.csv` (every image with its top-5), '
            '`misclassified.png` (the most confident mistakes).', '']
  text = '\n'.join(lines)
  runs_lib.atomic_write_text(os.path.join(out_dir, 'summary.md'), text)
  return dict(metrics, macro=macro, cm=cm, text=text)
