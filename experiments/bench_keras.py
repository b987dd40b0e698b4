"""Benchmark worker for ``keras.applications`` on the JAX backend.

Started by ``experiments.benchmark`` in its own process with ``KERAS_BACKEND=jax``.
Inference is a jitted ``model.stateless_call`` (compiled with
``lower().compile()``, like ours); the train step is ``model.train_on_batch`` after
``compile(SGD(momentum=0.9))``, Keras' own jitted train function.
"""

from __future__ import annotations

import os
import time

from experiments.bench import measure

# Architectures that keras.applications has (the benchmark runs only these here).
KERAS_APPS = {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2'}


def run(cfg: dict, emit) -> None:
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  import jax  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != 'jax':
    raise RuntimeError(f'KERAS_BACKEND must be jax, got {keras.backend.backend()}')
  info = {'platform': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
          'keras': keras.__version__}
  for arch in cfg['archs']:
    app = KERAS_APPS.get(arch)
    if app is None:
      continue
    size = cfg['image_size'] or cfg['default_sizes'][arch]
    for dtype in cfg['dtypes']:
      for batch in cfg['batch_sizes']:
        base = {'framework': 'keras', 'arch': arch, 'dtype': dtype, 'batch': batch,
                'image_size': size, 'source': f'keras.applications.{app}', **info}
        try:
          emit({**base, **_bench_one(jax, keras, np, app, dtype, batch, size, cfg)})
        except Exception as e:  # pylint: disable=broad-except
          emit(measure.error_record(base, e))


def _bench_one(jax, keras, np, app, dtype, batch, size, cfg) -> dict:
  rec = {}
  keras.config.set_dtype_policy('mixed_bfloat16' if dtype == 'bfloat16' else 'float32')
  keras.utils.clear_session()
  model = getattr(keras.applications, app)(
      weights=None, input_shape=(size, size, 3), classifier_activation=None)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  y = rng.integers(0, 1000, (batch,)).astype(np.int32)
  if 'infer' in cfg['modes']:
    measure.reset_peak_rss()
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def fwd(tv, ntv, x):
      out, _ = model.stateless_call(tv, ntv, x, training=False)
      return out

    xj = jax.numpy.asarray(x)
    t = time.perf_counter()
    compiled = fwd.lower(tv, ntv, xj).compile()
    rec['compile_infer_s'] = time.perf_counter() - t
    rec['infer'] = measure.median_step(lambda: compiled(tv, ntv, xj).block_until_ready(),
                                     cfg['warmup'], cfg['repeats'])
    rec['infer_images_per_s'] = batch / rec['infer']['median_s']
    rec['peak_rss_infer_bytes'] = measure.peak_rss_bytes()
  if 'train' in cfg['modes']:
    measure.reset_peak_rss()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    model.train_on_batch(x, y)  # first call compiles
    rec['first_call_train_s'] = time.perf_counter() - t
    rec['train'] = measure.median_step(lambda: model.train_on_batch(x, y), cfg['warmup'],
                                     cfg['repeats'])
    rec['train_images_per_s'] = batch / rec['train']['median_s']
    rec['peak_rss_train_bytes'] = measure.peak_rss_bytes()
  rec['process_maxrss_bytes'] = measure.process_maxrss_bytes()
  return rec


if __name__ == '__main__':
  measure.worker_main(run)
