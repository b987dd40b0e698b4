"""Smoke test of ``python -m experiments.benchmark``: tiny settings, files written.

The benchmark only reports; no timing is asserted here.
"""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

import inception_jax
from experiments.bench import peaks
from experiments.bench import report as bench_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smallest_arch():
  for name in ('inception_v1', 'inception_v1_bn', 'inception_v3'):
    if name in inception_jax.list_models():
      return name
  return inception_jax.list_models()[0]


@pytest.mark.slow
def test_benchmark_writes_table_and_json(tmp_path):
  arch = _smallest_arch()
  # Abstract: the initialisers are not run.
  size = nnx.eval_shape(lambda: inception_jax.create_model(arch)).min_input_size
  cmd = [sys.executable, '-m', 'experiments.benchmark', f'--archs={arch}',
         '--frameworks=ours', '--modes=infer', '--batch_sizes=1', '--dtypes=float32',
         f'--image_size={size}', '--repeats=1', '--warmup=0', '--no-pipeline',
         '--memory_target=', f'--results_dir={tmp_path}', '--quiet']
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / 'benchmark.json').read_text())
  rows = [r for r in report['records'] if r.get('framework') == 'ours']
  first = [r for r in rows if r.get('cache_process') != 'warm']
  warm = [r for r in rows if r.get('cache_process') == 'warm']
  assert len(first) == 1 and len(warm) == 1, report['records']
  row = first[0]
  assert 'error' not in row, row
  assert row['arch'] == arch and row['batch'] == 1 and row['image_size'] == size
  assert row['infer_images_per_s'] > 0 and row['compile_infer_s'] > 0
  assert row['flops_per_image'] > 0
  # The second process compiles the same program: it must come from the cache.
  assert warm[0]['cache_hits_infer'] == 1, warm[0]
  table = (tmp_path / 'benchmark.md').read_text()
  assert f'| {arch} | ours | float32 | 1 | {size} |' in table


def test_ratios_and_mfu_from_records():
  # Hand-made records: ours 10 img/s, timm 4 img/s; 2 GFLOP per image forward.
  meta = {'platform': 'cpu', 'cpu_peak': {'peak_flops': 100e9, 'formula': 'test'}}
  ours = {'framework': 'ours', 'arch': 'a', 'dtype': 'float32', 'batch': 8,
          'image_size': 299, 'flops_per_image': 2e9, 'infer_images_per_s': 10.0,
          'train_images_per_s': 2.0}
  timm = {'framework': 'timm', 'arch': 'a', 'dtype': 'float32', 'batch': 8,
          'image_size': 299, 'infer_images_per_s': 4.0, 'train_images_per_s': 4.0}
  report = {'meta': meta, 'records': [ours, timm]}
  bench_report.add_derived(report)
  assert timm['ours_over_this_infer'] == pytest.approx(2.5)
  assert timm['ours_over_this_train'] == pytest.approx(0.5)
  assert ours['mfu_infer'] == pytest.approx(10 * 2e9 / 100e9)  # 20%
  assert ours['mfu_train'] == pytest.approx(2 * 3 * 2e9 / 100e9)  # 3x forward FLOPs
  assert timm['mfu_infer'] == pytest.approx(4 * 2e9 / 100e9)


def test_cpu_peak_states_its_formula():
  peak = peaks.cpu_peak(2)
  assert '2 cores x' in peak['formula'] and 'flop/cycle' in peak['formula']


@pytest.mark.slow
def test_pipeline_worker_times_the_finetune_pipeline(tmp_path):
  cfg = tmp_path / 'cfg.json'
  out = tmp_path / 'out.json'
  cfg.write_text(json.dumps({'image_size': 64, 'num_images': 16, 'jpeg_size': 80,
                             'repeats': 1, 'seconds': 0.5}))
  r = subprocess.run([sys.executable, '-m', 'experiments.benchmark', '--worker', 'pipeline',
                      '--config', str(cfg), '--out', str(out)],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  recs = json.loads(out.read_text())
  assert not [x for x in recs if 'error' in x], recs
  impls = [x['impl'] for x in recs]
  assert impls[0] == 'experiments.data training pipeline (crop+flip)'
  assert all(x['images_per_s'] > 0 for x in recs)
  table = bench_report.render_markdown({'meta': {'cpu_peak': {'formula': '-'}, 'date_utc': '-',
                                              'platform': 'cpu', 'cpu_threads': 2, 'argv': [],
                                              'bf16_meaning': '-'},
                                     'records': recs})
  assert 'training pipeline (crop+flip)' in table
