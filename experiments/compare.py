r"""Compare fine-tuning runs: one table and one figure for many runs.

  python -m experiments.compare sweeps/flowers            # a sweep root (or any folder of runs)
  python -m experiments.compare runs/inception_v3-flowers-20261201-101500 \
      runs/inception_resnet_v2-flowers-20261201-113000 --output_dir=cmp

Each argument is a run directory of ``experiments.finetune`` or a folder holding run
directories (its sweep cells that failed before writing a run are listed too). Writes
into ``--output_dir`` (default: the folder, when one folder is given; else the
current directory):

  comparison.md    the table (also printed), sorted by best validation top-1: the
                   flags that differ between the runs, parameters, best validation
                   top-1 and loss with the epoch of each, final validation top-1 (the
                   model the run ended with: run.json's ``final``, the restored best
                   with --restore_best or early stopping; else the last evaluation),
                   test metrics where the test split was evaluated, wall time and
                   training images/s; then the settings all runs share and the errors
                   of failed runs
  comparison.csv   the same with full precision, plus whether the final model was
                   restored and first-step seconds (compilation)
  comparison.png   validation top-1 and loss per epoch of every run, overlaid (legend:
                   rank and the differing values), and best top-1 against wall time

Everything comes from the run directories: ``flags.json``, ``run.json`` and
``metrics/evals.jsonl``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import runs as runs_lib

FLAGS = flags.FlagValues()  # this command's own flags

flags.DEFINE_string('output_dir', None, 'Where comparison.md|csv|png go (default: the '
                    'folder when one folder of runs is given, else the current '
                    'directory).', flag_values=FLAGS)

LOGS = 'logs'  # a sweep root's per-cell records (experiments.sweep)
DONE = ('finished', 'stopped early')
# Settings shown as "common" under the table when every run shares them.
KEY_FLAGS = ('arch', 'pretrained', 'dataset', 'image_size', 'crop_mode', 'batch_size',
             'epochs', 'steps', 'optimizer', 'learning_rate', 'schedule', 'pooling',
             'freeze', 'seed')


class CompareError(ValueError):
  """Nothing to compare (the message says what was looked for)."""


@dataclasses.dataclass
class Run:
  """One row of the comparison: a run directory, or a sweep cell that left none.

  Attributes:
    name: the run directory's name (a sweep cell's name).
    run_dir: its path (None for a cell that failed before creating it).
    status: run.json's ('finished', 'stopped early', 'running', 'failed'), or the
      sweep's record of the cell ('failed', 'interrupted').
    flags: flags.json (a failed cell without a run: its grid values).
    record: run.json.
    evals: evaluations with a validation score (epoch, step, val_top1, val_loss).
    error: why it failed.
  """
  name: str
  run_dir: str | None
  status: str
  flags: dict[str, Any]
  record: dict[str, Any]
  evals: list[dict[str, Any]]
  error: str | None = None

  def _best(self, key: str, sign: float):
    rows = [r for r in self.evals if r.get(key) is not None]
    if not rows:
      best = self.record.get('best') or {}
      return _num(best.get(key)), _num(best.get('epoch'))
    r = max(rows, key=lambda r: (sign * r[key], -r['epoch']))  # ties: the earlier
    return r[key], r['epoch']

  @property
  def best_top1(self) -> float | None:
    return self._best('val_top1', 1.0)[0]

  @property
  def best_top1_epoch(self) -> float | None:
    return self._best('val_top1', 1.0)[1]

  @property
  def best_loss(self) -> float | None:
    return self._best('val_loss', -1.0)[0]

  @property
  def best_loss_epoch(self) -> float | None:
    return self._best('val_loss', -1.0)[1]

  @property
  def final(self) -> dict[str, Any]:
    """The metrics of the model the run ended with (val_top1, val_loss, epoch,
    restored), or {}.

    run.json's ``final`` of a finished (or stopped) run: with ``--restore_best`` or
    early stopping, the restored best model. Otherwise (a record without it, a run
    still running or failed, whose ``final`` would be of an earlier attempt) the
    last evaluation, with ``restored`` None.
    """
    f = self.record.get('final')
    if self.status in DONE and isinstance(f, dict):
      top1, loss = _num(f.get('val_top1')), _num(f.get('val_loss'))
      if top1 is not None or loss is not None:
        return dict(val_top1=top1, val_loss=loss, epoch=_num(f.get('epoch')),
                    step=f.get('step'), restored=bool(f.get('restored')))
    return dict(self.evals[-1], restored=None) if self.evals else {}

  @property
  def test(self) -> dict[str, Any] | None:
    """Test-split metrics (top1, top5, loss, count) when the run was tested."""
    t = self.record.get('test')
    return t if isinstance(t, dict) and _num(t.get('top1')) is not None else None


def _num(v: Any) -> float | None:
  """A finite number, or None (records write NaN as a string)."""
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if math.isfinite(v) else None


def _read_evals(run_dir: str) -> list[dict[str, Any]]:
  path = os.path.join(run_dir, 'metrics', 'evals.jsonl')
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        r = json.loads(line)
      except ValueError:
        continue  # a line cut by a kill
      top1, loss = _num(r.get('val_top1')), _num(r.get('val_loss'))
      epoch = _num(r.get('epoch'))
      if epoch is None or (top1 is None and loss is None):
        continue
      rows.append(dict(epoch=epoch, step=r.get('step'), val_top1=top1, val_loss=loss))
  return rows


def load_run(run_dir: str, cell: dict[str, Any] | None = None) -> Run:
  """A run directory's row (``cell``: the sweep's record of it, if any)."""
  try:
    rec = runs_lib.load_record(run_dir)
  except runs_lib.RunDirError as e:
    raise CompareError(str(e)) from None
  flags_json = rec.pop('flags')
  rec.pop('run_dir', None)
  status = rec.get('status') or 'running'
  error = rec.get('error') if status == 'failed' else None
  if cell and status not in DONE and cell.get('status') in ('failed', 'interrupted'):
    status, error = cell['status'], cell.get('error') or error
  return Run(os.path.basename(os.path.normpath(run_dir)), os.path.abspath(run_dir),
             status, flags_json, rec, _read_evals(run_dir), error)


def _cells(root: str) -> dict[str, dict[str, Any]]:
  """A sweep root's cell records, by cell name."""
  out = {}
  d = os.path.join(root, LOGS)
  if not os.path.isdir(d):
    return out
  for name in sorted(os.listdir(d)):
    if name.endswith('.json'):
      try:
        rec = runs_lib.read_json(os.path.join(d, name))
      except (OSError, ValueError):
        continue
      if isinstance(rec, dict) and rec.get('name'):
        out[rec['name']] = rec
  return out


