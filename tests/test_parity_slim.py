"""TF-slim checkpoints: converter, download path and logit parity with TF-slim itself.

``slim_parity_worker.py`` (its own process: TensorFlow and JAX, never torch) builds
each TF-slim network in TensorFlow graph mode with random weights and randomised
BatchNorm statistics, writes real checkpoints in both TensorFlow formats, converts
them with the converter for every TF-slim tag, runs our network from the converted
file beside TF on the same batch and records the differences in ``worker.json``.
It runs once per test session, shared by pytest-xdist workers (a file lock).

Here: logits, aux logits and pooled features within 1e-4 x the logit scale (TF's
max |logit|) with the same top-1; both checkpoint formats convert to bit-identical
arrays; the default conversion drops the background class; the other tags of an
architecture convert the same arrays; ``create_model('inception_v2.slim_in1k')``
works from the cache (1000 classes, TF's outputs 1..1000); the CLI (no torch in its process), its clean errors and the
``.tar.gz`` download path against a server on 127.0.0.1.
"""

import fcntl
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
from flax import nnx

import inception_jax
from inception_jax import weights
from third_party_weights import convert

pytestmark = pytest.mark.slow  # reference libraries or trained runs: minutes on CPU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'slim_parity_worker.py')
ARCHS = ('inception_v1_bn', 'inception_v2', 'inception_v3', 'inception_v4',
         'inception_resnet_v2')
OTHER_TAGS = {'inception_v3': ('slim_adv_in1k', 'slim_ens3_adv_in1k', 'slim_ens4_adv_in1k'),
              'inception_resnet_v2': ('slim_adv_in1k', 'slim_ens_adv_in1k')}
TOL = 1e-4  # relative to TF's max |logit|


def _env():
  return {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}


@pytest.fixture(scope='module')
def slim(tmp_path_factory):
  """Runs the worker once per session (shared by xdist workers); (record, folder)."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  out = root / 'slim_parity'
  with open(root / 'slim_parity.lock', 'w', encoding='utf-8') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / 'worker.json').exists():
      shutil.rmtree(out, ignore_errors=True)
      out.mkdir()
      r = subprocess.run([sys.executable, WORKER, str(out)], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=1500, check=False)
      print(r.stdout[-6000:])
      assert r.returncode == 0, r.stderr[-6000:]
  with open(out / 'worker.json', encoding='utf-8') as f:
    record = json.load(f)
  for arch in ARCHS:
    rec = record[arch]
    per_kernels = {k: f"{v['logits_max_abs_diff']:.2e}" for k, v in rec['kernels'].items()}
    print(f"{arch:22s} logits {rec['logits_max_abs_diff']:.2e} / {rec['logits_scale']:.2f}"
          f"  pooled {rec['pooled_max_abs_diff']:.2e}  aux {rec.get('aux_max_abs_diff')}"
          f"  logits per kernels {per_kernels}")
  return record, out


@pytest.mark.parametrize('arch', ARCHS)
def test_logits_and_pooled_features_match_tf_slim(slim, arch):
  rec = slim[0][arch]
  scale = rec['logits_scale']
  assert scale > 1.0, rec  # a tolerance relative to tiny logits would mean nothing
  assert rec['logits_max_abs_diff'] <= TOL * scale, rec
  assert rec['top1_ours'] == rec['top1_ref'], rec
  assert rec['pooled_max_abs_diff'] <= TOL * max(scale, rec['pooled_scale']), rec
  # The background class was kept: 1001 outputs, ImageNet class i at i + 1.
  assert (rec['model_num_classes'], rec['model_label_offset']) == (1001, 1)
  # The same logits on each explicit kernel choice.
  assert sorted(rec['kernels']) == ['cpu', 'xla'], rec
  for choice, r in rec['kernels'].items():
    assert r['logits_max_abs_diff'] <= TOL * scale, (choice, rec)
    assert r['top1_ours'] == rec['top1_ref'], (choice, rec)


@pytest.mark.parametrize('arch', ['inception_v3', 'inception_v4', 'inception_resnet_v2'])
def test_aux_logits_match_tf_slim(slim, arch):
  rec = slim[0][arch]
  assert rec['aux_scale'] > 1.0, rec
  assert rec['aux_max_abs_diff'] <= TOL * rec['aux_scale'], rec


@pytest.mark.parametrize('arch', ARCHS)
def test_both_checkpoint_formats_and_every_tag_convert_the_same(slim, arch):
  rec = slim[0][arch]
  assert rec['v1_v2_identical'], 'first and second checkpoint formats differ'
  assert rec['drop_is_keep_without_background']
  assert rec['other_tags_identical'] == {t: True for t in OTHER_TAGS.get(arch, ())}
  configs = rec['configs']
  main = f'{arch}.slim_in1k'
  keep = configs[f'{main}.v1.keep.safetensors']
  drop = configs.get(f'{main}.v1.drop.safetensors') or configs[f'{main}.v2.drop']
  assert (keep['num_classes'], keep['label_offset']) == (1001, 1)
  assert (drop['num_classes'], drop['label_offset']) == (1000, 0)
  for tag in OTHER_TAGS.get(arch, ()):
    c = configs[f'{arch}.{tag}.v2.drop']
    assert (c['arch'], c['tag'], c['num_classes'], c['label_offset']) == (arch, tag, 1000, 0)
  assert keep['aux_in_file'] == (arch not in ('inception_v1_bn', 'inception_v2'))


def test_create_model_from_the_cache(slim, tmp_path, monkeypatch):
  """``create_model('inception_v2.slim_in1k')`` from the cache: 1000 classes = TF's 1..1000."""
  record, out = slim
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path))
  cfg = inception_jax.get_pretrained_cfg('inception_v2.slim_in1k')
  shutil.copy(out / 'converted' / 'inception_v2.slim_in1k.v1.drop.safetensors',
              tmp_path / cfg.converted_file)
  model = inception_jax.create_model('inception_v2.slim_in1k')
  assert model.num_classes == 1000 and model.pretrained_cfg is cfg
  ref = np.load(out / 'inception_v2' / 'ref.npz')
  forward = nnx.jit(lambda m, x: m(x))
  logits = np.asarray(forward(model, ref['x']))
  expected = ref['logits'][:, 1:]
  assert np.max(np.abs(logits - expected)) <= TOL * record['inception_v2']['logits_scale']
  assert logits.argmax(-1).tolist() == expected.argmax(-1).tolist()


