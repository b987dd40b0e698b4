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


def test_cpu_peak_by_hand():
  # The README's machine: 2 cores x 2 FMA units x 16 fp32 lanes x 2 flop x 2.1 GHz.
  peak = peaks.cpu_peak(2, 2.1, 'avx512')
  assert peak['peak_flops'] == pytest.approx(268.8e9)
  assert peak['formula'].startswith('2 cores x 64 flop/cycle')
  assert peak['formula'].endswith('x 2.100 GHz = 268.8 GFLOP/s')
  # AVX2: 4 cores x 2 FMA x 8 lanes x 2 flop x 3.0 GHz = 384 GFLOP/s.
  assert peaks.cpu_peak(4, 3.0, 'avx2_fma')['peak_flops'] == pytest.approx(384e9)
  # Zen 4's AVX-512 on 256-bit pipes counts as AVX2: 1 x 2 x 8 x 2 x 2.5 = 80.
  assert peaks.cpu_peak(1, 2.5, 'avx512_on_256')['peak_flops'] == pytest.approx(80e9)
  # One 512-bit FMA unit (Xeon Silver): 1 x 1 x 16 x 2 x 2.0 = 64 GFLOP/s.
  assert peaks.cpu_peak(1, 2.0, 'avx512', fma_units=1)['peak_flops'] == pytest.approx(64e9)
  # SSE, no FMA: 1 x 2 x 4 x 1 x 1.0 = 8 GFLOP/s.
  assert peaks.cpu_peak(1, 1.0, 'sse')['peak_flops'] == pytest.approx(8e9)
  assert peaks.cpu_peak(2, 0.0, 'avx512')['peak_flops'] is None  # clock unknown


_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model name\t: {name}
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse sse2 {flags}

processor\t: 1
vendor_id\t: {vendor}
cpu family\t: {family}
model name\t: {name}
cpu MHz\t\t: 3400.000
flags\t\t: fpu sse sse2
"""


@pytest.mark.parametrize('vendor, family, flags, unit', [
    ('GenuineIntel', 6, 'avx2 fma avx512f amx_tile', 'avx512'),
    ('AuthenticAMD', 26, 'avx2 fma avx512f', 'avx512'),  # Zen 5: full-width AVX-512
    ('AuthenticAMD', 25, 'avx2 fma avx512f', 'avx512_on_256'),  # Zen 4
    ('AuthenticAMD', 25, 'avx2 fma', 'avx2_fma'),  # Zen 3
    ('GenuineIntel', 6, 'avx2', 'sse'),  # AVX2 without FMA
])
def test_cpuinfo_reader_and_vector_unit(tmp_path, vendor, family, flags, unit):
  path = tmp_path / 'cpuinfo'
  path.write_text(_CPUINFO.format(vendor=vendor, family=family, name='Test CPU', flags=flags))
  info = peaks.read_cpuinfo(str(path))
  # The first processor's fields, not the second's.
  assert info.name == 'Test CPU' and info.mhz == 2100.0 and info.family == family
  assert info.vendor == vendor and 'avx2' in info.flags
  assert peaks.vector_unit(info) == unit
  assert peaks.read_cpuinfo(str(tmp_path / 'missing')) == peaks.CpuInfo()


# NVIDIA data sheets quote tensor peaks with 2:4 sparsity; dense is half of that.
# H100 SXM / H200: bf16 1979, TF32 989 TFLOP/s; H100 PCIe: 1513, 756; A100: 624, 312.
@pytest.mark.parametrize('device_kind, bf16_sparse, tf32_sparse', [
    ('NVIDIA H100 80GB HBM3', 1979e12, 989e12),  # SXM
    ('NVIDIA H100 PCIe', 1513e12, 756e12),  # must not take the SXM row
    ('NVIDIA H200', 1979e12, 989e12),
    ('NVIDIA A100-SXM4-80GB', 624e12, 312e12),
])
def test_gpu_peak_lookup(device_kind, bf16_sparse, tf32_sparse):
  bf16 = peaks.gpu_peak(device_kind, 'bfloat16')
  assert bf16['peak_flops'] == pytest.approx(bf16_sparse / 2, rel=1e-3)
  assert 'bf16 dense' in bf16['formula']
  tf32 = peaks.gpu_peak(device_kind, 'float32')
  assert tf32['peak_flops'] == pytest.approx(tf32_sparse / 2, rel=1e-3)
  assert 'TF32 dense' in tf32['formula']


def test_gpu_peak_unknown_card():
  peak = peaks.gpu_peak('Tesla T4', 'bfloat16')
  assert peak['peak_flops'] is None and 'unknown' in peak['formula']


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
