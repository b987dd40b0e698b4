"""The benchmark's report: derived columns and the markdown table.

``add_derived`` adds to the workers' records the ratios ours/theirs and the model
FLOPs utilisation (against ``experiments.bench.peaks``); ``render_markdown``
writes ``benchmark.md`` from the report that ``experiments.benchmark`` also
saves as ``benchmark.json``.
"""

from __future__ import annotations

from experiments.bench.peaks import gpu_peak


def peak_for(rec: dict, meta: dict) -> dict:
  if rec.get('platform', meta['platform']) == 'gpu' or meta['platform'] == 'gpu':
    return gpu_peak(rec.get('device_kind', ''), rec.get('dtype', 'float32'))
  return meta['cpu_peak']


def add_derived(report: dict) -> None:
  """Ratios ours/theirs and MFU, from our XLA forward FLOPs per image."""
  meta, recs = report['meta'], report['records']
  rows = [r for r in recs if r.get('framework') and 'kind' not in r and 'error' not in r
          and r.get('cache_process') != 'warm']
  flops = {}
  for r in rows:
    if r['framework'] == 'ours' and r.get('flops_per_image'):
      flops[(r['arch'], r['image_size'])] = r['flops_per_image']
  ours = {(r['arch'], r['dtype'], r['batch']): r for r in rows if r['framework'] == 'ours'}
  for r in rows:
    fpi = flops.get((r['arch'], r['image_size']))
    peak = peak_for(r, meta)['peak_flops']
    r['model_flops_per_image'] = fpi
    for mode, mult in (('infer', 1), ('train', 3)):
      ips = r.get(f'{mode}_images_per_s')
      if ips and fpi and peak:
        r[f'mfu_{mode}'] = ips * fpi * mult / peak
      o = ours.get((r['arch'], r['dtype'], r['batch']))
      if r['framework'] != 'ours' and ips and o and o.get(f'{mode}_images_per_s'):
        r[f'ours_over_this_{mode}'] = o[f'{mode}_images_per_s'] / ips
  warm = {(r['arch'], r['dtype'], r['batch']): r for r in recs
          if r.get('cache_process') == 'warm' and 'error' not in r}
  for key, r in ours.items():
    w = warm.get(key)
    if w:
      r['warm_cache_compile_infer_s'] = w.get('compile_infer_s')
      r['warm_cache_compile_train_s'] = w.get('compile_train_s')
      r['warm_cache_hits'] = w.get('cache_hits_infer', 0) + w.get('cache_hits_train', 0)


def _f(v, fmt='{:.1f}'):
  return '-' if v is None else fmt.format(v)


def _mb(v):
  return '-' if not v else f'{v / 2**20:.0f}'


def _compile_cell(r: dict, mode: str) -> str:
  if r.get(f'compile_{mode}_s') is not None:
    trace = r.get(f'trace_{mode}_s')
    extra = f' (+{trace:.2f} trace)' if trace is not None else ''
    return f"{r[f'compile_{mode}_s']:.2f}{extra}"
  if r.get(f'first_call_{mode}_s') is not None:  # timm/keras: no separate compile
    return f"({r[f'first_call_{mode}_s']:.2f} first call)"
  return '-'


