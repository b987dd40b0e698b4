"""Torch side of the FID parity tests (tests/test_fid_parity.py), run in a subprocess.

Never imports tensorflow. It builds pytorch-fid's FID Inception with random weights
and randomised BatchNorm statistics (``fid_inception_v3`` itself, with its
download replaced by the random state dict), saves the state dict in the
published layouts (``pt_inception-2015-12-05-<sha256[:8]>.pth`` for pytorch-fid,
the same bytes as ``weights-inception-2015-12-05-<sha256[:8]>.pth`` for
torch-fidelity), converts both with the CLI (in subprocesses, overlapping the
reference runs) and records what the references compute:

* features of a fixed batch: pytorch-fid's ``InceptionV3`` (its resize and
  scaling), torch-fidelity's ``FeatureExtractorInceptionV3`` loading the local
  file (2048, logits_unbiased, logits), clean-fid's ``clean`` resizer followed by
  the same network (clean-fid's torchscript network cannot be built offline; its
  ``compute_fid`` takes the network as ``custom_feat_extractor``), and the
  ``Mixed_6d.branch1x1`` outputs (after its BN, before and after the ReLU);
* the resizes alone on odd sizes (up and down);
* FID / KID / IS end to end on two image folders through each reference's own
  entry point: ``pytorch_fid.fid_score.calculate_fid_given_paths``,
  ``torch_fidelity.calculate_metrics`` and ``cleanfid.fid.compute_fid`` /
  ``compute_kid``;
* ``pytorch_fid``'s ``calculate_frechet_distance`` and torch-fidelity's
  ``fid_statistics_to_metric`` on fixed statistics (full rank and rank-deficient).

Usage: python tests/fid_parity_worker.py WORK_DIR
WORK_DIR holds ``folder_a/``, ``folder_b/`` and ``batch.npz`` (written by the test);
results go to ``WORK_DIR/reference.json`` and ``WORK_DIR/reference.npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity_torch_worker  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = 'inception_v3_fid.tf_2015_12_05'


def build_random(work: str) -> tuple[str, str]:
  """pytorch-fid's network, randomised, saved in both published layouts."""
  from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  box = {}
  # fid_inception_v3() builds torchvision's v3 (1008 classes, no aux), swaps in the
  # FIDInception* blocks, then downloads; here the "download" returns the
  # network's own fresh state, which is then randomised in place.
  pf.load_state_dict_from_url = lambda *a, **k: box['state']
  shell = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # pylint: disable=protected-access
  for name, block in (('Mixed_5b', pf.FIDInceptionA(192, pool_features=32)),
                      ('Mixed_5c', pf.FIDInceptionA(256, pool_features=64)),
                      ('Mixed_5d', pf.FIDInceptionA(288, pool_features=64)),
                      ('Mixed_6b', pf.FIDInceptionC(768, channels_7x7=128)),
                      ('Mixed_6c', pf.FIDInceptionC(768, channels_7x7=160)),
                      ('Mixed_6d', pf.FIDInceptionC(768, channels_7x7=160)),
                      ('Mixed_6e', pf.FIDInceptionC(768, channels_7x7=192)),
                      ('Mixed_7b', pf.FIDInceptionE_1(1280)),
                      ('Mixed_7c', pf.FIDInceptionE_2(2048))):
    setattr(shell, name, block)
  calib = torch.from_numpy(parity_torch_worker.images(0).transpose(0, 3, 1, 2)) * 2 - 1
  parity_torch_worker.randomise(shell, calib, seed=2015)
  state = {k: v.contiguous() for k, v in shell.state_dict().items()}
  tmp = os.path.join(work, 'state.pth')
  torch.save(state, tmp)
  with open(tmp, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:8]
  pf_path = os.path.join(work, f'pt_inception-2015-12-05-{digest}.pth')
  tfid_path = os.path.join(work, f'weights-inception-2015-12-05-{digest}.pth')
  os.replace(tmp, pf_path)
  shutil.copyfile(pf_path, tfid_path)
  box['state'] = torch.load(pf_path, weights_only=True)
  return pf_path, tfid_path


def start_convert(source: str, src: str, out: str) -> subprocess.Popen:
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  return subprocess.Popen([sys.executable, '-m', 'third_party_weights.convert', '--source',
                           source, '--arch', TAG, '--input', src, '--output', out],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def pytorch_fid_model(**kw):
  from pytorch_fid.inception import InceptionV3  # pylint: disable=g-import-not-at-top
  return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], **kw).eval()


