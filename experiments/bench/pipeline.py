"""Benchmark worker for the input pipeline: images/s per core of JPEG decoding.

Writes a folder of photo-like random JPEGs, then times the fine-tuning pipeline
itself (``experiments.data.measure_pipeline``: decode, random-resized crop, flip,
normalise, batch) and a bare tf.data decode + resize + flip on 1 and on all
cores. Started by ``experiments.benchmark --worker pipeline``; imports
TensorFlow inside the worker.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from experiments.bench.measure import cpu_threads, error_record


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
    emit(error_record(base, e))
  finally:
    shutil.rmtree(folder, ignore_errors=True)

