"""Is our 'SAME' conv efficient on CPU? jnp.pad + VALID conv vs explicit conv padding.

``inception_jax.layers.ConvBN`` pads with ``jnp.pad`` and runs a VALID conv (so the
TF and symmetric padding rules are one code path). This script times, for a few
Inception-v3 layer shapes, forward and forward+backward of

* ``pad``: ``jnp.pad`` then ``lax.conv_general_dilated(padding='VALID')``;
* ``explicit``: ``lax.conv_general_dilated(padding=((lo, hi), (lo, hi)))``;

counts the ``pad`` instructions left in XLA's optimised HLO, and, with
``--model``, times the whole inception_v3 forward with ``ConvBN`` patched to pass
explicit padding (the patch lives only in this process). Run it under different
``XLA_FLAGS`` to compare XLA:CPU settings, e.g.::

  for f in '' --xla_cpu_use_thunk_runtime=false --xla_cpu_use_xnnpack=true; do
    XLA_FLAGS=$f python -m experiments.bench_conv --model; done
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

# (name, H=W, C_in, C_out, kh, kw, stride): Inception-v3 layers (TF-slim scopes).
LAYERS = (
    ('Conv2d_2b_3x3 147x147 32->64', 147, 32, 64, 3, 3, 1),
    ('Mixed_5b 5x5 35x35 48->64', 35, 48, 64, 5, 5, 1),
    ('Mixed_5b 3x3 35x35 64->96', 35, 64, 96, 3, 3, 1),
    ('Mixed_6b 1x7 17x17 128->128', 17, 128, 128, 1, 7, 1),
    ('Mixed_6b 7x1 17x17 128->192', 17, 128, 192, 7, 1, 1),
    ('Mixed_7b 3x3 8x8 448->384', 8, 448, 384, 3, 3, 1),
)
DN = ('NHWC', 'HWIO', 'NHWC')


def _pads(size, k, s):
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return (total // 2, total - total // 2)


def _best(fn, number, repeat):
  fn()
  ts = []
  for _ in range(repeat):
    t = time.perf_counter()
    for _ in range(number):
      fn()
    ts.append((time.perf_counter() - t) / number)
  return min(ts)


def _count_pads(compiled) -> int:
  return len(re.findall(r'= \S+ pad\(', compiled.as_text()))


def layer_table(batch, number, repeat):
  rows = []
  rng = np.random.default_rng(0)
  for name, hw, cin, cout, kh, kw, s in LAYERS:
    x = jnp.asarray(rng.standard_normal((batch, hw, hw, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((kh, kw, cin, cout), np.float32) * 0.05)
    ph, pw = _pads(hw, kh, s), _pads(hw, kw, s)

    def f_pad(x, w):
      xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
      return jax.lax.conv_general_dilated(xp, w, (s, s), 'VALID', dimension_numbers=DN)

    def f_exp(x, w):
      return jax.lax.conv_general_dilated(x, w, (s, s), (ph, pw), dimension_numbers=DN)

    row = {'layer': name, 'batch': batch}
    for tag, f in (('pad', f_pad), ('explicit', f_exp)):
      fwd = jax.jit(f).lower(x, w).compile()
      loss = lambda x, w, f=f: jnp.sum(f(x, w) ** 2)
      bwd = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile()
      row[f'{tag}_fwd_ms'] = 1e3 * _best(lambda: fwd(x, w).block_until_ready(), number, repeat)
      row[f'{tag}_grad_ms'] = 1e3 * _best(
          lambda: jax.block_until_ready(bwd(x, w)), number, repeat)
      row[f'{tag}_hlo_pads_fwd'] = _count_pads(fwd)
      row[f'{tag}_hlo_pads_grad'] = _count_pads(bwd)
    np.testing.assert_allclose(np.asarray(jax.jit(f_pad)(x, w)),
                               np.asarray(jax.jit(f_exp)(x, w)), rtol=1e-4, atol=1e-3)
    rows.append(row)
  return rows


def _patch_explicit_padding():
  """ConvBN.__call__ passing the padding to the conv (this process only)."""
  from inception_jax import layers  # pylint: disable=g-import-not-at-top

  def call(self, x):
    (kh, kw), s = self.kernel_size, self.stride
    ph = layers.window_pads(x.shape[1], kh, s, self.padding, self.style)
    pw = layers.window_pads(x.shape[2], kw, s, self.padding, self.style)
    first = self.depthwise if self.depthwise is not None else self.conv
    first.padding = (ph, pw)
    if self.depthwise is not None:
      x = self.depthwise(x)
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return jax.nn.relu(x) if self.activation else x

  layers.ConvBN.__call__ = call


def model_time(arch, batch, size, number, repeat, explicit, train=False):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from experiments import benchmark  # pylint: disable=g-import-not-at-top
  if explicit:
    _patch_explicit_padding()
  model = benchmark.create_model_fast(arch)
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)),
                  jnp.float32)
  t = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  compile_s = time.perf_counter() - t
  ms = 1e3 * _best(lambda: compiled(state, x).block_until_ready(), number, repeat)
  out = {'arch': arch, 'batch': batch, 'size': size, 'explicit_padding': explicit,
         'fwd_ms': ms, 'compile_s': compile_s, 'hlo_pads': _count_pads(compiled),
         'logits_sum': float(compiled(state, x).sum())}
  if train:
    step, st = benchmark._local_train_step(model, 'none')  # pylint: disable=protected-access
    y = jnp.zeros((batch,), jnp.int32)
    t = time.perf_counter()
    cstep = step.lower(*st, x, y).compile()
    out['train_compile_s'] = time.perf_counter() - t
    out['train_hlo_pads'] = _count_pads(cstep)
    out['train_xla_temp_mb'] = cstep.memory_analysis().temp_size_in_bytes / 2**20

    def one():
      res = cstep(*st, x, y)
      st[:] = list(res[:3])
      jax.block_until_ready(res)

    out['train_ms'] = 1e3 * _best(one, number, repeat)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--number', type=int, default=3)
  p.add_argument('--repeat', type=int, default=5)
  p.add_argument('--model', action='store_true', help='also time the whole network')
  p.add_argument('--model_explicit', action='store_true',
                 help='(internal) time the whole network with explicit padding only')
  p.add_argument('--arch', default='inception_v3')
  p.add_argument('--model_batch', type=int, default=2)
  p.add_argument('--size', type=int, default=299)
  p.add_argument('--train', action='store_true', help='with --model: time a train step too')
  p.add_argument('--no_layers', action='store_true')
  a = p.parse_args()
  flags = os.environ.get('XLA_FLAGS', '')
  if a.model_explicit:
    print(json.dumps(model_time(a.arch, a.model_batch, a.size, 1, a.repeat, True, a.train)))
    return
  out = {'xla_flags': flags,
         'layers': [] if a.no_layers else layer_table(a.batch, a.number, a.repeat)}
  if a.model:
    out['model_pad'] = model_time(a.arch, a.model_batch, a.size, 1, a.repeat, False, a.train)
    import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
    res = subprocess.run([sys.executable, '-m', 'experiments.bench_conv', '--model_explicit',
                          f'--arch={a.arch}', f'--model_batch={a.model_batch}',
                          f'--size={a.size}', f'--repeat={a.repeat}'] + (['--train'] if a.train else []),
                         capture_output=True, text=True, check=True)
    out['model_explicit'] = json.loads(res.stdout.strip().splitlines()[-1])
  print(json.dumps(out, indent=1))
  print(f'XLA_FLAGS={flags!r}')
  print('| layer | pad fwd ms | explicit fwd ms | pad grad ms | explicit grad ms | '
        'pads left in HLO (pad fwd/grad) |')
  print('|---|---|---|---|---|---|')
  for r in out['layers']:
    print(f"| {r['layer']} | {r['pad_fwd_ms']:.2f} | {r['explicit_fwd_ms']:.2f} | "
          f"{r['pad_grad_ms']:.2f} | {r['explicit_grad_ms']:.2f} | "
          f"{r['pad_hlo_pads_fwd']}/{r['pad_hlo_pads_grad']} |")
  for k in ('model_pad', 'model_explicit'):
    if k in out:
      r = out[k]
      print(f"{k}: {r['arch']} b{r['batch']} {r['size']}: fwd {r['fwd_ms']:.1f} ms, "
            f"compile {r['compile_s']:.1f} s, pads in HLO {r['hlo_pads']}, "
            f"logits sum {r['logits_sum']:.4f}")
      if 'train_ms' in r:
        print(f"  train step {r['train_ms']:.1f} ms, compile {r['train_compile_s']:.1f} s, "
              f"pads in HLO {r['train_hlo_pads']}, XLA temp {r['train_xla_temp_mb']:.0f} MB")


if __name__ == '__main__':
  main()