@torch.no_grad()
def features(batch: np.ndarray, tfid_path: str) -> dict[str, np.ndarray]:
  """Reference features of one uint8 NHWC batch in the three pipelines."""
  from cleanfid.resize import build_resizer  # pylint: disable=g-import-not-at-top
  from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # pylint: disable=g-import-not-at-top
  out = {}
  net = pytorch_fid_model()
  hooks = {}
  branch = net.blocks[2][6].branch1x1  # Mixed_6d.branch1x1 (block 2: Mixed_5b..6e)
  branch.register_forward_hook(lambda m, i, o: hooks.__setitem__('post_relu', o))
  # BasicConv2d's ReLU is in place: keep a copy of the BN output.
  branch.bn.register_forward_hook(lambda m, i, o: hooks.__setitem__('pre_relu', o.clone()))
  # pytorch-fid: ToTensor (x / 255) then its own resize and 2x - 1.
  x01 = torch.from_numpy(batch.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2)
  out['pytorch_fid/pool_3'] = net(x01)[0].squeeze(-1).squeeze(-1).numpy()
  for k in ('post_relu', 'pre_relu'):
    out[f'pytorch_fid/mixed_6d_branch1x1_{k}'] = hooks[k].permute(0, 2, 3, 1).numpy()
  # torch-fidelity: uint8 in, TF1 resize, (x - 128) / 128.
  fe = FeatureExtractorInceptionV3('inception-v3-compat', ['2048', 'logits_unbiased',
                                                           'logits'],
                                   feature_extractor_weights_path=tfid_path)
  pool, unbiased, logits = fe(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())
  out['torch_fidelity/pool_3'] = pool.numpy()
  out['torch_fidelity/logits_unbiased'] = unbiased.numpy()
  out['torch_fidelity/logits'] = logits.numpy()
  # clean-fid 'clean': its resizer per image, then (x - 128) / 128 (InceptionV3W).
  resize = build_resizer('clean')
  clean = np.stack([resize(im) for im in batch])
  out['clean/resized'] = clean
  raw = pytorch_fid_model(resize_input=False, normalize_input=False)
  xc = (torch.from_numpy(clean).permute(0, 3, 1, 2) - 128) / 128
  out['clean/pool_3'] = raw(xc)[0].squeeze(-1).squeeze(-1).numpy()
  return out


def resizes(rng) -> dict[str, np.ndarray]:
  """The three resizes alone, on sizes below and above 299 (non-square)."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from cleanfid.resize import build_resizer  # pylint: disable=g-import-not-at-top
  from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x  # pylint: disable=g-import-not-at-top
  out = {}
  clean = build_resizer('clean')
  for h, w in ((37, 53), (512, 400)):
    img = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    key = f'{h}x{w}'
    out[f'resize/{key}/input'] = img
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    out[f'resize/{key}/tf'] = interpolate_bilinear_2d_like_tensorflow1x(
        x, size=(299, 299), align_corners=False).permute(0, 2, 3, 1).numpy()
    x01 = torch.from_numpy(img.astype(np.float32) / np.float32(255)).permute(0, 3, 1, 2)
    out[f'resize/{key}/pytorch_fid'] = F.interpolate(
        x01, size=(299, 299), mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
    out[f'resize/{key}/clean'] = np.stack([clean(im) for im in img])
  return out


def end_to_end(work: str, tfid_path: str, n: int) -> dict[str, float]:
  """Each reference's own FID/KID/IS entry point on folder_a vs folder_b."""
  import cleanfid.fid  # pylint: disable=g-import-not-at-top
  import torch_fidelity  # pylint: disable=g-import-not-at-top
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  a, b = os.path.join(work, 'folder_a'), os.path.join(work, 'folder_b')
  res, times = {}, {}
  quiet = contextlib.redirect_stdout(io.StringIO())
  t = time.time()
  with quiet:
    res['pytorch_fid/fid'] = float(fid_score.calculate_fid_given_paths(
        [a, b], batch_size=n, device='cpu', dims=2048, num_workers=0))
  times['pytorch_fid'] = time.time() - t
  t = time.time()
  m = torch_fidelity.calculate_metrics(
      input1=a, input2=b, cuda=False, fid=True, kid=True, isc=True, verbose=False,
      cache=False, save_cpu_ram=True, batch_size=n, kid_subset_size=n,
      feature_extractor_weights_path=tfid_path)
  times['torch_fidelity'] = time.time() - t
  res['torch_fidelity/fid'] = m['frechet_inception_distance']
  res['torch_fidelity/kid_mean'] = m['kernel_inception_distance_mean']
  res['torch_fidelity/kid_std'] = m['kernel_inception_distance_std']
  res['torch_fidelity/is_mean'] = m['inception_score_mean']
  res['torch_fidelity/is_std'] = m['inception_score_std']
  # clean-fid: its pipeline with the random-weight network in place of the
  # torchscript one (clean mode: InceptionV3W applies (x - 128) / 128 itself).
  raw = pytorch_fid_model(resize_input=False, normalize_input=False)
  memo = {}

  def net(x):
    # compute_kid re-extracts the features compute_fid extracted: same batches,
    # so the network output is reused (clean-fid's resize still runs each time).
    key = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    if key not in memo:
      memo[key] = raw((x - 128) / 128)[0].squeeze(-1).squeeze(-1)
    return memo[key]

  cleanfid.fid.build_feature_extractor = lambda *args, **kw: net
  t = time.time()
  with quiet:
    res['clean/fid'] = float(cleanfid.fid.compute_fid(
        a, b, mode='clean', device=torch.device('cpu'), num_workers=0, batch_size=n,
        verbose=False))
    # kernel_distance draws subsets of min(n_a, n_b) = every image: permutations.
    res['clean/kid'] = float(cleanfid.fid.compute_kid(
        a, b, mode='clean', device=torch.device('cpu'), num_workers=0, batch_size=n,
        verbose=False))
  times['clean'] = time.time() - t
  res['seconds'] = {k: round(v, 1) for k, v in times.items()}
  return res


