"""FID parity with pytorch-fid, torch-fidelity and clean-fid, from the same random weights.

``fid_parity_worker.py`` (one subprocess, torch only, never tensorflow) builds
pytorch-fid's network with random weights and randomised BN statistics, saves it
in pytorch-fid's and torch-fidelity's published layouts, converts both files with
the CLI, and records each reference's features, resizes and FID / KID / IS on two
small image folders through their own entry points. Here (no torch) the converted
weights run in JAX: the features through ``inception_jax.fid`` and the metrics
through ``python -m experiments.fid`` (in-process, data-parallel over the 8 test
devices); the features also on the other kernel choice (``kernels='xla'``: the
default resolves to 'cpu' on a CPU machine). The measured differences are printed (the README's parity table).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from inception_jax import fid, kernels as kernels_lib, metrics, weights
from experiments import fid as fid_cli

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 16  # per folder
FEATURE_TOL = 1e-4  # max |difference| of features (float32 through ~100 layers)
FID_RTOL = 1e-3


def _images(rng, n, h, w, shift):
  """Photo-like uint8 images: smooth colour fields, edges and noise."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  out = []
  for _ in range(n):
    f = rng.uniform(1, 6, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack([np.sin(2 * np.pi * f[c] * (xx + shift * yy) + phase[c])
                     for c in range(3)], -1)
    edge = (xx + rng.uniform(-0.5, 0.5) * yy > rng.uniform(0.2, 0.8))[..., None]
    img = 127 + 80 * base + 40 * edge + rng.normal(0, 12 + 20 * shift, (h, w, 3))
    out.append(np.clip(img, 0, 255).astype(np.uint8))
  return np.stack(out)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
  """Runs the torch worker once; returns (dir, reference.json, reference arrays)."""
  d = tmp_path_factory.mktemp('fid_parity')
  rng = np.random.default_rng(0)
  for name, (h, w, shift) in (('folder_a', (48, 64, 0.0)), ('folder_b', (56, 56, 0.5))):
    os.makedirs(d / name)
    for i, img in enumerate(_images(rng, N_IMAGES, h, w, shift)):
      Image.fromarray(img).save(d / name / f'{i:03d}.png')
  np.savez(d / 'batch.npz', batch=_images(rng, 4, 45, 37, 0.2))
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'fid_parity_worker.py'),
                      str(d)], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=3000)
  print(r.stdout[-4000:])
  assert r.returncode == 0, r.stderr[-6000:]
  with open(d / 'reference.json', encoding='utf-8') as f:
    ref = json.load(f)
  with np.load(d / 'reference.npz') as f:
    arrays = dict(f)
  return d, ref, arrays


@pytest.fixture(scope='module')
def model(work):
  return fid.create_fid_model(str(work[0] / 'pf.safetensors'))


@pytest.fixture(scope='module')
def ours(work, model):
  """Our features of the worker's batch in each mode (8-device data parallel)."""
  batch = np.load(work[0] / 'batch.npz')['batch']
  return {mode: fid.FeatureExtractor(model, mode, batch_size=8)(batch)
          for mode in fid.MODES}


@pytest.fixture(scope='module')
def cli_results(work):
  """``python -m experiments.fid folder_a folder_b`` in each mode (in-process)."""
  d = work[0]
  out = {}
  for mode in fid.MODES:
    path = d / f'cli_{mode}.json'
    rc = fid_cli.main([str(d / 'folder_a'), str(d / 'folder_b'), '--mode', mode,
                       '--weights', str(d / 'pf.safetensors'), '--metrics', 'all',
                       '--batch_size', str(N_IMAGES), '--kid_subset_size', str(N_IMAGES),
                       '--json', str(path)])
    assert rc == 0
    out[mode] = json.loads(path.read_text())
  return out


def _maxdiff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_both_published_layouts_convert_to_the_same_weights(work):
  a, config = weights.load(str(work[0] / 'pf.safetensors'))
  b, config_b = weights.load(str(work[0] / 'tfid.safetensors'))
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert (config['arch'], config['tag'], config['num_classes']) == (
      'inception_v3_fid', 'tf_2015_12_05', 1008)
  assert config['converted_from']['file'] == work[1]['files']['pytorch_fid']
  assert config_b['converted_from']['file'] == work[1]['files']['torch_fidelity']
  assert config['converted_from']['sha256'].startswith(
      work[1]['files']['pytorch_fid'].rsplit('-', 1)[1].split('.')[0])


