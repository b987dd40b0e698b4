r"""Hyper-parameter sweeps: one fine-tuning run per cell of a grid; resumable, shardable.

  python -m experiments.sweep --root=sweeps/flowers \
      --grid='image_size=150,299 optimizer=adam,rmsprop pooling=avg,max' -- \
      --arch=inception_v3 --dataset=folder:~/flowers --epochs=5 --horizontal_flip

Every cell of the grid (the product of the axes, the last one varying fastest) is
``python -m experiments.finetune`` with the flags after ``--`` plus the cell's
values, run in its own process with ``--workdir=ROOT/<cell>``, the cell named after
its values (``image_size=150+optimizer=adam+pooling=avg``). Any finetune flag can be
an axis, ``arch`` included (architectures and pretrained tags:
``arch=inception_v3.tf_in1k,inception_resnet_v2.tf_in1k``).

Before anything runs, every cell's flags are checked as finetune checks them (an
unknown flag, a value of the wrong type, an input below the architecture's minimum,
a cell directory trained with other settings: a clear error, nothing started).

Running a sweep again continues it: finished cells are skipped, a cell that was
interrupted resumes from its last checkpoint (finetune's ``--resume`` of its
directory), a failed cell is retried (``--noretry_failed`` skips it). A cell that
fails is recorded with its error and the sweep goes on. ``--shard=I/N`` runs cells
I, I+N, I+2N... so N processes or machines sharing ``--root`` split the grid; each
writes the comparison of everything in the root when it ends.

``ROOT/``
  ``<cell>/``          the cell's run directory (``experiments.runs``)
  ``logs/<cell>.log``  the cell's console output, every attempt appended
  ``logs/<cell>.json`` the cell's values, status, error and attempts
  ``sweep.json``       the grid and the fixed flags of the last invocation
  ``comparison.md|csv|png``  ``experiments.compare`` of the root, after each sweep

Why a process per cell rather than calling finetune in this process: each cell is
exactly the command a user would run (same wall time, logs, exit status and
records); a crash, an out-of-memory kill or memory held by one cell's data pipeline
cannot stop or slow the others, and no flag or JAX setting leaks from one cell into
the next. Compilation is not paid twice: finetune's persistent XLA cache
(``--compilation_cache_dir``, shared by default) serves a cell whose program was
compiled for an earlier cell. The price is the start of a process, a few seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import compare
from experiments import finetune  # its flags: what a cell may set (imports JAX)
from experiments import folders
from experiments import runs as runs_lib

FLAGS = flags.FlagValues()  # this command's own flags; finetune's are global

flags.DEFINE_string('root', None, 'Directory of the sweep: one run directory per cell, '
                    'logs/, comparison.*', flag_values=FLAGS)
flags.DEFINE_string('grid', None, 'Axes separated by spaces, each NAME=VALUE[,VALUE...] '
                    'with NAME a flag of experiments.finetune, e.g. '
                    '\'image_size=150,299 optimizer=adam,rmsprop\'.', flag_values=FLAGS)
flags.DEFINE_string('shard', '0/1', 'I/N: run only cells I, I+N, I+2N, ... (0 <= I < N), '
                    'to split a grid across processes or machines sharing --root.',
                    flag_values=FLAGS)
flags.DEFINE_bool('retry_failed', True, 'Run again the cells that failed in an earlier '
                  'sweep (they resume from their last checkpoint when they have one).',
                  flag_values=FLAGS)
flags.DEFINE_bool('quiet', False, 'Show only the sweep\'s own progress lines (each cell\'s '
                  'output is always in ROOT/logs/<cell>.log).', flag_values=FLAGS)
flags.DEFINE_bool('dry_run', False, 'Check the flags, list the cells with their state and '
                  'stop.', flag_values=FLAGS)
flags.DEFINE_bool('compare', True, 'Write ROOT/comparison.md|csv|png at the end.',
                  flag_values=FLAGS)

FINETUNE = ('-m', 'experiments.finetune')  # the program of a cell: python FINETUNE ...
# Set by the sweep for each cell: not allowed in the grid or the fixed flags.
RESERVED = ('workdir', 'runs_dir', 'resume')
DONE = ('finished', 'stopped early')  # run.json statuses of a complete run
LOGS = 'logs'
SWEEP_JSON = 'sweep.json'


class SweepError(ValueError):
  """A sweep that cannot run as asked (the message names the fix)."""


# ---------------------------------------------------------------------------- grid


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the grid.

  Attributes:
    index: position in the whole grid (0-based, product order).
    name: directory name, ``flag=value`` pairs joined by ``+``.
    values: (flag, value as written in --grid) per axis, in grid order.
    parsed: the same values as finetune parses them (what flags.json holds).
  """
  index: int
  name: str
  values: tuple[tuple[str, str], ...]
  parsed: tuple[tuple[str, Any], ...]

  def args(self) -> list[str]:
    return [f'--{k}={v}' for k, v in self.values]

  def label(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.values)


