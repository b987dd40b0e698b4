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

This module imports only the standard library at the top, so the torch and Keras
workers can share its helpers without importing JAX.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

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

KERAS_APPS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}
# Architectures that timm does not have but torchvision does.
TORCHVISION_MODELS = {'inception_v1': 'googlenet', 'googlenet': 'googlenet'}
# When --archs is empty: the released architectures that main registers.
DEFAULT_ARCHS = ('inception_v1', 'inception_v1_bn', 'inception_v3', 'inception_v4',
                 'inception_resnet_v1', 'inception_resnet_v2')


# ----------------------------------------------------------------------------- helpers


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


def _mem_available_bytes() -> int | None:
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


def _error(cfg_part: dict, e: BaseException) -> dict:
  return {**cfg_part, 'error': f'{type(e).__name__}: {e}'[:2000],
          'traceback': traceback.format_exc()[-3000:]}


# ----------------------------------------------------------------------------- ours


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def _mem_analysis(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  out = {}
  for k in ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
            'alias_size_in_bytes', 'generated_code_size_in_bytes'):
    if hasattr(m, k):
      out[k] = int(getattr(m, k))
  return out


def _setup_jax(cfg: dict):
  """Imports JAX with the persistent cache of ``cfg`` and counts its hits."""
  import jax  # pylint: disable=g-import-not-at-top
  events = {'hits': 0, 'misses': 0}
  if cfg.get('cache_dir'):
    jax.config.update('jax_compilation_cache_dir', cfg['cache_dir'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)

    def listener(event, **kwargs):
      del kwargs
      if event == '/jax/compilation_cache/cache_hits':
        events['hits'] += 1
      elif event == '/jax/compilation_cache/cache_misses':
        events['misses'] += 1

    jax.monitoring.register_event_listener(listener)
  return jax, events


def _device_info(jax) -> dict:
  d = jax.devices()[0]
  return {'platform': d.platform, 'device_kind': d.device_kind,
          'num_devices': jax.device_count()}


def _device_peak_bytes(jax) -> int | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _remat_forward(model, x, policy_name: str):
  """``model(x)`` (train mode, main logits) with each top-level layer under remat.

  Every entry of the architecture table (stem conv, Mixed block, Repeat stack) is
  wrapped in ``nnx.remat``: only the block inputs stay alive for the backward pass
  and each block's inside is recomputed. ``policy_name`` 'dots' keeps conv outputs
  (recomputes only BN/ReLU/concat), 'full' keeps nothing.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from inception_jax import layers  # pylint: disable=g-import-not-at-top
  policy = {'full': None, 'dots': jax.checkpoint_policies.dots_saveable}[policy_name]

  @nnx.remat(policy=policy)
  def apply(layer, h):
    return layer(h)

  x = x.astype(model.dtype)
  for name in model.layer_names:
    layer = getattr(model, name)
    x = apply(layer, x) if nnx.state(layer, nnx.Param) else layer(x)
  x = layers.global_pool(x, model.pooling)
  return model.Logits(model.dropout(x)).astype(jax.numpy.float32)


def _local_train_step(model, remat: str, lr: float = 0.01):
  """(step, state): a jitted SGD-momentum train step over nnx.split/merge."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from inception_jax import model as model_lib  # pylint: disable=g-import-not-at-top

  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(params)

  def step(params, rest, opt_state, x, y):
    def loss_fn(params):
      # copy=True: fresh Variables at this trace level, so BN may update them.
      m = nnx.merge(graphdef, params, rest, copy=True)
      if remat != 'none':
        logits = _remat_forward(m, x, remat)
      else:
        logits = m(x)
        if isinstance(logits, model_lib.InceptionOutput):
          logits = logits.logits
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, nnx.state(m, nnx.Not(nnx.Param))

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, rest, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2)), [params, rest, opt_state]