def test_features_match_pytorch_fid_and_torch_fidelity(work, ours):
  ref = work[2]
  checks = {
      'pytorch_fid pool_3': (ours['pytorch_fid']['pool_3'], ref['pytorch_fid/pool_3']),
      'torch_fidelity pool_3': (ours['tf']['pool_3'], ref['torch_fidelity/pool_3']),
      'torch_fidelity logits_unbiased': (ours['tf']['logits_unbiased'],
                                         ref['torch_fidelity/logits_unbiased']),
      'clean-fid pipeline pool_3': (ours['clean']['pool_3'], ref['clean/pool_3']),
  }
  for name, (a, b) in checks.items():
    print(f'{name}: max |diff| {_maxdiff(a, b):.2e} (max |ref| {np.abs(b).max():.2f})')
    assert np.abs(b).max() > 0.1, name  # features that are not trivially small
    assert _maxdiff(a, b) <= FEATURE_TOL, name
  # logits = logits_unbiased + bias, as torch-fidelity.
  bias = weights.load(str(work[0] / 'pf.safetensors'))[0]['Logits/bias']
  assert _maxdiff(ours['tf']['logits_unbiased'] + bias, ref['torch_fidelity/logits']) \
      <= FEATURE_TOL


@pytest.mark.parametrize('kernels', ['xla' if kernels_lib.resolve('auto') == 'cpu' else 'cpu'])
def test_features_match_on_the_other_kernel_choice(work, kernels):
  """pool_3 (pytorch-fid's mode) and logits_unbiased (TF mode) on the non-default kernels."""
  model = fid.create_fid_model(str(work[0] / 'pf.safetensors'), kernels=kernels)
  batch = np.load(work[0] / 'batch.npz')['batch']
  ref = work[2]
  for mode, key, want in (('pytorch_fid', 'pool_3', ref['pytorch_fid/pool_3']),
                          ('tf', 'logits_unbiased', ref['torch_fidelity/logits_unbiased'])):
    got = fid.FeatureExtractor(model, mode, batch_size=8)(batch)[key]
    print(f'kernels={kernels} {mode} {key}: max |diff| {_maxdiff(got, want):.2e}')
    assert _maxdiff(got, want) <= FEATURE_TOL, (kernels, mode, key)


def test_sfid_feature_is_mixed_6d_branch_0_after_relu(work, ours):
  ref = work[2]
  # The sFID tensor is mode-independent in layout; compare in pytorch-fid's mode
  # (the hooked network ran pytorch-fid's preprocessing).
  post = ref['pytorch_fid/mixed_6d_branch1x1_post_relu'][..., :fid.SPATIAL_CHANNELS]
  pre = ref['pytorch_fid/mixed_6d_branch1x1_pre_relu'][..., :fid.SPATIAL_CHANNELS]
  ours_s = ours['pytorch_fid']['spatial']
  diff = _maxdiff(ours_s, post.reshape(len(post), -1))
  print(f'sFID feature vs Mixed_6d.branch1x1 (post-ReLU) max |diff| {diff:.2e}')
  assert diff <= FEATURE_TOL
  assert (pre < 0).mean() > 0.1  # the ReLU matters: pre-ReLU is a different tensor
  assert _maxdiff(ours_s, pre.reshape(len(pre), -1)) > 0.1


def test_resizes_reproduce_the_references(work):
  ref = work[2]
  for key in ('37x53', '512x400'):
    img = jnp.asarray(ref[f'resize/{key}/input'])
    x = img.astype(jnp.float32)
    tf1 = fid.resize_tf1_bilinear(x)
    pt = fid.resize_torch_bilinear(jnp.asarray(np.arange(256, dtype=np.float32)
                                               / np.float32(255))[img])
    clean = jnp.clip(fid.resize_pil_bicubic(x), 0, 255)
    diffs = {'tf': _maxdiff(tf1, ref[f'resize/{key}/tf']),
             'pytorch_fid': _maxdiff(pt, ref[f'resize/{key}/pytorch_fid']),
             'clean': _maxdiff(clean, ref[f'resize/{key}/clean'])}
    print(f'resize {key} -> 299 max |diff|: {diffs}')
    assert diffs['tf'] <= 1e-4  # 0..255 scale: bit-exact in practice
    assert diffs['pytorch_fid'] <= 1e-6  # 0..1 scale: a few ulp
    assert diffs['clean'] <= 2e-4  # 0..255 scale: PIL sums in float64, we in float32


