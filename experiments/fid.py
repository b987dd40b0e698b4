r"""FID, sFID, Inception Score and KID between two image sets, as the references compute them.

  python -m experiments.fid PATH_A PATH_B [--mode=tf] [--metrics=fid,sfid,is,kid]
  python -m experiments.fid PATH --save_stats=OUT.npz

PATH is a folder of images (bmp, jpg, jpeg, pgm, png, ppm, tif, tiff, webp;
``--recursive`` for sub-folders), an ``.npz`` of statistics (``mu``/``sigma`` as
pytorch-fid and clean-fid write them, plus ``mu_s``/``sigma_s`` for sFID as in the
ADM evaluator's reference batches, ``feats`` for KID as clean-fid's KID files),
or an ADM sample batch ``.npz`` (``arr_0``: uint8 ``[N, H, W, 3]``, read in
batches).

``--mode`` picks the reference whose numbers you want (see ``inception_jax.fid``):
``tf`` (default) is the original TF graph: TTUR, the ADM evaluator,
torch-fidelity and torchmetrics; ``pytorch_fid`` is pytorch-fid; ``clean`` is
clean-fid's default mode. The network is ``inception_v3_fid`` with the converted
2015-12-05 weights (``python -m third_party_weights.convert --tag
inception_v3_fid.tf_2015_12_05``, or ``--weights=FILE``). Feature extraction is
jitted and data-parallel over all local devices.

``--save_stats`` writes ``mu``, ``sigma`` (pool_3; what pytorch-fid's and clean-fid's
readers load), ``mu_s``, ``sigma_s`` (spatial; the ADM evaluator's reference-batch
keys), with ``--metrics`` including kid ``feats`` too, and records the mode and
the weights so that mismatched statistics are refused later. With
``--stats_with_images`` the images go in as ``arr_0`` as well, which makes the
file a complete ADM evaluator reference batch.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import sys
import time
import zipfile
from typing import Any, Iterator

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('bmp', 'jpg', 'jpeg', 'pgm', 'png', 'ppm', 'tif', 'tiff', 'webp')
METRICS = ('fid', 'sfid', 'is', 'kid')


class UsageError(Exception):
  """A user mistake: reported as one line, without a traceback."""


def info(msg: str) -> None:
  """A progress or note line on stderr (results go to stdout)."""
  print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- inputs

def list_images(folder: str, recursive: bool = False) -> list[str]:
  """Image files of a folder (case-insensitive extensions), sorted by path."""
  out = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    out += [os.path.join(root, f) for f in files
            if f.rsplit('.', 1)[-1].lower() in IMAGE_EXTENSIONS]
    if not recursive:
      break
  return sorted(out)


def read_image(path: str) -> np.ndarray:
  """uint8 ``[H, W, 3]`` of an image file (PIL ``convert('RGB')``, as the references)."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:
    raise UsageError(f'cannot read image {path}: {e}') from e


def _open_arr_0(path: str):
  """(zip, member file, shape) of an ADM batch's ``arr_0``, header read and checked."""
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise UsageError(f'{path} is not a readable .npz file: {e}') from e
  if 'arr_0.npy' not in zf.namelist():
    zf.close()
    raise UsageError(f'{path} has no arr_0 (images) and no mu/sigma (statistics)')
  f = zf.open('arr_0.npy')
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise UsageError(f'{path}: arr_0 is an .npy version {version} file; save it with '
                       'numpy.savez')
    if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or fortran:
      raise UsageError(f'{path}: arr_0 must be uint8 images [N, H, W, 3] (C order), '
                       f'got {dtype} {shape}')
  except (UsageError, ValueError) as e:
    f.close()
    zf.close()
    raise UsageError(str(e)) from e
  return zf, f, tuple(shape)


def adm_image_count(path: str) -> int:
  """Number of images in an ADM sample batch (checks ``arr_0``'s header)."""
  zf, f, shape = _open_arr_0(path)
  f.close()
  zf.close()
  return shape[0]