def finetune_flags() -> dict[str, flags.Flag]:
  """Name -> flag of every flag experiments.finetune defines."""
  return {f.name: f for f in flags.FLAGS.get_key_flags_for_module(finetune)}


def _isolated_finetune_flags() -> flags.FlagValues:
  """A private FlagValues holding copies of finetune's flags (for parsing only)."""
  fv = flags.FlagValues()
  for name, f in finetune_flags().items():
    g = copy.deepcopy(f)
    g.value, g.present, g.using_default_value = g.default, 0, True
    fv[name] = g
  return fv


def _unknown(name: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f'; did you mean --{close[0]}?' if close else ''


def parse_grid(text: str | None) -> list[tuple[str, list[str]]]:
  """``'a=1,2 b=x'`` -> ``[('a', ['1', '2']), ('b', ['x'])]`` (syntax only)."""
  axes: list[tuple[str, list[str]]] = []
  for item in (text or '').split():
    name, eq, vals = item.partition('=')
    name = name.lstrip('-')
    values = vals.split(',')
    if not eq or not name or any(not v for v in values):
      raise SweepError(f'--grid: {item!r} is not NAME=VALUE[,VALUE...] (axes separated by '
                       'spaces, values by commas, e.g. --grid=\'image_size=150,299 '
                       'optimizer=adam,rmsprop\')')
    if name in dict(axes):
      raise SweepError(f'--grid: {name} is given twice; list all its values in one axis '
                       f'({name}=A,B,...)')
    axes.append((name, values))
  if not axes:
    raise SweepError('--grid is empty: give at least one axis, e.g. '
                     '--grid=\'optimizer=adam,rmsprop\'')
  return axes


def _slug(value: str) -> str:
  """A value as it appears in a directory name (paths: their last part)."""
  tail = value.partition(':')[2] if re.match(r'^(folder|tfds):', value) else value
  if os.sep in tail or (os.altsep and os.altsep in tail):
    tail = os.path.basename(os.path.normpath(os.path.expanduser(tail)))
  return re.sub(r'[^A-Za-z0-9_.=-]+', '_', tail).strip('_') or '_'


def check_grid(axes: list[tuple[str, list[str]]], fixed: Sequence[str]
               ) -> tuple[list[Cell], dict[str, Any]]:
  """Validates the axes and the fixed finetune flags; returns the cells.

  Returns:
    (cells, fixed flag values given after ``--``, as finetune parses them).

  Raises:
    SweepError: an unknown flag, a value of the wrong type, a duplicate value, a
      flag both fixed and varied, or a flag the sweep sets itself.
  """
  known = finetune_flags()
  parsed_axes = []
  for name, values in axes:
    if name in RESERVED:
      raise SweepError(f'--grid: --{name} cannot be an axis: the sweep sets it (each cell '
                       'runs in ROOT/<cell name>)')
    if name not in known:
      raise SweepError(f'--grid: unknown flag {name!r}: not a flag of experiments.finetune'
                       f'{_unknown(name, known)} (python -m experiments.finetune --help '
                       'lists them)')
    flag, parsed = known[name], []
    for v in values:
      try:
        p = flag.parser.parse(v)
      except (ValueError, TypeError) as e:
        raise SweepError(f'--grid: {name}={v} is not a valid value of --{name} '
                         f'({flag.flag_type()}): {e}') from None
      if p in parsed:
        raise SweepError(f'--grid: {name} lists the value {v!r} twice')
      parsed.append(p)
    parsed_axes.append(parsed)

  fv = _isolated_finetune_flags()
  try:
    fv(['finetune'] + list(fixed))
  except flags.UnrecognizedFlagError as e:
    raise SweepError(f'after --: unknown flag {e.flagname!r}: not a flag of '
                     f'experiments.finetune{_unknown(e.flagname, known)}') from None
  except flags.Error as e:
    raise SweepError(f'after --: {e}') from None
  fixed_values = {n: fv[n].value for n in known if fv[n].present}
  for name in RESERVED:
    if name in fixed_values:
      raise SweepError(f'--{name} cannot be given to a sweep: each cell runs in '
                       'ROOT/<cell name> (set --root)')
  both = [n for n, _ in axes if n in fixed_values]
  if both:
    raise SweepError(f'--{both[0]} is both a grid axis and a fixed flag after --; '
                     'drop one of them')

  cells, names = [], {}
  for index, combo in enumerate(itertools.product(*[range(len(v)) for _, v in axes])):
    values = tuple((n, axes[a][1][i]) for a, ((n, _), i) in enumerate(zip(axes, combo)))
    parsed = tuple((n, parsed_axes[a][i]) for a, ((n, _), i) in enumerate(zip(axes, combo)))
    name = '+'.join(f'{k}={_slug(v)}' for k, v in values)
    if name in names:
      raise SweepError(f'cells {names[name]} and {" ".join(f"{k}={v}" for k, v in values)} '
                       f'would share the directory {name}: use values whose last path '
                       'parts differ')
    names[name] = ' '.join(f'{k}={v}' for k, v in values)
    cells.append(Cell(index, name, values, parsed))
  return cells, fixed_values


def parse_shard(text: str) -> tuple[int, int]:
  m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text or '')
  if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
    raise SweepError(f'--shard={text!r}: use I/N with 0 <= I < N, e.g. --shard=0/2 and '
                     '--shard=1/2 for two processes')
  return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------- cells