def test_fid_kid_is_match_each_reference_in_its_mode(work, cli_results):
  e2e = work[1]['end_to_end']
  rows = [('pytorch_fid', 'fid', cli_results['pytorch_fid']['fid'], e2e['pytorch_fid/fid']),
          ('tf', 'fid', cli_results['tf']['fid'], e2e['torch_fidelity/fid']),
          ('clean', 'fid', cli_results['clean']['fid'], e2e['clean/fid'])]
  for mode, what, got, want in rows:
    print(f'{mode:12s} {what}: ours {got:.6f} reference {want:.6f} rel '
          f'{abs(got - want) / abs(want):.2e}')
    assert got == pytest.approx(want, rel=FID_RTOL), (mode, what)
  # KID (subsets of every image: deterministic in every implementation) and IS.
  kid_scale = max(abs(e2e['torch_fidelity/kid_mean']), 1e-3)
  assert abs(cli_results['tf']['kid']['mean'] - e2e['torch_fidelity/kid_mean']) \
      <= 1e-3 * kid_scale
  assert abs(cli_results['clean']['kid']['mean'] - e2e['clean/kid']) \
      <= 1e-3 * max(abs(e2e['clean/kid']), 1e-3)
  assert cli_results['tf']['is_a']['mean'] == pytest.approx(
      e2e['torch_fidelity/is_mean'], rel=1e-4)
  assert cli_results['tf']['is_a']['std'] == pytest.approx(
      e2e['torch_fidelity/is_std'], rel=1e-3, abs=1e-6)
  print('KID tf', cli_results['tf']['kid']['mean'], e2e['torch_fidelity/kid_mean'],
        'clean', cli_results['clean']['kid']['mean'], e2e['clean/kid'],
        'IS', cli_results['tf']['is_a'], e2e['torch_fidelity/is_mean'],
        e2e['torch_fidelity/is_std'])


def test_frechet_distance_matches_pytorch_fid_on_identical_statistics(work):
  ref, arrays = work[1]['frechet'], work[2]
  for name in ('full', 'deficient'):
    fa, fb = arrays[f'frechet/{name}/a'], arrays[f'frechet/{name}/b']
    stats = [metrics.GaussianStats(f.mean(0), np.cov(f, rowvar=False)) for f in (fa, fb)]
    ours_cov = metrics.frechet_distance(*stats)
    ours_feat = metrics.frechet_distance(metrics.GaussianStats.from_features(fa),
                                         metrics.GaussianStats.from_features(fb))
    want = ref[f'pytorch_fid/{name}']
    print(f'Frechet {name}: ours {ours_cov:.10f} (from features {ours_feat:.10f}) '
          f'pytorch-fid {want:.10f} torch-fidelity {ref[f"torch_fidelity/{name}"]:.10f}')
    assert ours_cov == pytest.approx(want, rel=1e-6)
    assert ours_feat == pytest.approx(want, rel=1e-6)
    assert ours_cov == pytest.approx(ref[f'torch_fidelity/{name}'], rel=1e-6)


def test_saved_statistics_are_read_by_pytorch_fid(work, cli_results, tmp_path):
  """``--save_stats`` output through pytorch-fid's own reader (a torch subprocess)."""
  d = work[0]
  out = tmp_path / 'a.npz'
  rc = fid_cli.main([str(d / 'folder_a'), '--mode', 'pytorch_fid', '--weights',
                     str(d / 'pf.safetensors'), '--batch_size', str(N_IMAGES),
                     '--save_stats', str(out)])
  assert rc == 0
  code = ('import sys, numpy as np\n'
          'from pytorch_fid.fid_score import compute_statistics_of_path\n'
          'm, s = compute_statistics_of_path(sys.argv[1], None, 1, 2048, "cpu")\n'
          'np.savez(sys.argv[2], m=m, s=s)\n')
  r = subprocess.run([sys.executable, '-c', code, str(out), str(tmp_path / 'read.npz')],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  read = np.load(tmp_path / 'read.npz')
  saved = np.load(out)
  np.testing.assert_array_equal(read['m'], saved['mu'])
  np.testing.assert_array_equal(read['s'], saved['sigma'])
  # The same FID as from the folder, once the statistics come from the file.
  path = tmp_path / 'r.json'
  assert fid_cli.main([str(out), str(d / 'folder_b'), '--mode', 'pytorch_fid',
                       '--weights', str(d / 'pf.safetensors'), '--batch_size',
                       str(N_IMAGES), '--json', str(path)]) == 0
  assert json.loads(path.read_text())['fid'] == pytest.approx(
      cli_results['pytorch_fid']['fid'], rel=1e-9)