def adm_image_batches(path: str, batch_size: int) -> Iterator[np.ndarray]:
  """An ADM sample batch's ``arr_0`` in batches, streamed (never loaded whole)."""
  zf, f, shape = _open_arr_0(path)
  row = int(np.prod(shape[1:]))
  try:
    for start in range(0, shape[0], batch_size):
      n = min(batch_size, shape[0] - start)
      buf = f.read(n * row)
      if len(buf) != n * row:
        raise UsageError(f'{path}: arr_0 is truncated')
      yield np.frombuffer(buf, np.uint8).reshape((n,) + shape[1:])
  finally:
    f.close()
    zf.close()


def folder_batches(files: list[str], batch_size: int, workers: int = 4
                   ) -> Iterator[list[np.ndarray]]:
  """Decoded images in batches; the next batches decode while one is processed."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for i in range(0, len(files), batch_size):
      pending.append([pool.submit(read_image, f) for f in files[i:i + batch_size]])
      if len(pending) > 2:
        yield [fut.result() for fut in pending.popleft()]
    while pending:
      yield [fut.result() for fut in pending.popleft()]


def by_size(images: list[np.ndarray]) -> list[np.ndarray]:
  """Images grouped into uint8 stacks of one size each (order kept within a size)."""
  groups = collections.OrderedDict()
  for im in images:
    groups.setdefault(im.shape, []).append(im)
  return [np.stack(g) for g in groups.values()]


# ---------------------------------------------------------------------------- progress

class Progress:
  """A tqdm bar on a terminal; a log line every ~10% (and at the end) otherwise."""

  def __init__(self, total: int, desc: str):
    self.total, self.desc, self.done = total, desc, 0
    self.t0 = time.perf_counter()
    self.bar = None
    if sys.stderr.isatty() and not os.environ.get('CI'):
      import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True)
    self.next_report = max(1, total // 10)

  def update(self, n: int) -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif self.done >= self.next_report or self.done >= self.total:
      rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
      info(f'{self.desc}: {self.done}/{self.total} images '
           f'({100 * self.done / max(self.total, 1):.0f}%), {rate:.1f} img/s')
      self.next_report = self.done + max(1, self.total // 10)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


# ------------------------------------------------------------------------------ sources

class SetResult:
  """What one PATH contributes: statistics, and features where they are needed."""

  def __init__(self, path: str):
    self.path = path
    self.pool = None  # GaussianStats of pool_3
    self.spatial = None  # GaussianStats of the sFID feature
    self.feats = None  # [n, 2048] pool_3 (KID)
    self.logits = None  # [n, 1008] (IS)
    self.count = None
    self.mode = None  # recorded mode (None: unknown, from a foreign file)
    self.weights = None  # recorded weight-file hash
    self.images = None  # uint8 stack (--stats_with_images)


def load_stats_file(path: str) -> SetResult:
  """Statistics from an ``.npz`` (pytorch-fid / clean-fid / ADM / ours)."""
  from inception_jax import metrics  # pylint: disable=g-import-not-at-top
  res = SetResult(path)
  with np.load(path, allow_pickle=False) as f:
    keys = set(f.keys())
    if not {'mu', 'sigma'} <= keys:
      raise UsageError(f'{path} is not a statistics file: it has {sorted(keys)}, '
                       'expected mu and sigma (or arr_0 images)')
    try:
      res.pool = metrics.GaussianStats(f['mu'].astype(np.float64),
                                       f['sigma'].astype(np.float64))
      if {'mu_s', 'sigma_s'} <= keys:
        res.spatial = metrics.GaussianStats(f['mu_s'].astype(np.float64),
                                            f['sigma_s'].astype(np.float64))
    except ValueError as e:
      raise UsageError(f'{path}: {e}') from e
    if 'feats' in keys:
      res.feats = f['feats'].astype(np.float32)
    if 'logits' in keys:
      res.logits = f['logits'].astype(np.float32)
    res.mode = str(f['mode']) if 'mode' in keys else None
    res.weights = str(f['weights']) if 'weights' in keys else None
    res.count = int(f['count']) if 'count' in keys else None
  return res


def plan_source(path: str, args):
  """Validates one PATH before any computation: ('stats', SetResult),
  ('folder', files) or ('adm', None)."""
  if not os.path.exists(path):
    raise UsageError(f'no such file or folder: {path}')
  if os.path.isdir(path):
    files = list_images(path, args.recursive)
    if not files:
      hint = '' if args.recursive else ' (images in sub-folders need --recursive)'
      raise UsageError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {path}{hint}')
    if len(files) < 2:
      raise UsageError(f'{path} has 1 image; statistics need at least 2')
    return 'folder', files
  if not path.endswith('.npz'):
    raise UsageError(f'{path} is neither a folder of images nor an .npz file')
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
  except (zipfile.BadZipFile, OSError) as e:
    raise UsageError(f'{path} is not a readable .npz file: {e}') from e
  if 'mu.npy' in names:
    res = load_stats_file(path)
    if res.mode is None:
      info(f'{path} records no FID mode; assuming it was computed in mode {args.mode}')
    elif res.mode != args.mode:
      raise UsageError(f'{path} holds statistics of mode {res.mode}, not {args.mode}: '
                       f'pass --mode={res.mode} or recompute them')
    return 'stats', res
  count = adm_image_count(path)
  if count < 2:
    raise UsageError(f'{path} has {count} image; statistics need at least 2')
  return 'adm', None


def compute_set(path: str, files: list[str] | None, extractor, args, weights_id: str,
                keep_images: bool) -> SetResult:
  """Features of a folder (``files``) or an ADM ``arr_0`` batch, reduced to statistics."""
  from inception_jax import metrics  # pylint: disable=g-import-not-at-top
  res = SetResult(path)
  res.mode, res.weights = args.mode, weights_id
  if files is not None:
    total, batches = len(files), (by_size(b) for b in folder_batches(files, args.batch_size))
  else:
    total = adm_image_count(path)
    batches = ([b] for b in adm_image_batches(path, args.batch_size))
  pool, spatial = metrics.StatsAccumulator(), metrics.StatsAccumulator()
  feats, logits, images = [], [], []
  sizes = set()
  progress = Progress(total, os.path.basename(os.path.normpath(path)) or path)
  try:
    for groups in batches:
      for stack in groups:
        sizes.add(stack.shape[1:3])
        out = extractor(stack)
        pool.update(out['pool_3'])
        spatial.update(out['spatial'])
        if 'kid' in args.metrics:
          feats.append(out['pool_3'])
        if 'is' in args.metrics:
          logits.append(out['logits_unbiased'])
        if keep_images:
          images.append(stack)
        progress.update(stack.shape[0])
  finally:
    progress.close()
  if len(sizes) > 1:
    info(f'{path}: {len(sizes)} different image sizes (each resized to 299 by the '
         f'{args.mode} mode)')
  res.pool, res.spatial, res.count = pool.result(), spatial.result(), total
  if feats:
    res.feats = np.concatenate(feats)
  if logits:
    res.logits = np.concatenate(logits)
  if keep_images:
    if len(sizes) > 1:
      raise UsageError('--stats_with_images needs images of one size (arr_0 is one '
                       f'array); {path} has {len(sizes)} sizes')
    res.images = np.concatenate(images)
  return res


def save_stats(res: SetResult, out: str, with_images: bool) -> None:
  arrays = dict(mu=res.pool.mu, sigma=res.pool.sigma, mu_s=res.spatial.mu,
                sigma_s=res.spatial.sigma, mode=np.array(res.mode),
                weights=np.array(res.weights), count=np.array(res.count))
  if res.feats is not None:
    arrays['feats'] = res.feats
  if res.logits is not None:
    arrays['logits'] = res.logits
  if with_images:
    arrays['arr_0'] = res.images
  tmp = out + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, out)


# --------------------------------------------------------------------------------- main

def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='python -m experiments.fid', description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('paths', nargs='+', metavar='PATH',
                 help='two image folders / .npz files, or one with --save_stats')
  p.add_argument('--mode', default='tf', choices=('tf', 'pytorch_fid', 'clean'),
                 help='resize and scaling of a reference: tf (TTUR, ADM, torch-fidelity, '
                      'torchmetrics), pytorch_fid, clean (clean-fid). Default tf')
  p.add_argument('--metrics', default='fid',
                 help=f'comma-separated subset of {",".join(METRICS)} (or all). Default fid')
  p.add_argument('--weights', default=None,
                 help='converted inception_v3_fid weights (default: the cached '
                      'inception_v3_fid.tf_2015_12_05 file)')
  p.add_argument('--batch_size', type=int, default=50, help='images per step (default 50)')
  p.add_argument('--num_devices', type=int, default=None,
                 help='devices to split each batch over (default: all local devices)')
  p.add_argument('--recursive', action='store_true', help='find images in sub-folders too')
  p.add_argument('--kid_subsets', type=int, default=100, help='KID subsets (default 100)')
  p.add_argument('--kid_subset_size', type=int, default=1000,
                 help='KID subset size (default 1000, capped at the smaller set size)')
  p.add_argument('--is_splits', type=int, default=10, help='Inception Score splits (10)')
  p.add_argument('--seed', type=int, default=2020,
                 help='KID subset draws and IS shuffle (torch-fidelity: 2020); -1: no '
                      'IS shuffle (improved-gan / ADM order)')
  p.add_argument('--save_stats', metavar='OUT.npz', default=None,
                 help='write the statistics of the single PATH to OUT.npz')
  p.add_argument('--stats_with_images', action='store_true',
                 help='with --save_stats: also store the images as arr_0 (ADM reference batch)')
  p.add_argument('--json', metavar='OUT.json', default=None, help='also write the results here')
  args = p.parse_args(argv)
  metrics = [m.strip().lower() for m in args.metrics.split(',') if m.strip()]
  if metrics == ['all']:
    metrics = list(METRICS)
  bad = sorted(set(metrics) - set(METRICS))
  if bad or not metrics:
    p.error(f'--metrics: unknown {bad}; choose from {",".join(METRICS)} or all')
  args.metrics = metrics
  if args.save_stats:
    if len(args.paths) != 1:
      p.error('--save_stats takes one PATH (the image set whose statistics to save)')
    if not args.save_stats.endswith('.npz'):
      p.error('--save_stats needs a file name ending in .npz')
  elif len(args.paths) != 2:
    p.error('give two PATHs to compare (or one PATH with --save_stats=OUT.npz)')
  if args.stats_with_images and not args.save_stats:
    p.error('--stats_with_images goes with --save_stats')
  if args.batch_size < 1:
    p.error('--batch_size must be positive')
  return args


def _fmt(x: float) -> str:
  return f'{x:.6f}'


def run(args) -> dict[str, Any]:
  """Computes what ``args`` asks; returns the results (also printed)."""
  if args.save_stats and os.path.exists(args.save_stats):
    raise UsageError(f'{args.save_stats} exists; remove it or choose another name '
                     '(statistics are never overwritten)')
  plans = [plan_source(p, args) for p in args.paths]
  results: dict[str, Any] = {'mode': args.mode, 'paths': list(args.paths)}
  sets = {}
  extractor = weights_id = None
  if any(kind != 'stats' for kind, _ in plans):
    import inception_jax  # pylint: disable=g-import-not-at-top
    inception_jax.configure_xla()  # its XLA:CPU flags, before JAX computes
    import jax  # pylint: disable=g-import-not-at-top
    from inception_jax import fid, weights as weights_lib  # pylint: disable=g-import-not-at-top
    try:
      model = fid.create_fid_model(args.weights)
    except (FileNotFoundError, weights_lib.WeightLoadError, ValueError) as e:
      raise UsageError(str(e)) from e
    weights_id = model.pretrained_cfg.name
    if args.weights:
      _, config = weights_lib.load(args.weights)
      weights_id = config.get('converted_from', {}).get('sha256', weights_id)
    devices = jax.local_devices()
    n = args.num_devices or len(devices)
    if not 1 <= n <= len(devices):
      raise UsageError(f'--num_devices={n} but {len(devices)} devices are available')
    mesh = jax.make_mesh((n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])
    extractor = fid.FeatureExtractor(model, args.mode, batch_size=args.batch_size,
                                     mesh=mesh)
    info(f'inception_v3_fid ({weights_id}), mode {args.mode}, batch '
         f'{extractor.batch_size} over {n} device(s)')
  for path, (kind, payload) in zip(args.paths, plans):
    if kind == 'stats':
      sets[path] = payload
    else:
      sets[path] = compute_set(path, payload if kind == 'folder' else None, extractor,
                               args, weights_id, args.stats_with_images)
  if args.save_stats:
    res = sets[args.paths[0]]
    save_stats(res, args.save_stats, args.stats_with_images)
    results['saved'] = args.save_stats
    print(f'saved statistics of {res.count} images ({args.mode} mode) to {args.save_stats}')
    return results

  from inception_jax import metrics  # pylint: disable=g-import-not-at-top
  a, b = (sets[p] for p in args.paths)
  recorded = {s.weights for s in (a, b) if s.weights}
  if len(recorded) > 1:
    raise UsageError(f'the two sets were computed with different weights {sorted(recorded)}')
  if 'fid' in args.metrics:
    results['fid'] = metrics.frechet_distance(a.pool, b.pool)
    print(f'FID ({args.mode}): {_fmt(results["fid"])}')
  if 'sfid' in args.metrics:
    if a.spatial is None or b.spatial is None:
      raise UsageError('sFID needs spatial statistics (mu_s/sigma_s) or images for both '
                       'sets')
    results['sfid'] = metrics.frechet_distance(a.spatial, b.spatial)
    print(f'sFID ({args.mode}): {_fmt(results["sfid"])}')
  if 'is' in args.metrics:
    seed = None if args.seed < 0 else args.seed
    for key, s in (('is_a', a), ('is_b', b)):
      if s.logits is None:
        print(f'IS {s.path}: not available (statistics file without logits)')
        continue
      splits = min(args.is_splits, len(s.logits))
      if splits < args.is_splits:
        info(f'IS {s.path}: {splits} splits (one image each at least)')
      mean, std = metrics.inception_score(s.logits, splits=splits, seed=seed)
      results[key] = {'mean': mean, 'std': std, 'splits': splits}
      print(f'IS {s.path}: {_fmt(mean)} +- {_fmt(std)} ({splits} splits)')
  if 'kid' in args.metrics:
    if a.feats is None or b.feats is None:
      raise UsageError('KID needs the pool_3 features of both sets (images, or a '
                       'statistics file saved with --metrics including kid)')
    size = min(args.kid_subset_size, len(a.feats), len(b.feats))
    if size < args.kid_subset_size:
      info(f'KID subset size {size} (the smaller set has {size} images)')
    try:
      mean, std = metrics.kernel_inception_distance(
          a.feats, b.feats, subsets=args.kid_subsets, subset_size=size, seed=args.seed)
    except ValueError as e:
      raise UsageError(str(e)) from e
    results['kid'] = {'mean': mean, 'std': std, 'subsets': args.kid_subsets,
                      'subset_size': size}
    print(f'KID: {mean:.8f} +- {std:.8f} ({args.kid_subsets} subsets of {size})')
  return results


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    results = run(args)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
