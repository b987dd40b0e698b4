"""Peak FLOP/s of the device a benchmark ran on, with the formula that gives it.

The model FLOPs utilisation of ``experiments.benchmark`` divides by these. CPU:
cores x FLOP per cycle of the widest vector FMA x nominal clock, from
/proc/cpuinfo. NVIDIA GPUs: the dense tensor-core peak of the card's data sheet.
"""

from __future__ import annotations

import dataclasses
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


# The widest fp32 vector FMA path of a CPU: (fp32 lanes per unit, flop per lane and
# cycle: 2 for a fused multiply-add, what it is).
VECTOR_UNITS = {
    'avx512': (16, 2, 'AVX-512'),
    # Zen 4 runs AVX-512 on 256-bit FMA pipes: no more flops than AVX2.
    'avx512_on_256': (8, 2, 'Zen 4 AVX-512 on 256-bit pipes'),
    'avx2_fma': (8, 2, 'AVX2+FMA'),
    'sse': (4, 1, 'SSE'),
}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """What /proc/cpuinfo says about the first processor listed."""
  name: str = ''
  mhz: float | None = None
  flags: frozenset[str] = frozenset()
  family: int | None = None
  vendor: str = ''


def parse_cpuinfo(text: str) -> CpuInfo:
  """The first processor's model name, 'cpu MHz', flags, cpu family and vendor_id."""
  fields = {}
  for line in text.splitlines():
    key, _, val = line.partition(':')
    fields.setdefault(key.strip(), val.strip())
  family = fields.get('cpu family')
  return CpuInfo(name=fields.get('model name', ''),
                 mhz=float(fields['cpu MHz']) if 'cpu MHz' in fields else None,
                 flags=frozenset(fields.get('flags', '').split()),
                 family=int(family) if family else None,
                 vendor=fields.get('vendor_id', ''))


def read_cpuinfo(path: str = '/proc/cpuinfo') -> CpuInfo:
  """``parse_cpuinfo`` of ``path``; an empty ``CpuInfo`` where it cannot be read."""
  try:
    with open(path) as f:
      return parse_cpuinfo(f.read())
  except OSError:
    return CpuInfo()


def vector_unit(info: CpuInfo) -> str:
  """The ``VECTOR_UNITS`` key of the CPU: AVX-512 (Intel, AMD Zen 5 = cpu family
  26), AVX-512 on 256-bit pipes (AMD Zen 4 = family 25 with avx512f), AVX2+FMA,
  else SSE."""
  if 'avx512f' in info.flags and info.family == 25 and info.vendor == 'AuthenticAMD':
    return 'avx512_on_256'
  if 'avx512f' in info.flags:
    return 'avx512'
  if {'avx2', 'fma'} <= info.flags:
    return 'avx2_fma'
  return 'sse'


def cpu_peak(cores: int, ghz: float, unit: str, fma_units: int = 2, name: str = '',
             clock_source: str = '') -> dict:
  """Peak fp32 FLOP/s = cores x units x fp32 lanes x flop per lane x GHz, with its formula.

  ``unit`` is a ``VECTOR_UNITS`` key; ``fma_units`` the vector FMA units per core
  (2 on the server cores these ran on; some Xeon Silver / Bronze have one
  512-bit unit). AVX-512: 2 x 16 x 2 = 64 flop/cycle/core; AVX2+FMA and Zen 4:
  2 x 8 x 2 = 32; SSE: 2 x 4 x 1 = 8. bf16 has no faster path on these CPUs, so
  the same peak is used for it. An unknown clock (``ghz`` 0) gives no peak.
  """
  lanes, flop, what = VECTOR_UNITS[unit]
  per_cycle = fma_units * lanes * flop
  isa = f"{what}: {fma_units}{' FMA' if flop == 2 else ''} x {lanes} lanes x {flop}"
  peak = cores * per_cycle * ghz * 1e9
  source = f' ({clock_source})' if clock_source else ''
  return {'device': f'{name} ({cores} cores)', 'peak_flops': peak or None,
          'formula': f'{cores} cores x {per_cycle} flop/cycle ({isa}) x {ghz:.3f} GHz'
                     f'{source} = {peak / 1e9:.1f} GFLOP/s'}


def host_cpu_peak(threads: int) -> dict:
  """``cpu_peak`` of ``threads`` cores of this machine, from /proc/cpuinfo.

  The clock is the nominal 'cpu MHz' of /proc/cpuinfo (no turbo).
  """
  info = read_cpuinfo()
  return cpu_peak(threads, (info.mhz or 0.0) / 1e3, vector_unit(info),
                  name=info.name or platform.processor(), clock_source='/proc/cpuinfo')


def gpu_peak(device_name: str, dtype: str) -> dict:
  """The dense tensor peak of the first ``GPU_PEAKS`` row whose key is in ``device_name``.

  bf16 for ``dtype`` 'bfloat16', TF32 otherwise; no peak for a card not listed.
  """
  for key, bf16, tf32 in GPU_PEAKS:
    if key in device_name:
      peak = bf16 if dtype == 'bfloat16' else tf32
      kind = 'bf16 dense tensor' if dtype == 'bfloat16' else 'TF32 dense tensor'
      return {'device': device_name, 'peak_flops': peak,
              'formula': f'{device_name}: {kind} peak {peak / 1e12:.1f} TFLOP/s '
                         '(NVIDIA data sheet)'}
  return {'device': device_name, 'peak_flops': None,
          'formula': f'{device_name}: peak unknown to this script'}