# ---------------------------------------------------------------------------------
# The CLI: one subprocess (no torch in it), the failure modes in-process.

def test_cli_converts_first_format_without_torch(slim, tmp_path):
  _, out = slim
  code = ('import sys\n'
          'from third_party_weights import convert\n'
          'rc = convert.main(sys.argv[1:])\n'
          "assert rc == 0 and 'torch' not in sys.modules, (rc, 'torch' in sys.modules)\n")
  dest = tmp_path / 'v1.safetensors'
  r = subprocess.run([sys.executable, '-c', code, '--source', 'slim', '--arch',
                      'inception_v1_bn.slim_in1k', '--input',
                      str(out / 'inception_v1_bn' / 'v1' / 'inception_v1.ckpt'),
                      '--output', str(dest), '--keep_background'],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip().endswith(str(dest))
  got, config = weights.load(str(dest))
  ref, _ = weights.load(str(out / 'converted' /
                            'inception_v1_bn.slim_in1k.v1.keep.safetensors'))
  assert sorted(got) == sorted(ref)
  for k in got:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  assert (config['num_classes'], config['label_offset']) == (1001, 1)


def _main(capsys, *args):
  rc = convert.main(list(args))
  return rc, capsys.readouterr().err


def test_cli_wrong_arch_and_corrupt_files_fail_cleanly(slim, tmp_path, capsys):
  _, out = slim
  v1_ckpt = out / 'inception_v1_bn' / 'v1' / 'inception_v1.ckpt'
  dest = tmp_path / 'out.safetensors'
  rc, err = _main(capsys, '--source', 'slim', '--arch', 'inception_v3.slim_in1k',
                  '--input', str(v1_ckpt), '--output', str(dest))
  assert rc == 1 and "outside 'InceptionV3'" in err and 'Check --arch' in err, err
  assert 'Traceback' not in err and not dest.exists()
  # Truncated first-format file, truncated second-format data file, missing file.
  bad = tmp_path / 'trunc.ckpt'
  bad.write_bytes(v1_ckpt.read_bytes()[:1 << 20])
  v2_dir = tmp_path / 'v2'
  shutil.copytree(out / 'inception_v2' / 'v2', v2_dir)
  data = v2_dir / 'inception_v2.ckpt.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:1 << 20])
  for path, arch in ((bad, 'inception_v1_bn'), (v2_dir / 'inception_v2.ckpt', 'inception_v2')):
    rc, err = _main(capsys, '--source', 'slim', '--arch', f'{arch}.slim_in1k', '--input',
                    str(path), '--output', str(dest))
    assert rc == 1 and 'truncated or corrupt' in err, err
    assert not dest.exists()
  rc, err = _main(capsys, '--source', 'slim', '--arch', 'inception_v2.slim_in1k',
                  '--input', str(tmp_path / 'nothing.ckpt'), '--output', str(dest))
  assert rc == 1 and 'no TF checkpoint at' in err, err
  # --keep_background is for TF-slim files only.
  rc, err = _main(capsys, '--source', 'timm', '--arch', 'inception_v3.tf_in1k',
                  '--input', str(v1_ckpt), '--output', str(dest), '--keep_background')
  assert rc == 1 and 'TF-slim checkpoints' in err, err


@pytest.fixture(scope='module')
def server(slim, tmp_path_factory):
  """A local HTTP server on 127.0.0.1 serving tarballs made like the published ones."""
  _, out = slim
  site = tmp_path_factory.mktemp('site')
  # 2016 layout: one first-format file at the top of the archive.
  with tarfile.open(site / 'inception_v1_2016_08_28.tar.gz', 'w:gz', compresslevel=1) as tar:
    tar.add(out / 'inception_v1_bn' / 'v1' / 'inception_v1.ckpt', 'inception_v1.ckpt')
  # 2017 layout: the second format's files (and a file the converter skips).
  with tarfile.open(site / 'inception_v2_v2format.tar.gz', 'w:gz', compresslevel=1) as tar:
    for f in sorted((out / 'inception_v2' / 'v2').iterdir()):
      tar.add(f, f.name)
    readme = tmp_path_factory.mktemp('readme') / 'README'
    readme.write_text('not a checkpoint')
    tar.add(readme, 'README')
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}', site
  httpd.shutdown()
  httpd.server_close()


