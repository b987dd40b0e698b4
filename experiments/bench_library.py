r"""Inference speed of inception_jax used as a plain library, beside timm.

  python -m experiments.bench_library [--archs=inception_v3,inception_v4,inception_resnet_v2]
      [--rounds=3] [--repeats=5] [--warmup=1]

Measures exactly what a library user writes, in a fresh process with no
``XLA_FLAGS`` set::

    import inception_jax as ij
    m = ij.create_model(arch)
    f = jax.jit(lambda x: m(x))

(float32, batch 8, 299x299), with the library's defaults (``import inception_jax``
adds its XLA:CPU flags, ``kernels='auto'``) and with the flags opted out
(``INCEPTION_JAX_XLA_DEFAULTS=0``), against timm in eager PyTorch
(``experiments.bench_torch``, the benchmark's worker). Each measurement is its own
process; per round the processes alternate (ours, ours opted out, timm) so that a
drift of the machine's speed reaches all three alike. The table reports, per
architecture, the median over rounds of each process's images/s (itself the median
of ``--repeats`` steps after ``--warmup``) and the ratios ours/timm. Nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARCHS = ('inception_v3', 'inception_v4', 'inception_resnet_v2')
VARIANTS = ('ours', 'ours_opt_out', 'timm')
BATCH, SIZE = 8, 299


def worker_ours(arch: str, warmup: int, repeats: int) -> dict:
  """The user's code, timed: create_model, jax.jit(lambda x: m(x)), repeated calls."""
  t0 = time.perf_counter()
  import inception_jax as ij  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments.bench.measure import median_step  # pylint: disable=g-import-not-at-top
  t_import = time.perf_counter()
  m = ij.create_model(arch)
  t_build = time.perf_counter()
  f = jax.jit(lambda x: m(x))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (BATCH, SIZE, SIZE, 3)),
                  jnp.float32)
  f(x).block_until_ready()
  t_first = time.perf_counter()
  timing = median_step(lambda: f(x).block_until_ready(), warmup, repeats)
  return {'images_per_s': BATCH / timing['median_s'], 'timing': timing,
          'import_s': t_import - t0, 'create_model_s': t_build - t_import,
          'first_call_s': t_first - t_build, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'backend': jax.default_backend(), 'jax': jax.__version__}


def _env(**extra) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS',
                                                          'INCEPTION_JAX_XLA_DEFAULTS')}
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  env.update(extra)
  return env


def _run(cmd: list[str], env: dict) -> tuple[int, str, str]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, *cmd], cwd=root, env=env, capture_output=True,
                     text=True, check=False)
  return r.returncode, r.stdout, r.stderr


def measure(variant: str, arch: str, a, tmp: str) -> dict:
  """One fresh process for one measurement; returns its record (or its error)."""
  if variant == 'timm':
    cfg = {'archs': [arch], 'default_sizes': {arch: SIZE}, 'batch_sizes': [BATCH],
           'dtypes': ['float32'], 'modes': ['infer'], 'image_size': SIZE,
           'repeats': a.repeats, 'warmup': a.warmup}
    cfg_path, out_path = os.path.join(tmp, 'timm.cfg.json'), os.path.join(tmp, 'timm.json')
    with open(cfg_path, 'w') as f:
      json.dump(cfg, f)
    rc, _, err = _run(['-m', 'experiments.bench_torch', '--config', cfg_path,
                       '--out', out_path], _env())
    recs = []
    if rc == 0 and os.path.exists(out_path):
      with open(out_path) as f:
        recs = json.load(f)
    if not recs or 'infer_images_per_s' not in recs[0]:
      return {'error': (recs[0].get('error') if recs else None) or err[-2000:]}
    return {'images_per_s': recs[0]['infer_images_per_s'], 'timing': recs[0]['infer']}
  extra = {'INCEPTION_JAX_XLA_DEFAULTS': '0'} if variant == 'ours_opt_out' else {}
  rc, out, err = _run(['-m', 'experiments.bench_library', '--worker', arch,
                       f'--warmup={a.warmup}', f'--repeats={a.repeats}'], _env(**extra))
  lines = [l for l in out.splitlines() if l.startswith('RESULT ')]
  if rc != 0 or not lines:
    return {'error': err[-2000:]}
  return json.loads(lines[-1][len('RESULT '):])


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m experiments.bench_library',
                              description=__doc__.split('\n')[0])
  p.add_argument('--archs', default=','.join(ARCHS))
  p.add_argument('--rounds', type=int, default=3, help='processes per variant and arch')
  p.add_argument('--repeats', type=int, default=5, help='timed calls per process')
  p.add_argument('--warmup', type=int, default=1, help='untimed calls after the first')
  p.add_argument('--json', default='', help='also write every record to this file')
  p.add_argument('--worker', default='', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  a = parse_args(sys.argv[1:] if argv is None else argv)
  if a.worker:
    print('RESULT ' + json.dumps(worker_ours(a.worker, a.warmup, a.repeats)), flush=True)
    return 0
  archs = [s for s in a.archs.split(',') if s]
  unknown = [s for s in archs if s not in ARCHS]
  if unknown:
    print(f'--archs: {unknown} not among {list(ARCHS)}', file=sys.stderr)
    return 2
  records = []
  with tempfile.TemporaryDirectory(prefix='bench_library_') as tmp:
    for arch in archs:
      for r in range(a.rounds):
        for variant in VARIANTS:
          rec = {'arch': arch, 'variant': variant, 'round': r, **measure(variant, arch, a, tmp)}
          records.append(rec)
          print(f"[bench_library] {arch} round {r + 1}/{a.rounds} {variant}: "
                f"{rec.get('images_per_s', 0):.2f} img/s {rec.get('error', '')[-300:]}",
                file=sys.stderr, flush=True)
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(records, f, indent=1)
  print(f'Plain-library inference, float32, batch {BATCH}, {SIZE}x{SIZE}, CPU '
        f'({os.cpu_count()} cores): median over {a.rounds} alternating processes of '
        f'each process\'s median of {a.repeats} calls')
  print('| arch | ours img/s | ours opted out | timm | ours/timm | opted out/timm |')
  print('|---|---|---|---|---|---|')
  failed = False
  for arch in archs:
    rate = {}
    for variant in VARIANTS:
      ok = [x['images_per_s'] for x in records
            if x['arch'] == arch and x['variant'] == variant and 'error' not in x]
      failed |= len(ok) < a.rounds
      rate[variant] = statistics.median(ok) if ok else float('nan')
    print(f"| {arch} | {rate['ours']:.2f} | {rate['ours_opt_out']:.2f} | {rate['timm']:.2f} "
          f"| {rate['ours'] / rate['timm']:.2f} | {rate['ours_opt_out'] / rate['timm']:.2f} |")
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