def find_runs(paths: Sequence[str]) -> list[Run]:
  """The runs of every argument (a run directory, or a folder of them).

  Raises:
    CompareError: a path that does not exist, or no run at all.
  """
  runs, seen = [], set()
  for p in paths:
    path = os.path.abspath(os.path.expanduser(p))
    if not os.path.isdir(path):
      raise CompareError(f'{p}: no such directory')
    if runs_lib.is_run_dir(path):
      found = [(path, None)]
    else:
      cells = _cells(path)
      found = [(os.path.join(path, n), cells.get(n)) for n in sorted(os.listdir(path))
               if runs_lib.is_run_dir(os.path.join(path, n))]
      have = {os.path.basename(d) for d, _ in found}
      for name, cell in cells.items():  # sweep cells that failed before their run began
        if name not in have and cell.get('status') in ('failed', 'interrupted'):
          runs.append(Run(name, None, cell['status'], dict(cell.get('values') or {}), {},
                          [], cell.get('error')))
      if not found and not any(r.run_dir is None for r in runs):
        raise CompareError(
            f'{p} holds no run directories (a run directory has {runs_lib.FLAGS_JSON}: '
            'give run directories of experiments.finetune, or folders of them such as '
            'a sweep root)')
    for d, cell in found:
      if d not in seen:
        seen.add(d)
        runs.append(load_run(d, cell))
  if not runs:
    raise CompareError('no runs to compare')
  return runs


def _key(v: Any) -> str:
  return json.dumps(v, sort_keys=True, default=str)