def render_markdown(report: dict) -> str:
  meta, recs = report['meta'], report['records']
  peak = meta['cpu_peak']
  lines = [
      '# inception_jax benchmark', '',
      f"{meta['date_utc']}, platform {meta['platform']}, {meta['cpu_threads']} CPU threads, "
      f"`python -m experiments.benchmark {' '.join(meta['argv'])}`.", '',
      'Images/s are batch / median step time over the timed repeats (warm-up and '
      'compilation excluded). bfloat16 = ' + meta['bf16_meaning'] + '. '
      'ours/theirs > 1 means ours is faster. MFU = images/s x model FLOPs per image / '
      'peak; model FLOPs per image = XLA cost analysis of our forward '
      '(`compiled.cost_analysis()["flops"]` / batch), x3 for a train step. '
      'Compile = `lowered.compile()` wall time; trace = `jit(f).lower(...)` (Python '
      'tracing + StableHLO), shown separately.',
      f"Peak used on CPU: {peak['formula']}. On GPU: the card's dense bf16 (bfloat16 "
      'rows) or TF32 (float32 rows) tensor peak.',
      f"XLA_FLAGS: ours `{meta.get('xla_flags_ours') or '(none)'}` "
      '(inception_jax.xla_flags), '
      f"Keras `{meta.get('xla_flags_keras') or '(none)'}`.", '',
      '## Throughput', '',
      '| arch | framework | dtype | batch | size | infer img/s | train img/s | '
      'ours/this infer | ours/this train | MFU infer | MFU train | compile fwd s | '
      'compile train s | warm-cache compile fwd/train s | XLA temp MB (fwd/train) | '
      'peak RSS MB (infer/train) | device peak MB |',
      '|' + '---|' * 17,
  ]
  rows = [r for r in recs if r.get('framework') and 'kind' not in r
          and r.get('cache_process') != 'warm']
  order = {'ours': 0, 'timm': 1, 'timm_compiled': 2, 'torchvision': 1,
           'torchvision_compiled': 2, 'keras': 3}
  rows.sort(key=lambda r: (r.get('arch', ''), r.get('dtype', ''), r.get('batch', 0),
                           order.get(r.get('framework'), 9)))
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r.get('arch')} | {r.get('framework')} | {r.get('dtype')} | "
                   f"{r.get('batch')} | {r.get('image_size')} | error: "
                   f"{r['error'][:120].replace('|', '/')} |" + ' |' * 12)
      continue
    xm_i = (r.get('xla_memory_infer') or {}).get('temp_size_in_bytes')
    xm_t = (r.get('xla_memory_train') or {}).get('temp_size_in_bytes')
    warm = ('-' if r.get('warm_cache_compile_infer_s') is None and
            r.get('warm_cache_compile_train_s') is None else
            f"{_f(r.get('warm_cache_compile_infer_s'), '{:.2f}')}/"
            f"{_f(r.get('warm_cache_compile_train_s'), '{:.2f}')} "
            f"({r.get('warm_cache_hits', 0)} hits)")
    pct = '{:.1%}'
    lines.append(
        f"| {r['arch']} | {r['framework']} | {r['dtype']} | {r['batch']} | "
        f"{r['image_size']} | {_f(r.get('infer_images_per_s'), '{:.2f}')} | "
        f"{_f(r.get('train_images_per_s'), '{:.2f}')} | "
        f"{_f(r.get('ours_over_this_infer'), '{:.2f}')} | "
        f"{_f(r.get('ours_over_this_train'), '{:.2f}')} | "
        f"{_f(r.get('mfu_infer'), pct)} | {_f(r.get('mfu_train'), pct)} | "
        f"{_compile_cell(r, 'infer')} | {_compile_cell(r, 'train')} | {warm} | "
        f"{_mb(xm_i)}/{_mb(xm_t)} | "
        f"{_mb(r.get('peak_rss_infer_bytes'))}/{_mb(r.get('peak_rss_train_bytes'))} | "
        f"{_mb(r.get('device_peak_bytes'))} |")
  sources = sorted({f"{r['framework']} {r['arch']} = {r['source']}" for r in rows
                     if r.get('source')})
  if sources:
    lines += ['', 'Reference models (random init, PyTorch eager / Keras on JAX): ' +
              '; '.join(sources) + '.']
  flops_rows = {(r['arch'], r['image_size']): r['flops_per_image'] for r in rows
                if r.get('flops_per_image')}
  if flops_rows:
    lines += ['', '## Forward FLOPs per image (XLA cost analysis of ours)', '',
              '| arch | size | GFLOP/img |', '|---|---|---|']
    for (arch, size), v in sorted(flops_rows.items()):
      lines.append(f'| {arch} | {size} | {v / 1e9:.2f} |')

  pipe = [r for r in recs if r.get('kind') == 'pipeline']
  if pipe:
    lines += ['', '## Input pipeline (JPEG folder, decode + resize to 299 + flip)', '',
              '| impl | threads | images/s | images/s per core |', '|---|---|---|---|']
    for r in pipe:
      if 'error' in r:
        lines.append(f"| error: {r['error'][:150]} | | | |")
      else:
        lines.append(f"| {r['impl']} | {r['threads']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s_per_core']:.1f} |")
  mem = [r for r in recs if r.get('kind') == 'memory_target']
  if mem:
    lines += ['', '## Fine-tuning memory target (one train step, float32, SGD momentum)', '',
              '| arch | size | batch | remat | process peak RSS MB | XLA temp MB | '
              'device peak MB | compile s | step s | note |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in mem:
      note = r.get('error', '')[:200].replace('|', '/')
      lines.append(
          f"| {r.get('arch')} | {r.get('image_size')} | {r.get('batch')} | {r.get('remat')} | "
          f"{_mb(r.get('process_maxrss_bytes'))} | "
          f"{_mb((r.get('xla_memory_train') or {}).get('temp_size_in_bytes'))} | "
          f"{_mb(r.get('device_peak_bytes'))} | {_f(r.get('compile_train_s'))} | "
          f"{_f(r.get('step_s'))} | {note} |")
  errs = [r for r in recs if 'error' in r and not r.get('framework')
          and r.get('kind') not in ('pipeline', 'memory_target')]
  if errs:
    lines += ['', '## Worker errors', '']
    for r in errs:
      tail = (r.get('stderr_tail') or '').strip().splitlines()[-3:]
      lines.append(f"- {r.get('worker')}: {r['error']}: `{' / '.join(tail)[:300]}`")
  lines += ['', 'Peak RSS per row is the process high-water mark since the row started '
            '(/proc/self/clear_refs reset, VmHWM); the memory target runs in its own '
            'process per setting (resource.getrusage ru_maxrss). XLA temp = '
            '`compiled.memory_analysis().temp_size_in_bytes`.', '']
  return '\n'.join(lines)

