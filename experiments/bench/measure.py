"""What every benchmark worker shares: the worker protocol, step timing, peak memory.

A worker is a subprocess started by ``experiments.benchmark`` as ``python -m MODULE
--config CFG.json --out OUT.json`` (``worker_main``): it reads its settings from
``CFG.json`` and rewrites ``OUT.json`` with the list of its records after each one,
so a crash keeps what was measured. A failed measurement is a record with an
``error`` (``error_record``).

Standard library only: the torch and Keras workers import this without JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
import traceback


def median_step(fn, warmup: int, repeats: int) -> dict:
  """Times ``fn`` (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return {'median_s': statistics.median(times), 'min_s': min(times),
          'max_s': max(times), 'repeats': repeats, 'warmup': warmup}


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """Peak RSS since the last ``reset_peak_rss`` (VmHWM), else of the process."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return process_maxrss_bytes()


def process_maxrss_bytes() -> int:
  """``resource.getrusage`` peak RSS of the whole process (kB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024



def mem_available_bytes() -> int | None:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def cpu_threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def worker_main(run_fn) -> None:
  """Entry of a worker subprocess: ``--config FILE --out FILE``."""
  p = argparse.ArgumentParser()
  p.add_argument('--config', required=True)
  p.add_argument('--out', required=True)
  a = p.parse_args()
  with open(a.config) as f:
    cfg = json.load(f)
  records = []

  def emit(rec):
    records.append(rec)
    with open(a.out, 'w') as f:  # rewritten each time: a crash keeps what was done
      json.dump(records, f, indent=1)
    print(json.dumps(rec), flush=True)

  run_fn(cfg, emit)


def error_record(cfg_part: dict, e: BaseException) -> dict:
  """``cfg_part`` with the error and the end of its traceback."""
  return {**cfg_part, 'error': f'{type(e).__name__}: {e}'[:2000],
          'traceback': traceback.format_exc()[-3000:]}
