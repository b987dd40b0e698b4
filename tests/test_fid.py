"""FID / sFID / KID / IS math, the mode resizes against PIL, and the CLI (no torch).

Parity with pytorch-fid, torch-fidelity and clean-fid (features, resizes, FID end
to end, the Frechet distance itself) is in test_fid_parity.py. Here: closed forms
and hand computations, the rank-deficient case against an exact formula, the
clean-mode resize against PIL itself, and the CLI on a synthetic weight file.
"""

import json
import re
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import inception_jax as ij
from inception_jax import fid, metrics, pretrained, weights
from experiments import fid as fid_cli

TAG = 'inception_v3_fid.tf_2015_12_05'


# ------------------------------------------------------------------------- metrics

def _stats(f):
  return metrics.GaussianStats.from_features(f)


def test_stats_equal_numpy_mean_and_cov_streaming():
  rng = np.random.default_rng(0)
  f = rng.normal(5.0, 0.1, size=(300, 12))  # large mean: cancellation would show
  acc = metrics.StatsAccumulator()
  for i in range(0, 300, 37):
    acc.update(f[i:i + 37].astype(np.float32))
  s = acc.result()
  f32 = f.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(s.mu, f32.mean(0), rtol=1e-13)
  np.testing.assert_allclose(s.sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-15)
  assert s.count == 300 and s.factor is None  # 300 rows > 12 dims: no factor kept
  small = _stats(f[:10])
  np.testing.assert_allclose(small.factor @ small.factor.T, small.sigma, atol=1e-14)


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(1)
  d = 6
  # Diagonal covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i).
  a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  assert metrics.frechet_distance((mu1, np.diag(a)), (mu2, np.diag(b))) == \
      pytest.approx(want, rel=1e-12)
  # Commuting (same eigenvectors), and the distance of a set to itself is 0.
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  assert metrics.frechet_distance((mu1, s1), (mu2, s2)) == pytest.approx(want, rel=1e-10)
  assert abs(metrics.frechet_distance((mu1, s1), (mu1, s1))) < 1e-12
  with pytest.raises(ValueError, match='different feature sizes'):
    metrics.frechet_distance((mu1, s1), (np.zeros(3), np.eye(3)))


@pytest.mark.parametrize('n', [5, 20, 60])
def test_frechet_rank_deficient_matches_exact_gram_form(n):
  # n < d: rank(S) <= n - 1. Exact: tr sqrt(S1 S2) = nuclear norm of
  # Xc1 Xc2^T / (n - 1) (n x n), whatever the ~d - n zero eigenvalues of S1 S2 do.
  rng = np.random.default_rng(n)
  d = 256
  mix = rng.normal(size=(32, d))
  fa = np.maximum(rng.normal(size=(n, 32)) @ mix, 0)
  fb = np.maximum((rng.normal(size=(n, 32)) + 0.3) @ mix, 0)
  ca, cb = fa - fa.mean(0), fb - fb.mean(0)
  tr = np.linalg.svd(ca @ cb.T / (n - 1), compute_uv=False).sum()
  exact = (np.sum((fa.mean(0) - fb.mean(0)) ** 2) + np.sum(ca ** 2) / (n - 1)
           + np.sum(cb ** 2) / (n - 1) - 2 * tr)
  from_features = metrics.frechet_distance(_stats(fa), _stats(fb))
  sa, sb = _stats(fa), _stats(fb)
  from_cov_only = metrics.frechet_distance((sa.mu, sa.sigma), (sb.mu, sb.sigma))
  assert from_features == pytest.approx(exact, rel=1e-12)
  assert from_cov_only == pytest.approx(exact, rel=1e-9)


def test_kid_matches_hand_computation_and_is_zero_on_average_for_same_law():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 1
  k = lambda u, v: (u @ v.T / 4 + 1) ** 3
  m = 7
  want = ((k(x, x).sum() - np.trace(k(x, x)) + k(y, y).sum() - np.trace(k(y, y)))
          / (m * (m - 1)) - 2 * k(x, y).sum() / m ** 2)
  mean, std = metrics.kernel_inception_distance(x, y, subsets=3, subset_size=7)
  assert mean == pytest.approx(want, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
  same = [metrics.kernel_inception_distance(rng.normal(size=(50, 4)),
                                            rng.normal(size=(50, 4)), subsets=5,
                                            subset_size=20, seed=s)[0] for s in range(20)]
  assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20)  # unbiased
  with pytest.raises(ValueError, match='subset_size=8 must be in'):
    metrics.kernel_inception_distance(x, y, subset_size=8)


