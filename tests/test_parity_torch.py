"""Logit parity of converted torch weights, and the converter CLI's failure modes.

The reference networks (torchvision, timm, facenet-pytorch) run in
``parity_torch_worker.py``, a subprocess that never imports tensorflow (tensorflow
followed by torch._dynamo / triton crashes the process). For every torch-published
tag the worker builds the reference with random weights and randomised BN
statistics and affine parameters, saves it in the published format, converts it
with the CLI, loads it with ``create_model(TAG, pretrained=...)`` and compares
logits, pooled features and aux logits on the same batch (FaceNet: logits,
embeddings and the distances between them); the logits also on the other
kernel choice (``kernels='xla'``; the default resolves to 'cpu' on a CPU machine)
against the same reference run. The
measured differences are written to ``parity.json`` in the test's temporary
directory (and printed).
"""

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from inception_jax import weights

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_TAGS = [
    'inception_v1_bn.tv_in1k', 'inception_v3.tv_in1k', 'inception_v3.tf_in1k',
    'inception_v3.tf_adv_in1k', 'inception_v3.gluon_in1k', 'inception_v4.tf_in1k',
    'inception_resnet_v2.tf_in1k', 'inception_resnet_v2.tf_ens_adv_in1k',
]
FACENET_TAGS = ['inception_resnet_v1.vggface2', 'inception_resnet_v1.casia_webface']
TOL = 1e-4  # float32 max |logit difference|


def _env():
  return {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}


@pytest.fixture(scope='module')
def parity(tmp_path_factory):
  """Runs the worker once for every tag; returns (results, directory)."""
  d = tmp_path_factory.mktemp('parity')
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'parity_torch_worker.py'),
                      str(d), *TORCH_TAGS, *FACENET_TAGS], cwd=ROOT, env=_env(),
                     capture_output=True,
                     text=True, timeout=3000)
  print(r.stdout[-6000:])
  assert r.returncode == 0, r.stderr[-4000:]
  with open(d / 'parity.json', encoding='utf-8') as f:
    results = json.load(f)
  print('parity results:', d / 'parity.json')
  for tag in TORCH_TAGS + FACENET_TAGS:
    rec = results.get(tag, {})
    per_kernels = {k: v['logits_max_abs_diff'] for k, v in rec.get('kernels', {}).items()}
    print(f"{tag:40s} logits {rec.get('logits_max_abs_diff')} pooled "
          f"{rec.get('pooled_max_abs_diff')} aux {rec.get('aux_max_abs_diff')} "
          f"embedding {rec.get('embedding_max_abs_diff')} logits per kernels {per_kernels}")
  return results, d


@pytest.mark.parametrize('tag', TORCH_TAGS)
def test_logits_features_and_aux_match_reference(parity, tag):
  rec = parity[0][tag]
  assert 'error' not in rec, rec.get('error')
  assert rec['logits_max_abs_diff'] <= TOL, rec
  assert rec['top1_ours'] == rec['top1_ref'], rec
  assert rec['pooled_max_abs_diff'] <= TOL, rec
  # Logits must not be trivially small, or the tolerance would mean nothing.
  assert rec['logits_max_abs'] > 1.0, rec
  if tag == 'inception_v3.tv_in1k':  # the only torch source with trained aux heads
    assert rec['aux_max_abs_diff'] <= TOL, rec
  _check_kernels(rec, TOL)


def _check_kernels(rec, tol):
  """The logits on kernels='xla' and 'cpu' meet the same tolerance and top-1."""
  assert sorted(rec['kernels']) == ['cpu', 'xla'], rec
  for choice, r in rec['kernels'].items():
    assert r['logits_max_abs_diff'] <= tol, (choice, rec)
    assert r['top1_ours'] == rec['top1_ref'], (choice, rec)


@pytest.mark.parametrize('tag', FACENET_TAGS)
def test_facenet_logits_embeddings_and_distances(parity, tag):
  """facenet-pytorch's classifier logits, embeddings and verification distances."""
  rec = parity[0][tag]
  assert 'error' not in rec, rec.get('error')
  assert rec['num_classes'] == {'inception_resnet_v1.vggface2': 8631,
                                'inception_resnet_v1.casia_webface': 10575}[tag]
  assert rec['logits_max_abs'] > 1.0, rec
  assert rec['logits_max_abs_diff'] <= TOL * rec['logits_max_abs'], rec
  assert rec['top1_ours'] == rec['top1_ref'], rec
  _check_kernels(rec, TOL * rec['logits_max_abs'])
  # Unit vectors: embed() on the classifier model, and the include_top=False model.
  assert rec['embedding_max_abs_diff'] <= TOL, rec
  assert rec['embedding_notop_max_abs_diff'] <= TOL, rec
  np.testing.assert_allclose(rec['embedding_norms'], 1.0, atol=1e-6)
  assert rec['cosine_max_abs_diff'] <= TOL, rec
  ours, ref = np.asarray(rec['sq_l2_ours']), np.asarray(rec['sq_l2_ref'])
  np.testing.assert_allclose(ours, ref, atol=TOL)
  # Images 0..2 are unrelated, 3 is image 0 with 2% noise: nearest to 0 in both.
  for d in (ours, ref):
    assert d[0, 3] < min(d[0, 1], d[0, 2]) and d[3, 0] < min(d[3, 1], d[3, 2]), d
    assert np.all(np.diag(d) <= 1e-6)


