"""Peak FLOP/s of the device a benchmark ran on, with the formula that gives it.

The model FLOPs utilisation of ``experiments.benchmark`` divides by these. CPU:
cores x FLOP per cycle of the widest vector FMA x nominal clock, from
/proc/cpuinfo. NVIDIA GPUs: the dense tensor-core peak of the card's data sheet.
"""

from __future__ import annotations

import platform

# Dense bf16 tensor peaks (FLOP/s) and fp32-input peaks (TF32 on tensor cores,
# which is what JAX and cuDNN use for "float32" convs by default), from NVIDIA's
# data sheets (H100/H200 SXM and H100 PCIe, A100 product briefs).
GPU_PEAKS = (
    # (substring of device name, bf16 peak, tf32 peak)
    ('H200', 989.4e12, 494.7e12),
    ('H100 PCIe', 756e12, 378e12),
    ('H100', 989.4e12, 494.7e12),
    ('A100', 312e12, 156e12),
)


def cpu_peak(threads: int) -> dict:
  """Peak fp32 FLOP/s of ``threads`` cores from /proc/cpuinfo, with its formula.

  AVX-512: 2 FMA units x 16 fp32 lanes x 2 flop = 64 flop/cycle/core (Intel,
  AMD Zen 5 = cpu family 26); AVX2+FMA, and Zen 4 whose AVX-512 runs on 256-bit
  pipes: 2 x 8 x 2 = 32; otherwise SSE 2 x 4 x 1 = 8. The clock is the nominal
  'cpu MHz' of /proc/cpuinfo (no turbo). bf16 has no faster path on these
  CPUs, so the same peak is used for it.
  """
  mhz, flags, name = None, '', platform.processor()
  family, vendor = None, ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, val = line.partition(':')
        key, val = key.strip(), val.strip()
        if key == 'cpu MHz' and mhz is None:
          mhz = float(val)
        elif key == 'flags' and not flags:
          flags = val
        elif key == 'model name' and name == platform.processor():
          name = val
        elif key == 'cpu family' and family is None:
          family = int(val)
        elif key == 'vendor_id' and not vendor:
          vendor = val
  except OSError:
    pass
  flagset = set(flags.split())
  if 'avx512f' in flagset and family == 25 and vendor == 'AuthenticAMD':
    # Zen 4 runs AVX-512 on 256-bit FMA pipes: no more flops than AVX2.
    per_cycle, isa = 32, 'Zen 4 AVX-512 on 256-bit pipes: 2 FMA x 8 lanes x 2'
  elif 'avx512f' in flagset:
    per_cycle, isa = 64, 'AVX-512: 2 FMA x 16 lanes x 2'
  elif {'avx2', 'fma'} <= flagset:
    per_cycle, isa = 32, 'AVX2+FMA: 2 FMA x 8 lanes x 2'
  else:
    per_cycle, isa = 8, 'SSE: 2 x 4 lanes x 1'
  ghz = (mhz or 0.0) / 1e3
  peak = threads * per_cycle * ghz * 1e9
  return {'device': f'{name} ({threads} cores)', 'peak_flops': peak or None,
          'formula': f'{threads} cores x {per_cycle} flop/cycle ({isa}) x {ghz:.3f} GHz '
                     f'(/proc/cpuinfo) = {peak / 1e9:.1f} GFLOP/s'}


def gpu_peak(device_name: str, dtype: str) -> dict:
  for key, bf16, tf32 in GPU_PEAKS:
    if key in device_name:
      peak = bf16 if dtype == 'bfloat16' else tf32
      kind = 'bf16 dense tensor' if dtype == 'bfloat16' else 'TF32 dense tensor'
      return {'device': device_name, 'peak_flops': peak,
              'formula': f'{device_name}: {kind} peak {peak / 1e12:.1f} TFLOP/s '
                         '(NVIDIA data sheet)'}
  return {'device': device_name, 'peak_flops': None,
          'formula': f'{device_name}: peak unknown to this script'}