def cell_state(run_dir: str) -> str:
  """'new', 'done' (finished or stopped early), 'partial' (a run to resume)."""
  if not os.path.isdir(run_dir):
    return 'new'
  if not runs_lib.is_run_dir(run_dir):
    return 'new' if not any(files for _, _, files in os.walk(run_dir)) else 'foreign'
  path = os.path.join(run_dir, runs_lib.RECORD)
  try:
    status = runs_lib.read_json(path).get('status') if os.path.exists(path) else None
  except (OSError, ValueError):
    status = None
  return 'done' if status in DONE else 'partial'


def check_cell(cell: Cell, fixed: Sequence[str], run_dir: str) -> None:
  """Runs finetune's own flag checks for the cell (no data, no TensorFlow, nothing
  compiled); a cell directory trained with other settings is refused with the diff."""
  fv = _isolated_finetune_flags()
  fv(['finetune'] + list(fixed) + cell.args() + [f'--workdir={run_dir}'])
  values = {n: fv[n].value for n in finetune_flags()}
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['sweep'], known_only=True)
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  try:
    with flagsaver.flagsaver(**values):
      finetune.check_flags()
  except (finetune.RunError, folders.DataError, ValueError, FileNotFoundError) as e:
    hint = ''
    if runs_lib.is_run_dir(run_dir):
      hint = ('\nThis root was swept with other fixed flags (see its sweep.json); give the '
              'same flags to continue it, or a new --root for the new settings.')
    raise SweepError(f'cell {cell.label()}: {e}{hint}') from None