def _manifest(tmp_path, name, url, file_hash):
  with open(convert.MANIFEST, encoding='utf-8') as f:
    doc = json.load(f)
  for e in doc['weights']:
    if e['name'] == name:
      e['url'], e['file_hash'], e['hash_algo'] = url, file_hash, 'sha256'
  path = tmp_path / f'manifest_{name}.json'
  path.write_text(json.dumps(doc))
  return str(path)


@pytest.mark.parametrize('name,tarball', [
    ('inception_v1_bn.slim_in1k', 'inception_v1_2016_08_28.tar.gz'),
    ('inception_v2.slim_in1k', 'inception_v2_v2format.tar.gz')])
def test_download_tarball_verifies_extracts_and_converts(slim, server, tmp_path, capsys,
                                                         name, tarball):
  _, out = slim
  url, site = server
  sha = hashlib.sha256((site / tarball).read_bytes()).hexdigest()
  cache = tmp_path / 'cache'
  rc, err = _main(capsys, '--tag', name, '--cache', str(cache), '--manifest',
                  _manifest(tmp_path, name, f'{url}/{tarball}', sha))
  assert rc == 0, err
  if 'v2format' in tarball:  # the worker adds training leftovers to that format
    assert 'training variables not converted' in err and 'global_step' in err, err
  assert (cache / 'downloads' / name / tarball).exists()  # kept as downloaded
  got, config = weights.load(str(cache / f'{name}.safetensors'))
  ref, _ = weights.load(str(out / 'converted' / f'{name}.v1.drop.safetensors'))
  assert sorted(got) == sorted(ref)
  for k in got:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  assert config['converted_from'] == {'file': tarball, 'sha256': sha}
  assert (config['num_classes'], config['label_offset']) == (1000, 0)
  # A wrong published hash deletes the download and converts nothing.
  shutil.rmtree(cache)
  rc, err = _main(capsys, '--tag', name, '--cache', str(cache), '--manifest',
                  _manifest(tmp_path, name, f'{url}/{tarball}', '0' * 64))
  assert rc == 1 and 'the published hash is' in err, err
  assert not (cache / 'downloads' / name / tarball).exists()
  assert not (cache / f'{name}.safetensors').exists()


def test_corrupt_tarball_fails_cleanly(slim, server, tmp_path, capsys):
  _, site = server
  bad = tmp_path / 'bad.tar.gz'
  bad.write_bytes((site / 'inception_v1_2016_08_28.tar.gz').read_bytes()[:4096])
  rc, err = _main(capsys, '--source', 'slim', '--arch', 'inception_v1_bn.slim_in1k',
                  '--input', str(bad), '--output', str(tmp_path / 'o.safetensors'))
  assert rc == 1 and 'truncated or corrupt' in err, err