def varied_flags(runs: Sequence[Run], order: Sequence[str] = ()) -> list[str]:
  """Flags with two or more values among the runs (process plumbing left out).

  A run that does not record a flag (an older version, or a failed sweep cell)
  does not count for it. ``order``: names to put first (a sweep's axes).
  """
  values: dict[str, set[str]] = {}
  for r in runs:
    for k, v in r.flags.items():
      if k not in runs_lib.PLUMBING:
        values.setdefault(k, set()).add(_key(v))
  names = sorted(k for k, vs in values.items() if len(vs) > 1)
  first = [k for k in order if k in names]
  return first + [k for k in names if k not in first]


def sort_runs(runs: Sequence[Run]) -> list[Run]:
  """Best validation top-1 first; then lower best loss; runs without a score last."""
  def key(r):
    t, l = r.best_top1, r.best_loss
    return (t is None, -(t or 0.0), math.inf if l is None else l, r.name)
  return sorted(runs, key=key)


def fmt_epoch(e: float | None) -> str:
  if e is None:
    return '-'
  return str(int(e)) if float(e).is_integer() else f'{e:.2f}'


def _pct(x: float | None) -> str:
  return '-' if x is None else f'{100 * x:.2f}%'


def _show(v: Any) -> str:
  """A flag value for the table (paths by their last part)."""
  if v is None:
    return '-'
  if isinstance(v, bool):
    return str(v).lower()
  if isinstance(v, float):
    return f'{v:g}'
  if isinstance(v, (list, tuple)):
    return ','.join(_show(x) for x in v)
  s = str(v)
  kind, sep, rest = s.partition(':')
  if sep and kind in ('folder', 'tfds') and os.sep in rest:
    return f'{kind}:{os.path.basename(os.path.normpath(rest))}'
  if os.sep in s:
    return os.path.basename(os.path.normpath(s))
  return s


def _params(n: int | None) -> str:
  if not n:
    return '-'
  return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n:,}'


def _hms(seconds: float | None) -> str:
  if seconds is None:
    return '-'
  s = int(round(seconds))
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


def label(run: Run, varied: Sequence[str]) -> str:
  """The run by its differing values (its name when nothing differs)."""
  parts = [f'{k}={_show(run.flags[k])}' for k in varied if k in run.flags]
  return ' '.join(parts) if parts else run.name


def table_rows(runs: Sequence[Run], varied: Sequence[str]) -> list[dict[str, Any]]:
  """The CSV rows (sorted), full precision."""
  out = []
  for rank, r in enumerate(sort_runs(runs), 1):
    t = r.test or {}
    out.append(dict(
        rank=rank, run=r.name, **{k: r.flags.get(k) for k in varied}, status=r.status,
        arch=r.flags.get('arch'), params=r.record.get('params'),
        best_val_top1=r.best_top1, best_val_top1_epoch=r.best_top1_epoch,
        best_val_loss=r.best_loss, best_val_loss_epoch=r.best_loss_epoch,
        final_val_top1=r.final.get('val_top1'), final_val_loss=r.final.get('val_loss'),
        final_epoch=r.final.get('epoch'), final_restored=r.final.get('restored'),
        test_top1=_num(t.get('top1')),
        test_top5=_num(t.get('top5')), test_loss=_num(t.get('loss')),
        test_images=t.get('count'), wall_seconds=_num(r.record.get('wall_seconds')),
        train_images_per_second=_num(r.record.get('train_images_per_second')),
        first_step_seconds=_num(r.record.get('first_step_seconds')),
        run_dir=r.run_dir, error=r.error))
  return out