def test_inception_score_limits_and_torch_fidelity_splits():
  # Confident and uniform over k classes -> k; uniform predictions -> 1.
  k = 5
  confident = np.full((10 * k, k), -30.0)
  confident[np.arange(10 * k), np.arange(10 * k) % k] = 30.0
  mean, std = metrics.inception_score(confident, splits=10, seed=None)
  assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0, abs=1e-9)
  assert metrics.inception_score(np.zeros((20, 8)), splits=2)[0] == pytest.approx(1.0)
  # Splits are rows i*n//s .. (i+1)*n//s after RandomState(seed).permutation(n).
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(23, 6)) * 2
  perm = logits[np.random.RandomState(7).permutation(23)]
  scores = []
  for i in range(4):
    z = perm[i * 23 // 4:(i + 1) * 23 // 4]
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores.append(np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()))
  got = metrics.inception_score(logits, splits=4, seed=7)
  assert got == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-12)


# ------------------------------------------------------------------- network and resize

def test_fid_architecture_differs_from_v3_only_in_the_pools():
  v3 = ij.get_arch('inception_v3')
  fid_spec = ij.get_arch('inception_v3_fid')
  assert fid_spec.layers[:-1] == v3.layers[:-1]
  last = fid_spec.layers[-1]
  assert [op.kind for op in last.branches[3] if hasattr(op, 'kind')] == ['max']
  assert fid_spec.defaults['count_include_pad'] is False
  model = nnx.eval_shape(lambda: ij.create_model('inception_v3_fid', num_classes=1008))
  assert weights.num_weights(model) == 23_850_960  # pytorch-fid's parameter count
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda st, x: fid.endpoints(nnx.merge(graphdef, st), x), state,
                       jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32))
  assert {k: v.shape for k, v in out.items()} == {
      'pool_3': (2, 2048), 'logits_unbiased': (2, 1008), 'spatial': (2, 17 * 17 * 7)}


def test_tag_manifest_and_hash_prefix():
  cfg = ij.get_pretrained_cfg(TAG)
  assert (cfg.arch, cfg.num_classes, cfg.source) == ('inception_v3_fid', 1008, 'pytorch_fid')
  assert cfg.file_name.split('-')[-1].split('.')[0] == cfg.file_hash == '6726825d'
  with open(os.path.join(os.path.dirname(__file__), '..', 'third_party_weights',
                         'manifest.json'), encoding='utf-8') as f:
    entry = {e['name']: e for e in json.load(f)['weights']}[TAG]
  for url in [entry['url']] + entry['alternative_urls']:
    assert url.endswith('-6726825d.pth')


@pytest.mark.parametrize('shape', [(37, 53), (299, 299), (600, 450)])
def test_clean_resize_matches_pil_float_resize(shape):
  rng = np.random.default_rng(4)
  img = rng.integers(0, 256, (2,) + shape + (3,), dtype=np.uint8)
  ref = np.stack([np.stack([np.asarray(Image.fromarray(
      im[..., c].astype(np.float32), mode='F').resize((299, 299), Image.BICUBIC))
                            for c in range(3)], -1) for im in img])
  ours = np.asarray(jax.jit(fid.resize_pil_bicubic)(jnp.asarray(img, jnp.float32)))
  # PIL accumulates in float64, we in float32: a few ulp of 255.
  assert np.max(np.abs(ours - ref)) <= 2e-4, np.max(np.abs(ours - ref))


def test_preprocess_rejects_unknown_mode():
  with pytest.raises(ValueError, match="unknown FID mode 'legacy'"):
    fid.preprocess(jnp.zeros((1, 8, 8, 3), jnp.uint8), 'legacy')


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope='module')
def weight_file(tmp_path_factory):
  """Synthetic inception_v3_fid weights (He-normal convs, unit BN) in the project format."""
  model = nnx.eval_shape(lambda: ij.create_model('inception_v3_fid', num_classes=1008))
  rng = np.random.default_rng(5)
  arrays = {}
  for k, v in weights.flat_state(model).items():
    shape = tuple(v.shape)
    if k.endswith('conv/kernel'):
      arrays[k] = rng.normal(size=shape) * np.sqrt(2 / np.prod(shape[:3]))
    elif k.endswith(('bn/scale', 'bn/var')):
      arrays[k] = np.ones(shape)
    elif k == 'Logits/kernel':
      arrays[k] = rng.normal(size=shape) / np.sqrt(shape[0])
    else:
      arrays[k] = np.zeros(shape)
  cfg = pretrained.get_pretrained_cfg(TAG)
  config = {**cfg.to_dict(), 'num_classes': 1008, 'include_top': True,
            'converted_from': {'file': 'synthetic', 'sha256': 'synthetic'}}
  path = str(tmp_path_factory.mktemp('fidw') / 'w.safetensors')
  weights.save(path, {k: v.astype(np.float32) for k, v in arrays.items()}, config)
  return path


