"""Compile and step time of the data-parallel train step on this machine.

  PYTHONPATH=$PWD python benchmarks/train_step.py --arch inception_v3 --size 299 --batch 8

Prints trace (jit lowering), XLA compile and steady-state step times for a random
batch; the mesh is the first ``--devices`` devices (default 1).
"""

import argparse
import os
import time

import jax
import numpy as np

from inception_jax import create_model
from inception_jax import train


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--arch', default='inception_v3')
  p.add_argument('--size', type=int, default=299)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--devices', type=int, default=1)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--aux', action='store_true')
  a = p.parse_args()
  mesh = train.make_mesh(a.devices)
  cfg = train.TrainConfig(optimizer='rmsprop', learning_rate=0.045, schedule='exponential',
                          decay_steps=1000, grad_clip=2.0, label_smoothing=0.1,
                          dtype=a.dtype)
  model = create_model(a.arch, num_classes=1000, aux_logits=a.aux or None)
  graphdef, state = train.create_train_state(model, cfg, mesh)
  step = train.make_train_step(graphdef, cfg, mesh)
  rng = np.random.RandomState(0)
  x = rng.randn(a.batch, a.size, a.size, 3).astype(np.float32)
  y = rng.randint(0, 1000, a.batch).astype(np.int32)
  x, y = train.shard_batch(mesh, x, y)
  t = time.perf_counter()
  lowered = step.jitted.lower(state, x, y)
  t_trace = time.perf_counter() - t
  t, c = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  t_compile, c_compile = time.perf_counter() - t, time.process_time() - c
  state, m = compiled(state, x, y)
  jax.block_until_ready(m)
  times, cpu = [], []
  for _ in range(a.steps):
    t, c = time.perf_counter(), time.process_time()
    state, m = compiled(state, x, y)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  med = float(np.median(times))
  print(f'{a.arch} {a.size}px batch {a.batch} {a.dtype} on {a.devices} device(s) '
        f'[{jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}]: trace {t_trace:.1f} s, '
        f'compile {t_compile:.1f} s (CPU {c_compile:.1f} s), step median {med:.2f} s '
        f'({a.batch / med:.2f} img/s; CPU {float(np.median(cpu)):.2f} s) '
        f'over {a.steps}: {[round(t, 2) for t in times]}; loss {float(m["loss"]):.3f}')


if __name__ == '__main__':
  main()