class _Lock:
  """``ROOT/logs/<cell>.lock``: one process per cell, across shards and reruns.

  A lock left by a process of this host that no longer runs (killed) is taken
  over; one from another host is respected until removed by hand.
  """

  def __init__(self, path: str):
    self.path = path
    self.held = False

  def acquire(self) -> str | None:
    """Takes the lock; returns None, or who holds it."""
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        holder = self._holder()
        if holder is None:  # stale: its process is gone
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
          continue
        return holder
      with os.fdopen(fd, 'w') as f:
        json.dump(dict(host=socket.gethostname(), pids=[os.getpid()],
                       since=time.strftime('%Y-%m-%d %H:%M:%S')), f)
      self.held = True
      return None
    return 'another process'

  def add_pid(self, pid: int) -> None:
    data = runs_lib.read_json(self.path)
    data['pids'].append(pid)
    runs_lib.atomic_write_json(self.path, data)

  def _holder(self) -> str | None:
    try:
      data = runs_lib.read_json(self.path)
    except (OSError, ValueError):
      return None if time.time() - _mtime(self.path) > 60 else 'a starting process'
    if data.get('host') != socket.gethostname():
      return (f"host {data.get('host')} (since {data.get('since')}; delete {self.path} if "
              'that process is gone)')
    alive = [p for p in data.get('pids', []) if _alive(p)]
    return f"process {alive[0]} (since {data.get('since')})" if alive else None

  def release(self) -> None:
    if self.held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self.held = False


def _mtime(path: str) -> float:
  try:
    return os.path.getmtime(path)
  except OSError:
    return 0.0


