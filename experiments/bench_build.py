r"""Build time: ``create_model`` from scratch, and loading a converted file.

  python -m experiments.bench_build [--archs=inception_v3,...] [--load] [--timm]
      [--roots=OLD_CHECKOUT,.] [--labels=before,after] [--repeats=1]

Every number is the first call in a fresh process (``import inception_jax`` done
before the clock starts; compilation included), so each cell is its own
subprocess. ``create_model(arch)`` builds the network with random initial values
and waits for them (``jax.block_until_ready``). With ``--load``, per architecture
with a pretrained tag, a synthetic converted file of the tag (random arrays of the
network's shapes, ``weights.save`` with the tag's config, written once by this
checkout) is timed two ways: ``weights.load(path)`` alone (reading the file) and
``create_model(tag, pretrained=path)`` (reading, the strict check and the
assignment). The file is read once before the timed runs, so every run reads it
from the page cache.

``--roots`` lists checkouts of the library to time side by side (the first call
of each cell runs against each root in turn, alternating, so that a drift of the
machine's load hits all columns alike); the workers use only ``create_model`` and
``weights.load``, which every version has. ``--timm`` adds timm's (or
torchvision's, for GoogLeNet) ``create_model`` of the same network, for scale.
The table reports the median over ``--repeats`` processes. Nothing here asserts a
speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.abspath(__file__)
_ROOT = os.path.dirname(os.path.dirname(_HERE))
# The same network in the reference libraries (random weights, no download).
_TORCH = {'inception_v1_bn': 'torchvision:googlenet', 'inception_v3': 'timm:inception_v3',
          'inception_v4': 'timm:inception_v4',
          'inception_resnet_v2': 'timm:inception_resnet_v2'}


def _worker(a) -> dict:
  if a.worker == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    lib, name = _TORCH[a.arch].split(':')
    if lib == 'timm':
      import timm  # pylint: disable=g-import-not-at-top
      make = lambda: timm.create_model(name, pretrained=False)
    else:
      import torchvision  # pylint: disable=g-import-not-at-top
      make = lambda: torchvision.models.googlenet(weights=None, init_weights=True)
    t = time.perf_counter()
    make()
    return {'seconds': time.perf_counter() - t, 'torch_threads': torch.get_num_threads()}
  t = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import weights  # pylint: disable=g-import-not-at-top
  rec = {'import_s': time.perf_counter() - t, 'library': os.path.dirname(
      os.path.dirname(os.path.abspath(inception_jax.__file__)))}
  if a.worker == 'write':
    tag = inception_jax.list_pretrained(a.arch + '.*')[0]
    cfg = inception_jax.get_pretrained_cfg(tag)
    abstract = nnx.eval_shape(lambda: inception_jax.create_model(
        cfg.arch, num_classes=cfg.num_classes, **dict(cfg.options)))
    import numpy as np  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    arrays = {}
    for k, v in weights.flat_state(abstract).items():
      x = rng.normal(0, 0.05, v.shape).astype(np.float32)
      arrays[k] = np.abs(x) + 0.5 if k.endswith('/var') else x
    weights.save(a.path, arrays, {**cfg.to_dict(), 'include_top': True})
    weights.load(a.path)  # into the page cache
    return {**rec, 'tag': tag, 'bytes': os.path.getsize(a.path)}
  t = time.perf_counter()
  if a.worker == 'build':
    model = inception_jax.create_model(a.arch)
  elif a.worker == 'read':
    arrays, _ = weights.load(a.path)
  elif a.worker == 'load':
    model = inception_jax.create_model(a.tag, pretrained=a.path)
  else:
    raise ValueError(f'unknown worker {a.worker}')
  if a.worker != 'read':
    jax.block_until_ready(nnx.state(model))
  rec['seconds'] = time.perf_counter() - t
  return rec


def _run(worker: str, root: str, **kw) -> dict:
  args = [f'--{k}={v}' for k, v in kw.items() if v is not None]
  env = {**os.environ, 'PYTHONPATH': root + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'JAX_PLATFORMS': os.environ.get('JAX_PLATFORMS', 'cpu')}
  # The script runs from this checkout; ``import inception_jax`` finds ``root``'s.
  r = subprocess.run([sys.executable, _HERE, f'--worker={worker}', *args], cwd=root,
                     env=env, capture_output=True, text=True, check=False)
  lines = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
  if r.returncode != 0 or not lines:
    raise RuntimeError(f'{worker} {kw} with {root} failed ({r.returncode}):\n'
                       f'{r.stderr[-3000:]}')
  rec = json.loads(lines[-1][len('RESULT '):])
  if 'library' in rec and os.path.realpath(rec['library']) != os.path.realpath(root):
    raise RuntimeError(f'{root}: the worker imported inception_jax from {rec["library"]}')
  return rec


def _median(recs: list[dict]) -> float:
  return statistics.median(r['seconds'] for r in recs)


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m experiments.bench_build',
                              description=__doc__.split('\n')[0])
  p.add_argument('--archs', default=None,
                 help='comma-separated architectures (default: every registered one)')
  p.add_argument('--load', action='store_true',
                 help='also time loading a converted file against reading it')
  p.add_argument('--timm', action='store_true',
                 help="add timm's / torchvision's create_model of the same network")
  p.add_argument('--roots', default=_ROOT,
                 help='comma-separated library checkouts to compare (default: this one)')
  p.add_argument('--labels', default=None, help='column labels for --roots')
  p.add_argument('--repeats', type=int, default=1, help='fresh processes per cell')
  p.add_argument('--workdir', default=None, help='where the synthetic files go (a temp dir)')
  p.add_argument('--worker', choices=('build', 'read', 'load', 'write', 'torch'),
                 help=argparse.SUPPRESS)
  p.add_argument('--arch', help=argparse.SUPPRESS)
  p.add_argument('--tag', help=argparse.SUPPRESS)
  p.add_argument('--path', help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.repeats < 1:
    p.error('--repeats must be at least 1')
  return a


def main(argv=None) -> int:
  a = parse_args(sys.argv[1:] if argv is None else argv)
  if a.worker:
    print('RESULT ' + json.dumps(_worker(a)), flush=True)
    return 0
  roots = [os.path.abspath(os.path.expanduser(r)) for r in a.roots.split(',')]
  labels = a.labels.split(',') if a.labels else [os.path.basename(r) or r for r in roots]
  if len(labels) != len(roots):
    print(f'error: {len(labels)} labels for {len(roots)} roots', file=sys.stderr)
    return 2
  for r in roots:
    if not os.path.isfile(os.path.join(r, 'inception_jax', '__init__.py')):
      print(f'error: {r} is not a checkout of inception_jax', file=sys.stderr)
      return 2
  if a.archs:
    archs = a.archs.split(',')
  else:
    archs = json.loads(subprocess.run(
        [sys.executable, '-c', 'import json, inception_jax as ij; '
         'print(json.dumps(ij.list_models()))'], cwd=_ROOT, capture_output=True, text=True,
        check=True, env={**os.environ, 'PYTHONPATH': _ROOT}).stdout)
  workdir = a.workdir or tempfile.mkdtemp(prefix='bench_build_')
  os.makedirs(workdir, exist_ok=True)
  tags = {}
  if a.load:
    listing = subprocess.run(
        [sys.executable, '-c', 'import json, inception_jax as ij; '
         'print(json.dumps(ij.list_pretrained()))'], cwd=_ROOT, capture_output=True,
        text=True, check=True, env={**os.environ, 'PYTHONPATH': _ROOT}).stdout
    have = {n.partition('.')[0] for n in json.loads(listing)}
    for arch in archs:
      if arch in have:
        path = os.path.join(workdir, f'{arch}.safetensors')
        w = _run('write', _ROOT, arch=arch, path=path)
        tags[arch] = (w['tag'], path, w['bytes'])

  rows = []
  for arch in archs:
    build = {label: [] for label in labels}
    load = {label: [] for label in labels}
    read, torch = [], []
    for _ in range(a.repeats):
      for root, label in zip(roots, labels):  # alternating, cell by cell
        build[label].append(_run('build', root, arch=arch))
        print(f'{arch} build [{label}]: {build[label][-1]["seconds"]:.2f} s', file=sys.stderr)
      if arch in tags:
        tag, path, _ = tags[arch]
        read.append(_run('read', _ROOT, path=path))
        for root, label in zip(roots, labels):
          load[label].append(_run('load', root, tag=tag, path=path))
          print(f'{arch} load [{label}]: {load[label][-1]["seconds"]:.2f} s '
                f'(read {read[-1]["seconds"]:.2f} s)', file=sys.stderr)
      if a.timm and arch in _TORCH:
        torch.append(_run('torch', _ROOT, arch=arch))
    rows.append((arch, build, load, read, torch))

  head = ['arch'] + [f'create_model s ({l})' for l in labels]
  if a.timm:
    head.append('timm/torchvision s')
  if a.load:
    head += ['file MB', 'read s (weights.load)'] + [f'load s ({l})' for l in labels]
  print(f'create_model, first call in a fresh process (compilation included), CPU '
        f'({os.cpu_count()} cores), median of {a.repeats}:')
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  for arch, build, load, read, torch in rows:
    cells = [arch] + [f'{_median(build[l]):.2f}' for l in labels]
    if a.timm:
      cells.append(f'{_median(torch):.2f}' if torch else '-')
    if a.load:
      if read:
        cells += [f'{tags[arch][2] / 1e6:.0f}', f'{_median(read):.2f}']
        cells += [f'{_median(load[l]):.2f}' for l in labels]
      else:
        cells += ['-', '-'] + ['-'] * len(labels)
    print('| ' + ' | '.join(cells) + ' |')
  if a.load and tags:
    print('load: create_model(TAG, pretrained=FILE) of a synthetic converted file of the '
          'tag (' + ', '.join(t for t, _, _ in tags.values()) + ')')
  if not a.workdir:
    for _, path, _ in tags.values():
      os.remove(path)
    os.rmdir(workdir)
  return 0


if __name__ == '__main__':
  sys.exit(main())
