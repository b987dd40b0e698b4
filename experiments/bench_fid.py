r"""FID feature extraction speed: inception_jax (jitted JAX) beside pytorch-fid (torch).

  python -m experiments.bench_fid [--batch_size=50] [--image_size=256] [--repeats=5]

Both sides do the same work per batch, from uint8 ``[B, S, S, 3]`` images to the
2048-d ``pool_3`` features: pytorch-fid's pipeline (``x / 255``, bilinear resize to
299, ``2x - 1``, the FID Inception, global average) with random weights. Ours is
``inception_jax.fid.FeatureExtractor`` in ``pytorch_fid`` mode (resize and network
jitted, host -> device -> host included); theirs is ``pytorch_fid.inception
.InceptionV3`` in eval mode under ``torch.no_grad`` (the ``uint8 -> float`` division
included). Each side runs in its own subprocess, one after the other, with all
cores (``torch.get_num_threads()``; XLA's own thread pool); the table reports the
median over ``--repeats`` timed batches after ``--warmup`` batches. Nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from experiments.bench.measure import median_step


def _median_rate(fn, batch: int, warmup: int, repeats: int) -> dict:
  t = median_step(fn, warmup, repeats)
  return {'images_per_s': batch / t['median_s'], 'median_s': t['median_s'], 'min_s': t['min_s']}


def _images(batch: int, size: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def worker_ours(a) -> dict:
  import inception_jax  # pylint: disable=g-import-not-at-top
  inception_jax.configure_xla()  # its XLA:CPU flags, before JAX computes
  import jax  # pylint: disable=g-import-not-at-top
  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import fid  # pylint: disable=g-import-not-at-top
  model = inception_jax.create_model('inception_v3_fid', num_classes=1008)
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  extractor = fid.FeatureExtractor(model, a.mode, batch_size=a.batch_size, mesh=mesh)
  images = _images(a.batch_size, a.image_size)
  t = time.perf_counter()
  extractor(images)
  compile_s = time.perf_counter() - t
  rec = _median_rate(lambda: extractor(images), a.batch_size, a.warmup, a.repeats)
  return {'framework': 'inception_jax (JAX jit)', 'mode': a.mode,
          'first_call_s': compile_s, 'device': str(jax.devices()[0]),
          'jax': jax.__version__, **rec}


def worker_pytorch_fid(a) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top

  def random_fid_inception():
    # fid_inception_v3() without its download: the same modules, random weights.
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # pylint: disable=protected-access
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net

  pf.fid_inception_v3 = random_fid_inception
  model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  images = torch.from_numpy(_images(a.batch_size, a.image_size)).permute(0, 3, 1, 2)

  @torch.no_grad()
  def step():
    return model(images.float() / 255)[0]

  rec = _median_rate(step, a.batch_size, a.warmup, a.repeats)
  return {'framework': 'pytorch-fid (torch eager)', 'mode': 'pytorch_fid',
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads(), **rec}


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m experiments.bench_fid',
                              description=__doc__.split('\n')[0])
  p.add_argument('--batch_size', type=int, default=50, help="pytorch-fid's default 50")
  p.add_argument('--image_size', type=int, default=256, help='square input size (256)')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--mode', default='pytorch_fid', choices=('tf', 'pytorch_fid', 'clean'),
                 help="our preprocessing (pytorch_fid: the same work as pytorch-fid's)")
  p.add_argument('--worker', choices=('ours', 'pytorch_fid'), help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  a = parse_args(sys.argv[1:] if argv is None else argv)
  if a.worker:
    rec = worker_ours(a) if a.worker == 'ours' else worker_pytorch_fid(a)
    print('RESULT ' + json.dumps(rec), flush=True)
    return 0
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, 'PYTHONPATH': root + os.pathsep + os.environ.get('PYTHONPATH', '')}
  args = [f'--batch_size={a.batch_size}', f'--image_size={a.image_size}',
          f'--repeats={a.repeats}', f'--warmup={a.warmup}', f'--mode={a.mode}']
  recs = []
  for worker in ('ours', 'pytorch_fid'):
    r = subprocess.run([sys.executable, '-m', 'experiments.bench_fid', f'--worker={worker}',
                        *args], cwd=root, env=env, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode != 0 or not lines:
      print(f'{worker} failed ({r.returncode}):\n{r.stderr[-3000:]}', file=sys.stderr)
      return 1
    recs.append(json.loads(lines[-1][len('RESULT '):]))
  print(f'FID feature extraction, batch {a.batch_size}, {a.image_size}x{a.image_size} uint8 '
        f'-> pool_3, CPU ({os.cpu_count()} cores), median of {a.repeats}:')
  print('| framework | mode | images/s | median s/batch |')
  print('|---|---|---|---|')
  for r in recs:
    print(f"| {r['framework']} | {r['mode']} | {r['images_per_s']:.2f} | "
          f"{r['median_s']:.2f} |")
  print(f"ratio ours / pytorch-fid: {recs[0]['images_per_s'] / recs[1]['images_per_s']:.2f} "
        f"(our first call incl. compilation {recs[0]['first_call_s']:.1f} s)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