def _alive(pid: int) -> bool:
  """Whether process ``pid`` runs (a zombie, killed but not reaped, does not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except (OSError, IndexError):
    return True  # no /proc (macOS): kill(0) is the answer


def _error_of(tail: Sequence[str], returncode: int, run_dir: str) -> str:
  """The reason a cell failed, from its last output lines and its run record."""
  lines = [l.rstrip('\n') for l in tail]
  for i in range(len(lines) - 1, -1, -1):
    if lines[i].startswith('error: '):
      return '\n'.join(lines[i:])[len('error: '):].strip()
  record = os.path.join(run_dir, runs_lib.RECORD)
  if os.path.exists(record):
    try:
      data = runs_lib.read_json(record)
      if data.get('status') == 'failed' and data.get('error'):
        return str(data['error'])
    except (OSError, ValueError):
      pass
  text = [l for l in lines if l.strip()]
  if returncode < 0:
    name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ''
    why = f'killed by signal {-returncode} {name}'.strip()
    return why + (' (out of memory?)' if -returncode == signal.SIGKILL else '')
  return text[-1].strip() if text else f'exit status {returncode}, no output'


def _hms(seconds: float) -> str:
  seconds = int(max(0, round(seconds)))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class _Interrupted(Exception):
  """The sweep was asked to stop (SIGTERM)."""


def run_cell(cell: Cell, argv: list[str], log_path: str, quiet: bool,
             on_start=None) -> tuple[int, list[str]]:
  """Runs one cell's finetune process; (exit status, its last output lines).

  The output goes to ``log_path`` (appended) and, unless ``quiet``, to stderr.
  Interrupted (Ctrl-C, SIGTERM), the process is given time to record its attempt.
  """
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  tail: list[str] = []
  with open(log_path, 'a', encoding='utf-8') as log:
    log.write(f'\n===== {time.strftime("%Y-%m-%d %H:%M:%S")} {cell.label()}\n'
              f'===== {" ".join(argv)}\n')
    log.flush()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding='utf-8', errors='replace', env=env)
    try:
      if on_start is not None:
        on_start(proc)
      for line in proc.stdout:
        log.write(line)
        log.flush()
        tail.append(line)
        del tail[:-60]
        if not quiet:
          sys.stderr.write(line)
          sys.stderr.flush()
      return proc.wait(), tail
    except BaseException:
      _stop(proc)
      raise


def _stop(proc: subprocess.Popen) -> None:
  """Lets an interrupted cell end (it got the signal too, or gets SIGINT now)."""
  for sig, wait in ((None, 10), (signal.SIGINT, 60), (signal.SIGKILL, None)):
    if proc.poll() is not None:
      return
    if sig is not None:
      proc.send_signal(sig)
    try:
      proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
      pass


@dataclasses.dataclass
class Result:
  """What a sweep did (``run_sweep``'s return value)."""
  cells: list[Cell]
  states: dict[str, str]          # this shard's cells: done, failed, busy, new, partial
  comparison: str | None          # comparison.md text


def run_sweep(root: str, grid: str, fixed: Sequence[str], *, shard: str = '0/1',
              retry_failed: bool = True, quiet: bool = False, dry_run: bool = False,
              write_comparison: bool = True,
              command: Sequence[str] | None = None) -> Result:
  """Runs (or continues) a sweep; see the module docstring.

  Args:
    root: the sweep directory.
    grid: the axes (``--grid``).
    fixed: finetune flags shared by every cell (after ``--``).
    shard: ``I/N``.
    retry_failed: run cells that failed before.
    quiet: do not echo the cells' output.
    dry_run: check and list the cells, run nothing.
    write_comparison: write ROOT/comparison.* at the end.
    command: the program of a cell (default ``python -m experiments.finetune``).
  """
  if not root:
    raise SweepError('--root is required: the directory that holds the sweep\'s runs')
  root = os.path.abspath(os.path.expanduser(root))
  if os.path.exists(root) and not os.path.isdir(root):
    raise SweepError(f'--root={root} is a file; give a directory')
  i_shard, n_shard = parse_shard(shard)
  axes = parse_grid(grid)
  cells, _ = check_grid(axes, fixed)
  logs = os.path.join(root, LOGS)

  # Every cell is checked as finetune would check it, before anything runs; a
  # finished cell too (a rerun with other fixed flags must not pass its old
  # results off as the new sweep's).
  states, records = {}, {}
  for c in cells:
    d = os.path.join(root, c.name)
    state = cell_state(d)
    if state == 'new' and os.path.isdir(d):
      if c.index % n_shard != i_shard or not _clear_leftover(d, _lock_path(logs, c)):
        continue  # being started by another process
    check_cell(c, fixed, d)
    record = _read_cell_record(logs, c.name)
    if state != 'done' and record.get('status') == 'failed':
      state = 'failed'
    states[c.name], records[c.name] = state, record
  mine = [c for c in cells if c.index % n_shard == i_shard]

  shape = ' x '.join(f'{n} ({len(v)})' for n, v in axes)
  counts = {s: sum(1 for c in mine if states.get(c.name) == s)
            for s in ('done', 'partial', 'failed', 'new')}
  todo = [c for c in mine if states.get(c.name, 'new') in ('new', 'partial')
          or (states[c.name] == 'failed' and retry_failed)]
  _say(f'{len(cells)} cells: {shape}' + (f'; shard {i_shard}/{n_shard}: {len(mine)} cells'
                                          if n_shard > 1 else '') +
       f'; in {root}: {counts["done"]} finished, {counts["partial"]} to resume, '
       f'{counts["failed"]} failed before{"" if retry_failed else " (not retried)"}, '
       f'{counts["new"]} new')
  if dry_run:
    for c in mine:
      _say(f'  cell {c.index + 1}/{len(cells)} {states.get(c.name, "new"):8s} {c.name}')
    return Result(cells, {c.name: states.get(c.name, 'new') for c in mine}, None)

  os.makedirs(logs, exist_ok=True)
  runs_lib.atomic_write_json(os.path.join(root, SWEEP_JSON), dict(
      grid=[[n, v] for n, v in axes], fixed=list(fixed), cells=[c.name for c in cells],
      command=' '.join(sys.argv), updated=time.strftime('%Y-%m-%d %H:%M:%S')))
  prog = list(command) if command else [sys.executable, *FINETUNE]
  current: dict[str, Any] = {}

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    proc = current.get('proc')
    if proc is not None and proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
    raise _Interrupted(f'signal {signum}')

  old_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None
  ran, times, failed = 0, [], []
  try:
    for k, c in enumerate(todo):
      where = f'[{k + 1}/{len(todo)}] {c.label()}'
      d = os.path.join(root, c.name)
      lock = _Lock(_lock_path(logs, c))
      holder = lock.acquire()
      if holder is not None:
        states[c.name] = 'busy'
        _say(f'{where}: skipped, being run by {holder}')
        continue
      try:
        state = cell_state(d)  # again: another process may have finished it meanwhile
        if state == 'done':
          states[c.name] = 'done'
          continue
        if state == 'new' and os.path.isdir(d):
          shutil.rmtree(d)  # empty folders of a process killed before its first record
        resume = state == 'partial'
        eta = (f'ETA {_hms(sum(times) / len(times) * (len(todo) - k))}' if times
               else 'ETA after the first cell')
        _say(f'{where}: {"resuming" if resume else "starting"} | {ran} run, '
             f'{len(failed)} failed, {len(todo) - k} to go | {eta}')
        argv = prog + list(fixed) + c.args() + [f'--workdir={d}'] + (
            ['--resume'] if resume else [])
        record = records.get(c.name) or {}
        attempt = dict(start=time.strftime('%Y-%m-%d %H:%M:%S'), host=socket.gethostname(),
                       shard=f'{i_shard}/{n_shard}', resumed=resume)
        record.update(name=c.name, index=c.index, values=dict(c.parsed),
                      value_text=dict(c.values), status='running', error=None)
        record.setdefault('attempts', []).append(attempt)
        _write_cell_record(logs, c.name, record)

        def on_start(proc, lock=lock):
          current['proc'] = proc
          lock.add_pid(proc.pid)

        t0 = time.time()
        try:
          rc, tail = run_cell(c, argv, os.path.join(logs, c.name + '.log'), quiet,
                              on_start)
        except (KeyboardInterrupt, _Interrupted):
          attempt.update(end=time.strftime('%Y-%m-%d %H:%M:%S'),
                         seconds=round(time.time() - t0, 1), returncode=None)
          record.update(status='interrupted', error='interrupted; run the sweep again to '
                        'resume this cell')
          _write_cell_record(logs, c.name, record)
          raise KeyboardInterrupt from None
        finally:
          current.pop('proc', None)
        seconds = time.time() - t0
        attempt.update(end=time.strftime('%Y-%m-%d %H:%M:%S'), seconds=round(seconds, 1),
                       returncode=rc)
        ran += 1
        if rc == 0 and cell_state(d) == 'done':
          times.append(seconds)
          states[c.name] = 'done'
          record.update(status='finished')
          _say(f'{where}: finished in {_hms(seconds)}{_best_text(d)}')
        else:
          error = (_error_of(tail, rc, d) if rc else
                   'the process ended without finishing its run')
          states[c.name] = 'failed'
          failed.append(c)
          record.update(status='failed', error=error)
          _say(f'{where}: FAILED after {_hms(seconds)}: {error.splitlines()[0]} (log: '
               f'{os.path.join(logs, c.name + ".log")})')
        _write_cell_record(logs, c.name, record)
      finally:
        lock.release()
  finally:
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)

  text = None
  if write_comparison:
    try:
      text = compare.write_comparison(root, compare.find_runs([root]))
    except compare.CompareError as e:
      _say(f'no comparison: {e}')
  done = sum(1 for c in mine if states.get(c.name) == 'done')
  _say(f'{done} of {len(mine)} cells finished ({ran} run now)' +
       (f'; {len(failed)} failed: ' + ', '.join(c.name for c in failed) if failed else '')
       + (f'. Comparison: {os.path.join(root, "comparison.md")}' if text else ''))
  return Result(cells, {c.name: states.get(c.name, 'new') for c in mine}, text)