def markdown(runs: Sequence[Run], varied: Sequence[str], title: str = 'Comparison') -> str:
  """comparison.md."""
  ordered = sort_runs(runs)
  tested = any(r.test for r in runs)
  head = ['#'] + list(varied) + ['status', 'params', 'best val top-1 (epoch)',
                                 'best val loss (epoch)', 'final val top-1 (epoch)']
  if tested:
    head += ['test top-1 / top-5 / loss']
  head += ['wall time', 'train img/s', 'run']
  lines = [f'# {title}', '',
           f'{len(runs)} runs, sorted by best validation top-1; "final" is the model the '
           'run ended with (the restored best with --restore_best or early stopping, '
           'else the last evaluation); wall time counts every attempt of a run.', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for rank, r in enumerate(ordered, 1):
    params = r.record.get('params')
    cells = [str(rank)] + [_show(r.flags.get(k)) for k in varied] + [
        r.status, _params(params),
        f'{_pct(r.best_top1)} ({fmt_epoch(r.best_top1_epoch)})' if r.best_top1 is not None
        else '-',
        f'{r.best_loss:.4f} ({fmt_epoch(r.best_loss_epoch)})' if r.best_loss is not None
        else '-',
        f"{_pct(r.final.get('val_top1'))} ({fmt_epoch(r.final.get('epoch'))}"
        f"{', restored' if r.final.get('restored') else ''})" if r.final else '-']
    if tested:
      t = r.test
      cells.append(f"{_pct(t['top1'])} / {_pct(_num(t.get('top5')))} / "
                   f"{_num(t.get('loss')) or 0:.4f}" if t else '-')
    ips = _num(r.record.get('train_images_per_second'))
    cells += [_hms(_num(r.record.get('wall_seconds'))), f'{ips:.1f}' if ips else '-',
              r.name]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  common = []
  for k in KEY_FLAGS:
    # An unset --image_size is the size the run chose (run.json).
    vals = {_key(r.flags[k] if r.flags[k] is not None or k != 'image_size' else
                 r.record.get('image_size')) for r in runs if k in r.flags}
    if k not in varied and len(vals) == 1:
      v = json.loads(vals.pop())
      if v is not None:
        common.append(f'{k}={_show(v)}')
  if common:
    lines += ['', 'Shared by all runs: ' + ', '.join(common) + ' (every flag of a run: '
              'its flags.json).']
  failed = [r for r in ordered if r.error]
  if failed:
    lines += ['', '## Errors', '']
    lines += [f'- {r.name}: {r.error.strip().splitlines()[0] if r.error.strip() else "?"}'
              for r in failed]
  return '\n'.join(lines) + '\n'


def plot(path: str, runs: Sequence[Run], varied: Sequence[str], title: str = '') -> None:
  """comparison.png: validation top-1 and loss per epoch, best top-1 vs wall time."""
  from experiments import outputs  # pylint: disable=g-import-not-at-top
  plt = outputs._plt()  # pylint: disable=protected-access
  ordered = sort_runs(runs)
  shown = [r for r in ordered if r.evals]
  fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
  cmap = plt.get_cmap('tab10' if len(ordered) <= 10 else 'tab20')
  styles = ('-', '--', ':', '-.')
  handles = []
  walls = [_num(r.record.get('wall_seconds')) for r in ordered]
  longest = max([w for w in walls if w is not None], default=0.0)
  unit, per = (('hours', 3600.0) if longest > 3 * 3600 else
               ('minutes', 60.0) if longest > 120 else ('seconds', 1.0))
  points = []
  for rank, r in enumerate(ordered, 1):
    if not r.evals:
      continue
    color = cmap(rank - 1 if len(ordered) <= 10 else (rank - 1) % 20)
    style = styles[(rank - 1) // (10 if len(ordered) <= 10 else 20) % len(styles)]
    name = f'#{rank} {label(r, varied)}'
    ep = [e['epoch'] for e in r.evals]
    top1 = [None if e['val_top1'] is None else 100 * e['val_top1'] for e in r.evals]
    loss = [e['val_loss'] for e in r.evals]
    (h,) = axes[0].plot(ep, top1, style, color=color, marker='o', ms=4, label=name)
    axes[1].plot(ep, loss, style, color=color, marker='o', ms=4)
    handles.append(h)
    wall = _num(r.record.get('wall_seconds'))
    if r.best_top1 is not None and wall is not None:
      points.append((wall / per, 100 * r.best_top1, rank, color))
  # Runs at the same point share one label ('#1,#3').
  for (x, y) in dict.fromkeys((x, y) for x, y, _, _ in points):
    here = [p for p in points if (p[0], p[1]) == (x, y)]
    axes[2].scatter([x], [y], color=here[0][3], s=60, zorder=3)
    axes[2].annotate(','.join(f'#{p[2]}' for p in here), (x, y),
                     textcoords='offset points', fontsize=9,
                     xytext=(6, 4 if here[0][2] % 2 else -12))  # near points: apart
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  axes[0].set(xlabel='epoch', ylabel='validation top-1 (%)', title='validation top-1')
  axes[1].set(xlabel='epoch', ylabel='validation loss', title='validation loss')
  axes[2].set(xlabel=f'wall time ({unit}, all attempts)', ylabel='best validation top-1 (%)',
              title='best validation top-1 vs wall time')
  for ax in axes:
    ax.grid(alpha=0.3)
  for ax in axes[:2]:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=all(
        float(e['epoch']).is_integer() for r in shown for e in r.evals)))
  if points:
    axes[2].set_xlim(0, max(p[0] for p in points) * 1.2)
  missing = len(ordered) - len(shown)
  fig.suptitle((title or 'Comparison') + f': {len(shown)} runs' +
               (f' ({missing} without a validation score not shown)' if missing else '') +
               ('; legend: rank in comparison.md, then the values that differ'
                if varied else ''), fontsize=11)
  ncol = 1 if len(handles) <= 4 else (2 if len(handles) <= 12 else 3)
  if handles:
    fig.legend(handles=handles, loc='lower center', ncol=ncol, fontsize=9, frameon=False)
  rows = math.ceil(len(handles) / ncol) if handles else 0
  bottom = min(0.6, 0.05 + 0.04 * rows)
  fig.tight_layout(rect=(0, bottom, 1, 0.95))
  outputs.save_figure(fig, path)