def _library_train_step(model, dtype: str):
  """(step, state) from ``inception_jax.train`` (once it is on main)."""
  from inception_jax import train  # pylint: disable=g-import-not-at-top
  cfg = train.TrainConfig(optimizer='sgd', learning_rate=0.01, schedule='constant',
                          momentum=0.9, dtype=dtype)
  mesh = train.make_mesh(1)
  graphdef, state = train.create_train_state(model, cfg, mesh)
  step = train.make_train_step(graphdef, cfg, mesh)
  # ``.jitted`` is the jax.jit object behind the input checks: lower().compile() works.
  return getattr(step, 'jitted', step), [state]


def run_ours(cfg: dict, emit) -> None:
  """Worker: our models, one record per (arch, dtype, batch)."""
  jax, events = _setup_jax(cfg)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import inception_jax  # pylint: disable=g-import-not-at-top

  info = _device_info(jax)
  compile_only = cfg.get('compile_only', False)
  for arch in cfg['archs']:
    spec = inception_jax.get_arch(arch)
    size = cfg['image_size'] or spec.default_size
    for dtype in cfg['dtypes']:
      for batch in cfg['batch_sizes']:
        base = {'framework': 'ours', 'arch': arch, 'dtype': dtype, 'batch': batch,
                'image_size': size, 'remat': cfg['remat'], **info}
        if compile_only:
          base['cache_process'] = 'warm'
        try:
          emit({**base, **_bench_ours_one(jax, jnp, np, nnx, inception_jax, arch,
                                          dtype, batch, size, cfg, events)})
        except Exception as e:  # pylint: disable=broad-except
          emit(_error(base, e))


def _bench_ours_one(jax, jnp, np, nnx, inception_jax, arch, dtype, batch, size, cfg,
                    events) -> dict:
  rec = {}
  jdtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 1000, (batch,)).astype(np.int32))
  modes = cfg['modes']
  compile_only = cfg.get('compile_only', False)

  if 'infer' in modes:
    reset_peak_rss()
    model = inception_jax.create_model(arch, dtype=jdtype)
    graphdef, state = nnx.split(model)
    del model

    @jax.jit
    def fwd(state, x):
      return nnx.merge(graphdef, state)(x)

    hits0 = events['hits']
    t = time.perf_counter()
    lowered = fwd.lower(state, x)
    rec['trace_infer_s'] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    rec['compile_infer_s'] = time.perf_counter() - t
    rec['cache_hits_infer'] = events['hits'] - hits0
    flops = _flops(compiled)
    rec['xla_flops_infer'] = flops
    # XLA counts a while-loop body once: with the Inception-ResNet blocks scanned
    # (the default) model FLOPs come from the unrolled network, lowered abstractly.
    unrolled = nnx.eval_shape(lambda: inception_jax.create_model(
        arch, rngs=nnx.Rngs(0), dtype=jdtype, scan_blocks=False))
    g_u, s_u = nnx.split(unrolled)
    flops = _flops(jax.jit(lambda s, x: nnx.merge(g_u, s)(x)).lower(s_u, x))
    rec['xla_flops_infer_unrolled'] = flops
    rec['flops_per_image'] = flops / batch if flops else None
    rec['xla_memory_infer'] = _mem_analysis(compiled)
    if not compile_only:
      rec['infer'] = median_step(lambda: compiled(state, x).block_until_ready(),
                                 cfg['warmup'], cfg['repeats'])
      rec['infer_images_per_s'] = batch / rec['infer']['median_s']
      rec['peak_rss_infer_bytes'] = peak_rss_bytes()
      rec['device_peak_bytes'] = _device_peak_bytes(jax)
    del compiled, lowered, state

  if 'train' in modes:
    reset_peak_rss()
    model = inception_jax.create_model(arch, dtype=jdtype)
    impl = cfg['train_step']
    if impl == 'auto':
      try:
        import inception_jax.train  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
        impl = 'library' if cfg['remat'] == 'none' else 'local'
      except ImportError:
        impl = 'local'
    if impl == 'library':
      step, st = _library_train_step(model, dtype)
    else:
      step, st = _local_train_step(model, cfg['remat'])
    rec['train_step_impl'] = impl
    hits0 = events['hits']
    if hasattr(step, 'lower'):
      t = time.perf_counter()
      lowered = step.lower(*st, x, y)
      rec['trace_train_s'] = time.perf_counter() - t
      t = time.perf_counter()
      compiled = lowered.compile()
      rec['compile_train_s'] = time.perf_counter() - t
      rec['xla_flops_train'] = _flops(compiled)
      rec['xla_memory_train'] = _mem_analysis(compiled)
    else:  # a plain function around its own jit: the first call traces and compiles
      lowered, compiled = None, step
      t = time.perf_counter()
      out = step(*st, x, y)
      jax.block_until_ready(out)
      st[:] = list(out[:len(st)])
      rec['first_call_train_s'] = time.perf_counter() - t
    rec['cache_hits_train'] = events['hits'] - hits0
    if not compile_only:
      n_state = len(st)

      def one():
        out = compiled(*st, x, y)
        st[:] = list(out[:n_state])
        jax.block_until_ready(out)

      rec['train'] = median_step(one, cfg['warmup'], cfg['repeats'])
      rec['train_images_per_s'] = batch / rec['train']['median_s']
      rec['peak_rss_train_bytes'] = peak_rss_bytes()
      rec['device_peak_bytes'] = _device_peak_bytes(jax)
    del compiled, lowered, st
  rec['process_maxrss_bytes'] = process_maxrss_bytes()
  return rec