def _lock_path(logs: str, cell: Cell) -> str:
  return os.path.join(logs, cell.name + '.lock')


def _clear_leftover(run_dir: str, lock_path: str) -> bool:
  """Removes a cell folder without files (a process killed before finetune wrote its
  first record) unless a live process holds the cell; True when it is gone."""
  if os.path.exists(lock_path) and _Lock(lock_path)._holder() is not None:  # pylint: disable=protected-access
    return False
  shutil.rmtree(run_dir)
  return True


def _main_thread() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()


def _best_text(run_dir: str) -> str:
  try:
    row = compare.load_run(run_dir)
  except (compare.CompareError, OSError, ValueError):
    return ''
  if row.best_top1 is None:
    return ''
  return (f' (best val top-1 {100 * row.best_top1:.2f}% at epoch '
          f'{compare.fmt_epoch(row.best_top1_epoch)})')


def _read_cell_record(logs: str, name: str) -> dict[str, Any]:
  path = os.path.join(logs, name + '.json')
  try:
    return runs_lib.read_json(path) if os.path.exists(path) else {}
  except (OSError, ValueError):
    return {}


def _write_cell_record(logs: str, name: str, record: dict[str, Any]) -> None:
  runs_lib.atomic_write_json(os.path.join(logs, name + '.json'), record)


