"""Benchmark workers for inception_jax itself: throughput, compile time and memory.

``run_ours`` times inference and a train step (forward, backward, SGD-momentum
update) per architecture, dtype and batch size: ``nnx.split`` + ``jax.jit`` +
``nnx.merge``, compiled with ``lower().compile()`` (trace and compile timed
apart, persistent-cache hits counted), XLA's FLOPs and memory analysis.
``run_memory`` is the fine-tuning memory target: one train step at a large input,
with or without rematerialisation, in a process of its own. Started by
``experiments.benchmark --worker ours|memory``; JAX is imported inside the
workers, not by this module.
"""

from __future__ import annotations

import time

from experiments.bench.measure import (error_record, mem_available_bytes, median_step,
                                       peak_rss_bytes, process_maxrss_bytes,
                                       reset_peak_rss)


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
          emit(error_record(base, e))


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
    avail = mem_available_bytes()
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
    emit(error_record(base, e))