def run_memory(cfg: dict, emit) -> None:
  """Worker: one train step of ``cfg['arch']`` at ``cfg['size']``, peak RSS."""
  jax, _ = _setup_jax({})
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import inception_jax  # pylint: disable=g-import-not-at-top
  arch, size, batch, remat = cfg['arch'], cfg['size'], cfg['batch'], cfg['remat']
  info = _device_info(jax)
  base = {'framework': 'ours', 'kind': 'memory_target', 'arch': arch, 'image_size': size,
          'batch': batch, 'remat': remat, 'dtype': 'float32', **info}
  try:
    rss0 = process_maxrss_bytes()
    model = inception_jax.create_model(arch)
    step, st = _local_train_step(model, remat)
    del model
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 1000, (batch,)).astype(np.int32))
    t = time.perf_counter()
    compiled = step.lower(*st, x, y).compile()
    compile_s = time.perf_counter() - t
    xla_mem = _mem_analysis(compiled)
    need = xla_mem.get('temp_size_in_bytes', 0) + xla_mem.get('output_size_in_bytes', 0)
    avail = _mem_available_bytes()
    if info['platform'] == 'cpu' and avail is not None and need > 0.9 * avail:
      emit({**base, 'compile_train_s': compile_s, 'xla_memory_train': xla_mem,
            'error': f'not run: XLA needs {need / 2**20:.0f} MB beyond its inputs, '
                     f'{avail / 2**20:.0f} MB available (MemAvailable)'})
      return
    t = time.perf_counter()
    out = compiled(*st, x, y)
    jax.block_until_ready(out)
    step_s = time.perf_counter() - t
    emit({**base, 'compile_train_s': compile_s, 'step_s': step_s,
          'loss': float(out[-1]), 'rss_before_model_bytes': rss0,
          'process_maxrss_bytes': process_maxrss_bytes(),
          'device_peak_bytes': _device_peak_bytes(jax), 'xla_memory_train': xla_mem})
  except Exception as e:  # pylint: disable=broad-except
    emit(_error(base, e))


# ----------------------------------------------------------------------------- input pipeline