def write_comparison(out_dir: str, runs: Sequence[Run], title: str | None = None) -> str:
  """Writes comparison.md, .csv and .png into ``out_dir``; returns the markdown."""
  os.makedirs(out_dir, exist_ok=True)
  order = []
  sweep_json = os.path.join(out_dir, 'sweep.json')
  if os.path.exists(sweep_json):
    try:
      order = [a[0] for a in runs_lib.read_json(sweep_json).get('grid', [])]
    except (OSError, ValueError, IndexError, TypeError):
      order = []
  varied = varied_flags(runs, order)
  title = title or f'Comparison of {os.path.basename(os.path.normpath(out_dir))}'
  text = markdown(runs, varied, title)
  runs_lib.atomic_write_text(os.path.join(out_dir, 'comparison.md'), text)
  rows = table_rows(runs, varied)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]))
  w.writeheader()
  for row in rows:
    w.writerow({k: '' if v is None else v for k, v in row.items()})
  runs_lib.atomic_write_text(os.path.join(out_dir, 'comparison.csv'), buf.getvalue())
  plot(os.path.join(out_dir, 'comparison.png'), runs, varied, title)
  return text


def main(argv):
  paths = argv[1:]
  try:
    if not paths:
      raise CompareError('give run directories or folders of runs, e.g. python -m '
                         'experiments.compare sweeps/flowers')
    runs = find_runs(paths)
    out = FLAGS.output_dir
    if out is None:
      one = os.path.abspath(os.path.expanduser(paths[0]))
      out = one if len(paths) == 1 and not runs_lib.is_run_dir(one) else os.getcwd()
    text = write_comparison(out, runs)
  except CompareError as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  print(text)
  print(f'Written: {os.path.join(out, "comparison.md")}, .csv, .png')


def parse_flags(argv: Sequence[str]) -> list[str]:
  """This command's flags, then absl's; the rest are the paths."""
  if any(a in ('-h', '--help', '--helpshort', '--helpfull', '-?') for a in argv[1:]):
    print(__doc__.split('\n\n')[0].strip() + '\n\n' + FLAGS.get_help())
    sys.exit(0)
  try:
    rest = FLAGS(list(argv), known_only=True)
    rest = flags.FLAGS(rest, known_only=True)
  except flags.Error as e:
    sys.exit(f'error: {e}\nSee --help.')
  unknown = [a for a in rest[1:] if a.startswith('--')]
  if unknown:
    sys.exit(f'error: unknown flag {unknown[0]}; see --help')
  return rest


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