def frechet_references(rng) -> tuple[dict, dict]:
  """Reference Frechet distances on fixed statistics (d=256 full rank; d=512, n=40)."""
  from pytorch_fid.fid_score import calculate_frechet_distance  # pylint: disable=g-import-not-at-top
  from torch_fidelity.metric_fid import fid_statistics_to_metric  # pylint: disable=g-import-not-at-top
  arrays, values = {}, {}
  for name, n, d in (('full', 2000, 256), ('deficient', 40, 512)):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    fa = np.maximum(rng.normal(size=(n, d)) @ mix, 0)
    fb = np.maximum((rng.normal(size=(n, d)) + 0.2) @ mix, 0)
    for key, f in (('a', fa), ('b', fb)):
      arrays[f'frechet/{name}/{key}'] = f
    s = [(f.mean(0), np.cov(f, rowvar=False)) for f in (fa, fb)]
    values[f'pytorch_fid/{name}'] = float(calculate_frechet_distance(s[0][0], s[0][1],
                                                                     s[1][0], s[1][1]))
    values[f'torch_fidelity/{name}'] = fid_statistics_to_metric(
        {'mu': s[0][0], 'sigma': s[0][1]}, {'mu': s[1][0], 'sigma': s[1][1]},
        verbose=False)['frechet_inception_distance']
  return arrays, values


def main() -> int:
  work = sys.argv[1]
  torch.set_num_threads(2)
  torch.manual_seed(0)
  t0 = time.time()
  times = {}
  pf_path, tfid_path = build_random(work)
  procs = [start_convert('pytorch_fid', pf_path, os.path.join(work, 'pf.safetensors')),
           start_convert('torch_fidelity', tfid_path, os.path.join(work, 'tfid.safetensors'))]
  times['build'] = time.time() - t0
  rng = np.random.default_rng(13)
  with np.load(os.path.join(work, 'batch.npz')) as f:
    batch = f['batch']
  arrays = features(batch, tfid_path)
  arrays.update(resizes(rng))
  frechet_arrays, frechet_values = frechet_references(rng)
  arrays.update(frechet_arrays)
  times['features_resizes_frechet'] = time.time() - t0 - times['build']
  n = len(os.listdir(os.path.join(work, 'folder_a')))
  results = {'files': {'pytorch_fid': os.path.basename(pf_path),
                       'torch_fidelity': os.path.basename(tfid_path)},
             'frechet': frechet_values, 'end_to_end': end_to_end(work, tfid_path, n)}
  for p in procs:
    _, err = p.communicate(timeout=900)
    if p.returncode != 0:
      raise RuntimeError(f'convert failed ({p.returncode}): {err[-3000:]}')
  times['total'] = time.time() - t0
  results['seconds'] = {k: round(v, 1) for k, v in times.items()}
  np.savez(os.path.join(work, 'reference.npz'), **arrays)
  with open(os.path.join(work, 'reference.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  print(json.dumps(results, indent=1, sort_keys=True), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
