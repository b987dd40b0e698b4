"""Throughput, compile time, memory and MFU of inception_jax against timm and Keras.

Run ``python -m experiments.benchmark`` (flags: ``--help``). Every framework runs in
its own subprocess (torch and tensorflow/keras must never share a process: importing
TensorFlow and then triton segfaults), and the report goes to ``--results_dir`` as ``benchmark.md`` and
``benchmark.json``:

* inference and train-step (forward, backward, SGD-momentum update) images/s per
  architecture at its default input size, per batch size and dtype, for ours (JAX,
  ``nnx.split`` + ``jax.jit`` + ``nnx.merge``), timm (PyTorch eager, optionally
  ``torch.compile``) and ``keras.applications`` on the JAX backend; ratios
  ours/theirs;
* XLA compile time of our forward and train step (``lower().compile()``), cold in
  the first process and again in a second process that reads the persistent
  compilation cache;
* peak memory: XLA's memory analysis of each executable, the device's
  ``peak_bytes_in_use`` on GPU, peak RSS of the process on CPU;
* model FLOPs utilisation against a stated peak;
* images/s per core of a JPEG decode + resize + flip input pipeline;
* the fine-tuning memory target: one train step of inception_v3 at 448x448, batch
  16, with and without rematerialisation.

Timings exclude warm-up and report the median of ``--repeats`` steps. The script
only reports; nothing here asserts a speed.

bfloat16 means mixed precision everywhere: bf16 compute with float32 parameters
(ours ``dtype=bfloat16``; timm under ``torch.autocast``; Keras ``mixed_bfloat16``).

The parts, in ``experiments/bench/``: ``measure.py`` (the worker protocol, step
timing and peak memory, shared by every worker), ``peaks.py`` (CPU and GPU peak
FLOP/s with their formulas), ``ours.py`` (our throughput, compile and memory
workers), ``pipeline.py`` (the input-pipeline worker), ``report.py`` (ratios,
MFU, the markdown table). The timm and Keras workers are
``experiments/bench_torch.py`` and ``experiments/bench_keras.py``. This module
starts the workers and writes the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from experiments.bench import ours, pipeline
from experiments.bench.measure import cpu_threads, worker_main
from experiments.bench.peaks import host_cpu_peak
from experiments.bench.report import add_derived, render_markdown
from experiments.bench_keras import KERAS_APPS

# When --archs is empty: the released architectures that main registers.
DEFAULT_ARCHS = ('inception_v1', 'inception_v1_bn', 'inception_v3', 'inception_v4',
                 'inception_resnet_v1', 'inception_resnet_v2')


WORKERS = {'ours': ours.run_ours, 'memory': ours.run_memory, 'pipeline': pipeline.run_pipeline}


def _run_worker(module_args: list[str], cfg: dict, env_extra: dict, tmp: str, name: str,
                timeout: float | None, log) -> list[dict]:
  cfg_path = os.path.join(tmp, f'{name}.cfg.json')
  out_path = os.path.join(tmp, f'{name}.out.json')
  with open(cfg_path, 'w') as f:
    json.dump(cfg, f)
  env = {**os.environ, **env_extra}
  cmd = [sys.executable, *module_args, '--config', cfg_path, '--out', out_path]
  log(f'[benchmark] {name}: {" ".join(module_args)}')
  t = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    rc, err = proc.returncode, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, err = 'timeout', (e.stderr or b'').decode() if isinstance(e.stderr, bytes) else (
        e.stderr or '')
  records = []
  if os.path.exists(out_path):
    with open(out_path) as f:
      records = json.load(f)
  log(f'[benchmark] {name}: rc={rc}, {len(records)} records, '
      f'{time.perf_counter() - t:.1f} s')
  if rc != 0:
    records.append({'worker': name, 'error': f'worker exited with {rc}',
                    'stderr_tail': (err or '')[-3000:]})
  for r in records:
    r.setdefault('worker', name)
  return records


def _probe_platform(env_extra: dict) -> str:
  code = 'import jax; print(jax.default_backend())'
  out = subprocess.run([sys.executable, '-c', code], env={**os.environ, **env_extra},
                       capture_output=True, text=True, check=False)
  return (out.stdout.strip().splitlines() or ['cpu'])[-1]


def _registered_archs() -> dict[str, int]:
  """Registered architecture -> default input size (asked in a subprocess)."""
  code = ('import json, inception_jax as m; print(json.dumps({n: m.get_arch(n).default_size '
          'for n in m.list_models()}))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _csv(s: str) -> list[str]:
  return [v.strip() for v in s.split(',') if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--archs', default='',
                 help='comma-separated architectures; default: the released ones registered')
  p.add_argument('--frameworks', default='ours,timm,keras',
                 help='any of ours, timm, keras')
  p.add_argument('--batch_sizes', default='',
                 help="comma-separated; default '8' on CPU, '1,8,32' on GPU")
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--image_size', type=int, default=0,
                 help='override every default input size (0: each arch default)')
  p.add_argument('--repeats', type=int, default=5, help='timed steps; the median is reported')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--results_dir', default='results')
  p.add_argument('--compilation_cache_dir', default='',
                 help='persistent XLA cache; default: a fresh temporary directory (cold)')
  p.add_argument('--cache_check', action=argparse.BooleanOptionalAction, default=True,
                 help='recompile ours in a second process that reads the warm cache')
  p.add_argument('--train_step', choices=('auto', 'library', 'local'), default='auto',
                 help='inception_jax.train when present (auto) or the local SGD step')
  p.add_argument('--xla_defaults', action=argparse.BooleanOptionalAction, default=True,
                 help="our workers run with inception_jax's XLA:CPU flags "
                      '(inception_jax.xla_flags); --no-xla_defaults opts them out')
  p.add_argument('--keras_xla_defaults', action='store_true',
                 help='give the Keras worker the same XLA flags (default: plain XLA)')
  p.add_argument('--remat', choices=('none', 'dots', 'full'), default='none',
                 help='rematerialise each top-level block in our train step')
  p.add_argument('--torch_compile', action='store_true', help='also time torch.compile')
  p.add_argument('--torch_channels_last', action='store_true')
  p.add_argument('--pipeline', action=argparse.BooleanOptionalAction, default=True)
  p.add_argument('--pipeline_images', type=int, default=256)
  p.add_argument('--memory_target', default='inception_v3:448:16',
                 help="ARCH:SIZE:BATCH for the one-step memory test ('' skips it)")
  p.add_argument('--memory_remat', default='none,dots,full',
                 help='remat settings of the memory test, one process each')
  p.add_argument('--worker_timeout', type=float, default=0, help='seconds; 0: none')
  p.add_argument('--quiet', action='store_true')
  return p.parse_args(argv)


def main(argv=None) -> dict:
  a = parse_args(argv)
  log = (lambda *_: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
  env_jax = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  plat = _probe_platform(env_jax)
  flags_plain = os.environ.get('XLA_FLAGS', '')
  # Imported here: the workers import this module without JAX. (Importing the
  # package also adds the flags to this process's XLA_FLAGS, read above.)
  from inception_jax import xla_flags  # pylint: disable=g-import-not-at-top
  if a.xla_defaults:
    flags_tuned = xla_flags.apply(dict(os.environ, XLA_FLAGS=flags_plain))
    env_ours = dict(env_jax, XLA_FLAGS=flags_tuned)
  else:  # importing inception_jax must not add them either
    flags_tuned = flags_plain
    env_ours = dict(env_jax, XLA_FLAGS=flags_plain, **{xla_flags.OPT_OUT: '0'})
  env_keras = dict(env_jax, KERAS_BACKEND='jax',
                   XLA_FLAGS=flags_tuned if a.keras_xla_defaults else flags_plain)
  registered = _registered_archs()
  if a.archs:
    archs = _csv(a.archs)
    unknown = [x for x in archs if x not in registered]
    if unknown:
      raise SystemExit(f'unknown architecture(s) {unknown}; registered: {registered}')
  else:
    archs = [x for x in DEFAULT_ARCHS if x in registered] or registered
  batch_sizes = [int(b) for b in _csv(a.batch_sizes or ('8' if plat == 'cpu' else '1,8,32'))]
  dtypes = _csv(a.dtypes)
  for d in dtypes:
    if d not in ('float32', 'bfloat16'):
      raise SystemExit(f"--dtypes: {d!r} is not 'float32' or 'bfloat16'")
  frameworks = _csv(a.frameworks)
  for fw in frameworks:
    if fw not in ('ours', 'timm', 'keras'):
      raise SystemExit(f"--frameworks: {fw!r} is not one of ours, timm, keras")
  modes = _csv(a.modes)
  timeout = a.worker_timeout or None
  os.makedirs(a.results_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='bench_')
  cache_dir = a.compilation_cache_dir or os.path.join(tmp, 'xla_cache')
  cache_was_empty = not (os.path.isdir(cache_dir) and os.listdir(cache_dir))
  os.makedirs(cache_dir, exist_ok=True)
  common = dict(archs=archs, default_sizes=registered, batch_sizes=batch_sizes, dtypes=dtypes, modes=modes,
                image_size=a.image_size, repeats=a.repeats, warmup=a.warmup)
  me = ['-m', 'experiments.benchmark', '--worker']
  records = []
  t0 = time.time()
  if 'ours' in frameworks:
    cfg = dict(common, cache_dir=cache_dir, remat=a.remat, train_step=a.train_step)
    records += _run_worker(me + ['ours'], cfg, env_ours, tmp, 'ours', timeout, log)
    if a.cache_check:
      records += _run_worker(me + ['ours'], dict(cfg, compile_only=True), env_ours, tmp,
                             'ours_warm_cache', timeout, log)
  if 'timm' in frameworks:
    cfg = dict(common, torch_compile=a.torch_compile, channels_last=a.torch_channels_last)
    records += _run_worker(['-m', 'experiments.bench_torch'], cfg, {}, tmp, 'timm',
                           timeout, log)
  if 'keras' in frameworks:
    cfg = dict(common, archs=[x for x in archs if x in KERAS_APPS])
    if cfg['archs']:
      records += _run_worker(['-m', 'experiments.bench_keras'], cfg,
                             env_keras, tmp, 'keras', timeout, log)
  if a.pipeline:
    cfg = dict(image_size=299, num_images=a.pipeline_images, jpeg_size=360,
               repeats=max(a.repeats, 1))
    records += _run_worker(me + ['pipeline'], cfg, env_ours, tmp, 'pipeline', timeout, log)
  if a.memory_target:
    arch, size, batch = a.memory_target.split(':')
    for remat in _csv(a.memory_remat):
      cfg = dict(arch=arch, size=int(size), batch=int(batch), remat=remat)
      records += _run_worker(me + ['memory'], cfg, env_ours, tmp, f'memory_{remat}',
                             timeout, log)

  threads = cpu_threads()
  meta = {
      'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'argv': sys.argv[1:] if argv is None else list(argv), 'platform': plat,
      'cpu_threads': threads, 'cpu_peak': host_cpu_peak(threads),
      'python': sys.version.split()[0], 'host': platform.node(),
      'cache_dir': cache_dir if a.compilation_cache_dir else '(temporary)',
      'cache_was_empty': cache_was_empty, 'wall_s': time.time() - t0,
      'bf16_meaning': 'mixed precision: bf16 compute, float32 parameters',
      'xla_flags_ours': flags_tuned, 'xla_flags_keras': env_keras['XLA_FLAGS'],
  }
  report = {'meta': meta, 'records': records}
  add_derived(report)
  with open(os.path.join(a.results_dir, 'benchmark.json'), 'w') as f:
    json.dump(report, f, indent=1, default=str)
  md = render_markdown(report)
  with open(os.path.join(a.results_dir, 'benchmark.md'), 'w') as f:
    f.write(md)
  log(md)
  shutil.rmtree(tmp, ignore_errors=True)
  return report



if __name__ == '__main__':
  if len(sys.argv) > 2 and sys.argv[1] == '--worker':
    name = sys.argv.pop(2)
    sys.argv.pop(1)
    worker_main(WORKERS[name])
  else:
    main()
