"""Run directories: naming, flag records, resume checks, atomic writes, run records.

A fine-tuning run lives in one directory (``./runs/<arch>-<dataset>-<YYYYmmdd-HHMMSS>``
by default)::

  flags.json          the settings that produced the model (every flag but the
                      process plumbing in ``PLUMBING``); written once, never rewritten
  flags.txt           the same as an absl flagfile: ``--flagfile=RUN/flags.txt``
                      replays the run (into a new directory)
  run.json            the run record (``RunRecord``): status, dataset, classes,
                      parameter count, per-attempt plumbing, wall time, images/s,
                      best epoch and metrics, test metrics; what ``compare`` reads
  best.safetensors    the inference file of the best model (inception_jax.inference)
  checkpoints/        full train states for resuming (orbax)
  metrics/            evals.jsonl|csv (one row per evaluation), steps.jsonl|csv
  plots/, summary.md, tensorboard/; eval/ (experiments.evaluate's reports),
                      features/ (experiments.extract_features)

Every record is written atomically (temporary file, fsync, rename), so a run killed
at any point leaves the previous version of each file intact.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import sys
import time
from typing import Any

# Flags that say how and where a process runs, not what it computes: they may
# change when a run is resumed and are recorded per attempt in run.json.
PLUMBING = ('workdir', 'runs_dir', 'resume', 'compilation_cache_dir', 'cache_dir',
            'data_dir', 'coordinator_address', 'num_processes', 'process_id',
            'measure_pipeline_seconds', 'checkpoint_every', 'keep_checkpoints')

FLAGS_JSON = 'flags.json'
FLAGS_TXT = 'flags.txt'
RECORD = 'run.json'


class RunDirError(ValueError):
  """A run directory cannot be used as asked (the message names the fix)."""


# ------------------------------------------------------------------------ writing


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` so readers see the old or the new file, never half."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + '\n')


def _json_default(x):
  if hasattr(x, 'item'):  # numpy scalars
    return x.item()
  if isinstance(x, (set, tuple)):
    return list(x)
  return str(x)


def read_json(path: str) -> Any:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


# ------------------------------------------------------------------------- naming


def _slug(text: str) -> str:
  text = os.path.basename(os.path.normpath(text.partition(':')[2] or text))
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_.-') or 'data'


def dataset_slug(spec: str) -> str:
  """'digits', 'folder:~/data/flowers' -> 'flowers', 'tfds:cifar10' -> 'cifar10'."""
  return _slug(spec)


def new_run_name(arch: str, dataset: str, when: float | None = None) -> str:
  """``<arch>-<dataset>-<YYYYmmdd-HHMMSS>`` (local time)."""
  stamp = datetime.datetime.fromtimestamp(when or time.time()).strftime('%Y%m%d-%H%M%S')
  return f'{_slug(arch)}-{dataset_slug(dataset)}-{stamp}'


def unique_dir(parent: str, name: str) -> str:
  """``parent/name``, or ``name-2``, ``name-3``... when taken."""
  path, n = os.path.join(parent, name), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(parent, f'{name}-{n}')
  return path


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, FLAGS_JSON))


def latest_run(runs_dir: str, arch: str | None = None, dataset: str | None = None
               ) -> str | None:
  """The most recently created run under ``runs_dir`` with this arch and dataset."""
  if not os.path.isdir(runs_dir):
    return None
  found = []
  for name in os.listdir(runs_dir):
    d = os.path.join(runs_dir, name)
    if not is_run_dir(d):
      continue
    try:
      flags = read_json(os.path.join(d, FLAGS_JSON))
    except (OSError, ValueError):
      continue
    if arch is not None and flags.get('arch') != arch:
      continue
    if dataset is not None and flags.get('dataset') != dataset:
      continue
    found.append((os.path.getmtime(os.path.join(d, FLAGS_JSON)), d))
  return max(found)[1] if found else None


# -------------------------------------------------------------------------- flags


def flagfile_text(values: dict[str, Any], header: str = '') -> str:
  """absl ``--flagfile`` lines (``--name=value``; booleans ``--name`` / ``--noname``;
  unset (None) flags left out so they keep their defaults)."""
  lines = [f'# {line}' for line in header.splitlines()]
  for name in sorted(values):
    v = values[name]
    if v is None:
      continue
    if isinstance(v, bool):
      lines.append(f'--{name}' if v else f'--no{name}')
    elif isinstance(v, (list, tuple)):
      lines.append(f'--{name}={",".join(str(x) for x in v)}')
    else:
      lines.append(f'--{name}={v}')
  return '\n'.join(lines) + '\n'


def write_flags(run_dir: str, values: dict[str, Any], command: str) -> None:
  """flags.json + flags.txt of a new run (refuses to overwrite: records are final)."""
  path = os.path.join(run_dir, FLAGS_JSON)
  if os.path.exists(path):
    raise RunDirError(f'{path} exists: a run record is never rewritten')
  atomic_write_text(os.path.join(run_dir, FLAGS_TXT), flagfile_text(
      values, f'Flags of the run in {run_dir}; replay (into a new run directory) with\n'
      f'  {command} --flagfile={os.path.join(run_dir, FLAGS_TXT)}'))
  atomic_write_json(path, values)


def _normal(v: Any) -> Any:
  return json.loads(json.dumps(v, default=_json_default))


def flag_diff(old: dict[str, Any], new: dict[str, Any],
              defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
  """(name, old, new) for every setting that differs.

  A flag missing from ``old`` (recorded by an older version) counts as its default.
  """
  defaults = defaults or {}
  out = []
  for name in sorted(set(old) | set(new)):
    if name in PLUMBING:
      continue
    a = _normal(old.get(name, defaults.get(name)))
    b = _normal(new.get(name, defaults.get(name)))
    if a != b:
      out.append((name, a, b))
  return out


def format_diff(diff: list[tuple[str, Any, Any]]) -> str:
  width = max(len(n) for n, _, _ in diff)
  return '\n'.join(f'  --{n:<{width}}  run: {a!r:<24}  now: {b!r}' for n, a, b in diff)


# ------------------------------------------------------------------------- record


class RunRecord:
  """``run.json``: a dict saved atomically on every ``update``.

  Keys (all optional until the run gets there): ``status`` ('running', 'finished',
  'failed', 'stopped early'), ``created``, ``updated``, ``arch``, ``pretrained``,
  ``dataset``, ``layout``, ``class_names``, ``num_classes``, ``train_images``,
  ``validation_images``, ``test_images``, ``params``, ``image_size``,
  ``preprocessing``, ``steps``, ``steps_per_epoch``, ``epochs_done``, ``best``
  ({epoch, step, val_loss, val_top1, val_top5}), ``final`` (the same keys, for
  the model the reports describe), ``wall_seconds`` (all attempts),
  ``train_images_per_second``, ``test`` (evaluate's metrics on the test split),
  ``attempts`` (per process start: start/end time, start/end step, plumbing
  flags, host, command line), ``error``.
  """

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, RECORD)
    self.data: dict[str, Any] = {}
    if os.path.exists(self.path):
      self.data = read_json(self.path)

  def update(self, **kw: Any) -> None:
    self.data.update(kw)
    self.data['updated'] = _now()
    atomic_write_json(self.path, self.data)

  def start_attempt(self, start_step: int, plumbing: dict[str, Any]) -> None:
    attempts = self.data.setdefault('attempts', [])
    attempts.append(dict(start=_now(), start_step=start_step, host=socket.gethostname(),
                         command=' '.join(sys.argv), flags=plumbing))
    self.data.setdefault('created', attempts[0]['start'])
    self.update(status='running')

  def end_attempt(self, end_step: int, wall_seconds: float, **kw: Any) -> None:
    attempt = self.data['attempts'][-1]
    attempt.update(end=_now(), end_step=end_step, wall_seconds=round(wall_seconds, 1))
    total = sum(a.get('wall_seconds', 0.0) for a in self.data['attempts'])
    self.update(wall_seconds=round(total, 1), **kw)


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def load_record(run_dir: str) -> dict[str, Any]:
  """A run's flags and record: ``{'flags': ..., **run.json}`` (clear error if absent)."""
  run_dir = os.path.expanduser(run_dir)
  if not os.path.isdir(run_dir):
    raise RunDirError(f'{run_dir}: no such run directory')
  if not is_run_dir(run_dir):
    raise RunDirError(f'{run_dir} is not a run directory of experiments.finetune (no '
                      f'{FLAGS_JSON})')
  out = {}
  if os.path.exists(os.path.join(run_dir, RECORD)):
    out = read_json(os.path.join(run_dir, RECORD))
  out['flags'] = read_json(os.path.join(run_dir, FLAGS_JSON))
  out['run_dir'] = os.path.abspath(run_dir)
  return out