def _say(msg: str) -> None:
  logging.info('sweep: %s', msg)


# ---------------------------------------------------------------------------- main


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the sweep's arguments, the finetune flags after ``--``)."""
  argv = list(argv)
  if '--' in argv:
    i = argv.index('--')
    return argv[:i], argv[i + 1:]
  return argv, []


def parse_flags(argv: Sequence[str]) -> list[str]:
  """``app.run`` flags parser: this command's flags, absl's, then finetune's after --."""
  own, fixed = split_argv(argv)
  if any(a in ('-h', '--help', '--helpshort', '--helpfull', '-?') for a in own[1:]):
    print(__doc__.split('\n\n')[0].strip() + '\n\n' + FLAGS.get_help())
    sys.exit(0)
  known = finetune_flags()
  for a in own[1:]:
    name = a.lstrip('-').split('=')[0]
    name = name[2:] if name.startswith('no') and name[2:] in known else name
    if a.startswith('-') and name in known and name not in FLAGS:
      sys.exit(f'error: --{name} is a flag of experiments.finetune: put it after -- '
               f'(python -m experiments.sweep --root=... --grid=... -- --{name}=...)')
  try:
    rest = FLAGS(own, known_only=True)
    rest = flags.FLAGS(rest, known_only=True)  # absl's own: --verbosity, ...
  except flags.Error as e:
    sys.exit(f'error: {e}\nSee --help.')
  if len(rest) > 1:
    sys.exit(f'error: unexpected arguments {rest[1:]} (finetune flags go after --)')
  return [rest[0], '--', *fixed]


def main(argv, command: Sequence[str] | None = None):
  fixed = argv[2:] if len(argv) > 1 and argv[1] == '--' else argv[1:]
  try:
    result = run_sweep(FLAGS.root, FLAGS.grid, fixed, shard=FLAGS.shard,
                       retry_failed=FLAGS.retry_failed, quiet=FLAGS.quiet,
                       dry_run=FLAGS.dry_run, write_comparison=FLAGS.compare,
                       command=command)
  except KeyboardInterrupt:
    sys.exit('sweep interrupted: run the same command again to resume')
  except (SweepError, compare.CompareError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  if result.comparison:
    print('\n' + result.comparison)
  if FLAGS.dry_run:
    return
  failed = [n for n, s in result.states.items() if s == 'failed']
  if failed:
    sys.exit(f'{len(failed)} cell(s) failed: {", ".join(failed)} (errors in '
             f'{os.path.join(os.path.abspath(FLAGS.root), LOGS)}/<cell>.json|log); run '
             'the same command again to retry them')


def run_main(command: Sequence[str] | None = None) -> None:
  """``app.run`` of this command (``command``: another program for the cells)."""
  app.run(functools.partial(main, command=command), flags_parser=parse_flags)


if __name__ == '__main__':
  run_main()