def test_eval_transform_matches_torchvision_and_timm(parity):
  rec = parity[0]['preprocessing']
  assert 'error' not in rec, rec.get('error')
  for name, diff in rec.items():
    # Identical PIL resampling and crop; only float rounding of the normalisation.
    assert diff <= 1e-5, (name, diff)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'third_party_weights.convert', *args],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_wrong_arch_fails_clearly(parity, tmp_path):
  src = parity[1] / 'inception_v3.tf_in1k.safetensors'
  r = _cli('--source', 'timm', '--arch', 'inception_v4.tf_in1k', '--input', str(src),
           '--output', str(tmp_path / 'out.safetensors'))
  assert r.returncode == 1
  assert 'not a timm inception_v4 state dict' in r.stderr
  assert 'missing keys' in r.stderr and 'Check --arch' in r.stderr
  assert not (tmp_path / 'out.safetensors').exists()
  r = _cli('--source', 'torchvision', '--arch', 'inception_v3.tf_in1k', '--input',
           str(src), '--output', str(tmp_path / 'out.safetensors'))
  assert r.returncode == 1 and 'published by timm' in r.stderr


@pytest.mark.parametrize('name', ['inception_v3.tv_in1k.pth',
                                  'inception_v3.tf_in1k.safetensors'])
def test_truncated_file_fails_cleanly(parity, tmp_path, name):
  data = (parity[1] / name).read_bytes()
  bad = tmp_path / name
  bad.write_bytes(data[:len(data) // 2])
  tag, source = name.rsplit('.', 1)[0], 'torchvision' if 'tv_' in name else 'timm'
  r = _cli('--source', source, '--arch', tag, '--input', str(bad),
           '--output', str(tmp_path / 'out.safetensors'))
  assert r.returncode == 1
  assert 'truncated or corrupt' in r.stderr
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'out.safetensors').exists()


@pytest.fixture()
def server(parity):
  """A local HTTP server on 127.0.0.1 serving the worker's files."""
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(parity[1]))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  t = threading.Thread(target=httpd.serve_forever, daemon=True)
  t.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()


def _manifest(tmp_path, url, file_hash):
  with open(os.path.join(ROOT, 'third_party_weights', 'manifest.json'),
            encoding='utf-8') as f:
    doc = json.load(f)
  for e in doc['weights']:
    if e['name'] == 'inception_v3.tf_in1k':
      e['url'], e['file_hash'], e['hash_algo'] = url, file_hash, 'sha256'
  path = tmp_path / 'manifest.json'
  path.write_text(json.dumps(doc))
  return str(path)


def test_download_verifies_hash_caches_and_converts(parity, server, tmp_path):
  name = 'inception_v3.tf_in1k.safetensors'
  src = parity[1] / name
  sha = hashlib.sha256(src.read_bytes()).hexdigest()
  cache = tmp_path / 'cache'
  # A published prefix (torchvision style) is enough.
  r = _cli('--tag', 'inception_v3.tf_in1k', '--cache', str(cache),
           '--manifest', _manifest(tmp_path, f'{server}/{name}', sha[:8]))
  assert r.returncode == 0, r.stderr
  out = cache / 'inception_v3.tf_in1k.safetensors'
  assert r.stdout.strip() == str(out)
  assert (cache / 'downloads' / 'inception_v3.tf_in1k' / name).exists()
  got, config = weights.load(str(out))
  direct, _ = weights.load(str(parity[1] / 'inception_v3.tf_in1k.converted.safetensors'))
  assert set(got) == set(direct)
  for k in got:
    np.testing.assert_array_equal(got[k], direct[k], err_msg=k)
  assert config['converted_from']['sha256'] == sha
  assert (config['arch'], config['tag']) == ('inception_v3', 'tf_in1k')


def test_download_with_bad_hash_fails_and_deletes(parity, server, tmp_path):
  name = 'inception_v3.tf_in1k.safetensors'
  cache = tmp_path / 'cache'
  r = _cli('--tag', 'inception_v3.tf_in1k', '--cache', str(cache),
           '--manifest', _manifest(tmp_path, f'{server}/{name}', '0' * 64))
  assert r.returncode == 1
  assert 'the published hash is' in r.stderr
  assert not (cache / 'downloads' / 'inception_v3.tf_in1k' / name).exists()
  assert not (cache / 'inception_v3.tf_in1k.safetensors').exists()
  # An unreachable URL is a clean error too.
  shutil.rmtree(cache, ignore_errors=True)
  r = _cli('--tag', 'inception_v3.tf_in1k', '--cache', str(cache),
           '--manifest', _manifest(tmp_path, f'{server}/missing.safetensors', None))
  assert r.returncode == 1 and 'could not download' in r.stderr


def test_torch_conversion_never_imports_tensorflow(parity, tmp_path):
  code = ('import sys\n'
          'from third_party_weights import convert\n'
          'rc = convert.main(sys.argv[1:])\n'
          "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
          "assert rc == 0 and not bad, (rc, bad)\n")
  for name, source in (('inception_v3.tv_in1k.pth', 'torchvision'),
                       ('inception_v3.tf_in1k.safetensors', 'timm')):
    r = subprocess.run([sys.executable, '-c', code, '--source', source, '--arch',
                        name.rsplit('.', 1)[0], '--input', str(parity[1] / name),
                        '--output', str(tmp_path / 'out.safetensors')],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