def _folder(path, n, size, seed):
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(path, f'{i:03d}.png'))
  return str(path)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  d = tmp_path_factory.mktemp('fidcli')
  return (_folder(d / 'a', 4, (40, 40), 0), _folder(d / 'b', 3, (32, 48), 1), d)


def _run(argv, capsys):
  rc = fid_cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_cli_stats_round_trip_and_adm_batch(weight_file, folders, capsys):
  a, b, d = folders
  # One device, batch 4: every call is one network step (data parallelism over
  # the 8 test devices is exercised by test_fid_parity.py).
  common = ['--weights', weight_file, '--batch_size', '4', '--num_devices', '1']
  rc, out, err = _run([a, b, *common, '--metrics', 'all', '--json', d / 'r.json'], capsys)
  assert rc == 0, err
  res = json.loads((d / 'r.json').read_text())
  assert res['fid'] > 0 and res['sfid'] > 0 and res['kid']['subset_size'] == 3
  assert res['is_a']['splits'] == 4 and res['is_b']['splits'] == 3
  assert 'FID (tf):' in out and 'KID subset size 3' in err and '\r' not in err
  # Statistics of a, saved and read back (the pytorch-fid / ADM keys), give the same FID.
  rc, out, err = _run([a, *common, '--save_stats', d / 'a.npz', '--metrics', 'kid',
                       '--stats_with_images'], capsys)
  assert rc == 0, err
  with np.load(d / 'a.npz') as f:
    assert {'mu', 'sigma', 'mu_s', 'sigma_s', 'feats', 'arr_0'} <= set(f.keys())
    assert f['mu'].shape == (2048,) and f['sigma'].dtype == np.float64
    assert f['sigma_s'].shape == (2023, 2023) and f['arr_0'].shape == (4, 40, 40, 3)
    assert str(f['mode']) == 'tf'
  rc, out, err = _run([d / 'a.npz', b, *common, '--metrics', 'fid,sfid,kid', '--json',
                       d / 'r2.json'], capsys)
  assert rc == 0, err
  res2 = json.loads((d / 'r2.json').read_text())
  for k in ('fid', 'sfid'):
    assert res2[k] == pytest.approx(res[k], rel=1e-9)
  assert res2['kid']['mean'] == pytest.approx(res['kid']['mean'], rel=1e-9)
  # An ADM sample batch (arr_0 only) is read as images.
  with np.load(d / 'a.npz') as f:
    np.savez(d / 'adm.npz', arr_0=f['arr_0'])
  rc, out, err = _run([d / 'adm.npz', b, *common, '--json', d / 'r3.json'], capsys)
  assert rc == 0, err
  assert json.loads((d / 'r3.json').read_text())['fid'] == pytest.approx(res['fid'],
                                                                          rel=1e-9)
  # Statistics are never overwritten; a mode mismatch is refused.
  rc, _, err = _run([a, *common, '--save_stats', d / 'a.npz'], capsys)
  assert rc == 1 and 'exists' in err and 'Traceback' not in err
  rc, _, err = _run([d / 'a.npz', b, *common, '--mode', 'clean'], capsys)
  assert rc == 1 and 'mode tf, not clean' in err


def test_cli_user_errors_are_one_line(weight_file, folders, capsys, tmp_path):
  a, _, _ = folders
  empty = tmp_path / 'empty'
  empty.mkdir()
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  np.savez(tmp_path / 'other.npz', x=np.zeros(3))
  cases = [
      ([a, tmp_path / 'missing'], 'no such file or folder'),
      ([a, empty], 'no images'),
      ([a, tmp_path / 'junk.npz'], 'not a readable .npz'),
      ([a, tmp_path / 'other.npz'], 'has no arr_0'),
      ([a, a, '--weights', tmp_path / 'nope.safetensors'], 'nope.safetensors'),
  ]
  for argv, msg in cases:  # all caught before any image is processed
    if '--weights' not in argv:
      argv = argv + ['--weights', weight_file]
    rc, _, err = _run(argv, capsys)
    assert not re.search(r'\d+/\d+ images', err), err
    assert rc == 1 and msg in err and 'Traceback' not in err, (argv, err)
  with pytest.raises(SystemExit):
    fid_cli.main([str(a)])  # one PATH without --save_stats: argparse usage error
  assert 'two PATHs' in capsys.readouterr().err