def _make_jpegs(folder: str, n: int, size: int) -> None:
  """Writes ``n`` photo-like random JPEGs (smooth noise, quality 90) in two class folders."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # Two classes: the fine-tuning pipeline refuses a single-class folder.
  for name in ('class_a', 'class_b'):
    os.makedirs(os.path.join(folder, name), exist_ok=True)
  for i in range(n):
    h = size + int(rng.integers(-size // 8, size // 8 + 1))
    w = size + int(rng.integers(-size // 8, size // 8 + 1))
    low = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, ('class_a', 'class_b')[i % 2], f'{i:05d}.jpg'), quality=90)


def run_pipeline(cfg: dict, emit) -> None:
  """Worker (tensorflow): JPEG folder -> decode -> resize 299 -> flip images/s."""
  base = {'kind': 'pipeline', 'image_size': cfg['image_size'], 'num_images': cfg['num_images']}
  folder = tempfile.mkdtemp(prefix='bench_jpegs_')
  try:
    _make_jpegs(folder, cfg['num_images'], cfg['jpeg_size'])
    from experiments import data  # pylint: disable=g-import-not-at-top
    # The fine-tuning input pipeline itself: decode, random-resized crop, flip,
    # normalise, batch 32, on all the process's cores.
    per_core = data.measure_pipeline(f'folder:{folder}', cfg['image_size'],
                                     batch_size=min(32, cfg['num_images']),
                                     seconds=cfg.get('seconds', 5.0))
    threads = cpu_threads()
    emit({**base, 'impl': 'experiments.data training pipeline (crop+flip)',
          'threads': threads, 'images_per_s': per_core * threads,
          'images_per_s_per_core': per_core})
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    files = sorted(tf.io.gfile.glob(os.path.join(folder, '*', '*.jpg')))
    size = cfg['image_size']

    def load(path, seed):
      img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
      img = tf.image.resize(img, (size, size))
      img = tf.image.stateless_random_flip_left_right(img, seed)
      return img / 127.5 - 1.0

    for threads in sorted({1, cpu_threads()}):
      opts = tf.data.Options()
      opts.threading.private_threadpool_size = threads
      opts.threading.max_intra_op_parallelism = 1
      seeds = tf.data.Dataset.from_tensor_slices(
          tf.stack([tf.range(len(files)), tf.zeros(len(files), tf.int32)], 1))
      ds = (tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(files), seeds))
            .map(load, num_parallel_calls=threads).batch(32).with_options(opts))

      def epoch():
        n = 0
        for b in ds:
          n += int(b.shape[0])
        return n

      epoch()  # warm-up: file cache, tf.function tracing
      times = []
      for _ in range(cfg['repeats']):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
      med = statistics.median(times)
      ips = len(files) / med
      emit({**base, 'impl': 'tf.data decode_jpeg+resize+flip', 'threads': threads,
            'images_per_s': ips, 'images_per_s_per_core': ips / threads,
            'median_s': med, 'repeats': cfg['repeats']})
  except Exception as e:  # pylint: disable=broad-except
    emit(_error(base, e))
  finally:
    shutil.rmtree(folder, ignore_errors=True)


WORKERS = {'ours': run_ours, 'memory': run_memory, 'pipeline': run_pipeline}


# ----------------------------------------------------------------------------- orchestration


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
      'cpu_threads': threads, 'cpu_peak': cpu_peak(threads),
      'python': sys.version.split()[0], 'host': platform.node(),
      'cache_dir': cache_dir if a.compilation_cache_dir else '(temporary)',
      'cache_was_empty': cache_was_empty, 'wall_s': time.time() - t0,
      'bf16_meaning': 'mixed precision: bf16 compute, float32 parameters',
      'xla_flags_ours': flags_tuned, 'xla_flags_keras': env_keras['XLA_FLAGS'],
  }
  report = {'meta': meta, 'records': records}
  _add_derived(report)
  with open(os.path.join(a.results_dir, 'benchmark.json'), 'w') as f:
    json.dump(report, f, indent=1, default=str)
  md = render_markdown(report)
  with open(os.path.join(a.results_dir, 'benchmark.md'), 'w') as f:
    f.write(md)
  log(md)
  shutil.rmtree(tmp, ignore_errors=True)
  return report


def _peak_for(rec: dict, meta: dict) -> dict:
  if rec.get('platform', meta['platform']) == 'gpu' or meta['platform'] == 'gpu':
    return gpu_peak(rec.get('device_kind', ''), rec.get('dtype', 'float32'))
  return meta['cpu_peak']


def _add_derived(report: dict) -> None:
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
    peak = _peak_for(r, meta)['peak_flops']
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


if __name__ == '__main__':
  if len(sys.argv) > 2 and sys.argv[1] == '--worker':
    name = sys.argv.pop(2)
    sys.argv.pop(1)
    worker_main(WORKERS[name])
  else:
    main()
