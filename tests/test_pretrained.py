"""Pretrained cfgs, the manifest, strict loading of converted files, preprocessing.

Weight files here are synthetic (random arrays with the shapes of the network,
written with ``weights.save``); real-weight parity lives in test_parity_torch.py.
"""

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import inception_jax as ij
from inception_jax import factory, pretrained, preprocessing, weights

TAGS = {
    'inception_v1_bn.tv_in1k', 'inception_v3.tv_in1k', 'inception_v3.tf_in1k',
    'inception_v3.tf_adv_in1k', 'inception_v3.gluon_in1k', 'inception_v3.keras',
    'inception_v4.tf_in1k', 'inception_resnet_v2.tf_in1k',
    'inception_resnet_v2.tf_ens_adv_in1k', 'inception_resnet_v2.keras',
    'inception_v1_bn.slim_in1k', 'inception_v2.slim_in1k', 'inception_v3.slim_in1k',
    'inception_v4.slim_in1k', 'inception_resnet_v2.slim_in1k', 'inception_v3.slim_adv_in1k',
    'inception_v3.slim_ens3_adv_in1k', 'inception_v3.slim_ens4_adv_in1k',
    'inception_resnet_v2.slim_adv_in1k', 'inception_resnet_v2.slim_ens_adv_in1k',
    'inception_resnet_v1.vggface2', 'inception_resnet_v1.casia_webface',
    'inception_v3_fid.tf_2015_12_05',
}
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
MANIFEST = os.path.join(os.path.dirname(__file__), '..', 'third_party_weights',
                        'manifest.json')


def test_list_pretrained():
  assert set(ij.list_pretrained()) == TAGS
  assert ij.list_pretrained() == sorted(TAGS)
  assert ij.list_pretrained('inception_v3.*') == sorted(t for t in TAGS
                                                       if t.startswith('inception_v3.'))


def test_every_tag_names_a_registered_architecture():
  for name in ij.list_pretrained():
    cfg = ij.get_pretrained_cfg(name)
    assert cfg.arch in ij.list_models(), name
    assert cfg.name == name


def test_unknown_tag_lists_valid_ones():
  with pytest.raises(ValueError, match='inception_v3.tf_in1k') as e:
    ij.get_pretrained_cfg('inception_v3.tf_in1')
  for name in TAGS:
    assert name in str(e.value)


def test_cfg_facts_from_the_sources():
  # timm default_cfgs / torchvision weight metadata / keras applications.
  g = ij.get_pretrained_cfg
  assert g('inception_resnet_v2.tf_in1k').crop_pct == 0.8975
  assert g('inception_v3.gluon_in1k').mean == (0.485, 0.456, 0.406)
  assert g('inception_v3.tv_in1k').has_aux
  assert not g('inception_v3.tf_in1k').has_aux
  assert round(g('inception_v3.tv_in1k').input_size / g('inception_v3.tv_in1k').crop_pct) \
      == 342
  assert g('inception_v1_bn.tv_in1k').input_size == 224
  assert dict(g('inception_v1_bn.tv_in1k').options)['padding'] == 'symmetric'
  assert dict(g('inception_v3.tf_in1k').options)['count_include_pad'] is True
  assert dict(g('inception_v4.tf_in1k').options)['count_include_pad'] is False
  assert dict(g('inception_v3.keras').options)['bn_scale'] is False
  for name in TAGS:
    assert dict(g(name).options)['bn_eps'] == 1e-3
  # TF-slim: no gamma, TF padding, 1001 outputs with a background class; slim's
  # eval preprocessing (central crop 87.5%, bilinear, [-1, 1]); 224 for v1 / v2.
  for name in (t for t in TAGS if '.slim_' in t):
    cfg = g(name)
    assert cfg.source == 'slim' and cfg.background, name
    assert dict(cfg.options) == dict(bn_eps=1e-3, bn_scale=False, count_include_pad=False,
                                     padding='tf')
    assert (cfg.num_classes, cfg.label_offset) == (1000, 0)  # the default conversion
    assert (cfg.crop_pct, cfg.interpolation, cfg.mean, cfg.std) == (
        0.875, 'bilinear', (0.5,) * 3, (0.5,) * 3)
    assert cfg.input_size == (224 if cfg.arch in ('inception_v1_bn', 'inception_v2')
                              else 299)
    assert cfg.url == 'https://download.tensorflow.org/models/' + cfg.file_name
    assert cfg.file_hash is None  # none is published
  # TF-slim README; adversarial: 100 - clean error of arXiv 1705.07204 Table 4.
  assert (g('inception_v2.slim_in1k').top1, g('inception_v2.slim_in1k').top5) == (73.9, 91.8)
  assert (g('inception_v3.slim_ens3_adv_in1k').top1,
          g('inception_v3.slim_ens3_adv_in1k').top5) == (76.4, 92.4)
  # FaceNet: 160x160, (pixel - 127.5) / 128, 512-d embedding, dropout 0.6.
  for name, classes in (('inception_resnet_v1.vggface2', 8631),
                        ('inception_resnet_v1.casia_webface', 10575)):
    cfg = g(name)
    assert (cfg.num_classes, cfg.input_size, cfg.crop_pct) == (classes, 160, 1.0)
    opts = dict(cfg.options)
    assert (opts['embedding_size'], opts['dropout_rate'], opts['bn_scale']) == (512, 0.6, True)
    pixels = np.array([0.0, 127.5, 255.0])
    np.testing.assert_allclose((pixels / 255 - cfg.mean[0]) / cfg.std[0],
                               (pixels - 127.5) / 128, atol=1e-12)


def test_manifest_agrees_with_cfgs():
  with open(MANIFEST, encoding='utf-8') as f:
    entries = {e['name']: e for e in json.load(f)['weights']}
  assert set(entries) == TAGS
  for name, e in entries.items():
    cfg = ij.get_pretrained_cfg(name)
    assert (e['arch'], e['tag'], e['source']) == (cfg.arch, cfg.tag, cfg.source)
    assert (e['url'], e['file_name']) == (cfg.url, cfg.file_name)
    assert os.path.basename(e['url']) == e['file_name']
    assert (e['file_hash'], e['hash_algo']) == (cfg.file_hash, cfg.hash_algo)
    assert (e.get('url_notop'), e.get('file_hash_notop')) == (cfg.url_notop,
                                                              cfg.file_hash_notop)
    assert (e['num_classes'], e['label_offset'], e['has_aux']) == (
        cfg.num_classes, cfg.label_offset, cfg.has_aux)
    assert (e.get('background', False), e.get('reported')) == (cfg.background, cfg.reported)
    assert (e['input_size'], e['interpolation']) == (cfg.input_size, cfg.interpolation)
    assert e['crop_pct'] == pytest.approx(cfg.crop_pct, abs=1e-6)
    assert tuple(e['mean']) == cfg.mean and tuple(e['std']) == cfg.std
    assert e['options'] == dict(cfg.options)
    assert (e['reported_top1'], e['reported_top5']) == (cfg.top1, cfg.top5)
    assert e['license'] == cfg.license
    assert e['converted_file'] == cfg.converted_file
    if cfg.source == 'torchvision':
      # torchvision file names carry the first 8 hex digits of the sha256.
      assert e['file_name'].split('-')[-1].split('.')[0] == e['file_hash']


def test_transform_input_is_mean_std_one_half():
  # torchvision googlenet/inception _transform_input, per channel c:
  #   x_c' = x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5
  # applied to x = (img - mean) / std gives (img - 0.5) / 0.5.
  mean, std = np.array(pretrained.IMAGENET_MEAN), np.array(pretrained.IMAGENET_STD)
  img = np.random.default_rng(0).random((4, 5, 3))
  x = (img - mean) / std
  tv = x * (std / 0.5) + (mean - 0.5) / 0.5
  for name in ('inception_v1_bn.tv_in1k', 'inception_v3.tv_in1k'):
    cfg = ij.get_pretrained_cfg(name)
    ours = (img - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(ours, tv, atol=1e-12)


# ---------------------------------------------------------------------------------
# Loading converted files (synthetic arrays with the network's shapes).

def _random_arrays(name, **options):
  cfg = ij.get_pretrained_cfg(name)
  abstract = nnx.eval_shape(lambda: ij.create_model(cfg.arch, **dict(cfg.options),
                                                    **options))
  rng = np.random.default_rng(0)
  out = {}
  for k, v in weights.flat_state(abstract).items():
    a = rng.normal(0, 0.05, v.shape).astype(np.float32)
    out[k] = np.abs(a) + 0.5 if k.endswith('/var') else a
  return out


def _write(path, name, arrays):
  cfg = ij.get_pretrained_cfg(name)
  config = {**cfg.to_dict(), 'include_top': 'Logits/kernel' in arrays}
  weights.save(str(path), arrays, config)
  return str(path)


@pytest.fixture(scope='module')
def v3_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('v3')
  full = _random_arrays('inception_v3.tf_in1k')
  with_aux = _random_arrays('inception_v3.tv_in1k', aux_logits=True)
  notop = {k: v for k, v in full.items() if not k.startswith('Logits/')}
  return {
      'arrays': full, 'aux_arrays': with_aux,
      'full': _write(d / 'full.safetensors', 'inception_v3.tf_in1k', full),
      'aux': _write(d / 'aux.safetensors', 'inception_v3.tv_in1k', with_aux),
      'notop': _write(d / 'notop.safetensors', 'inception_v3.tf_in1k', notop),
  }


def test_load_is_exact_and_sets_tag_options(v3_files):
  m = ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'])
  got = weights.to_numpy(m)
  assert set(got) == set(v3_files['arrays'])
  for k, v in v3_files['arrays'].items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert m.config.count_include_pad is True
  assert m.pretrained_cfg.name == 'inception_v3.tf_in1k'
  assert m.deterministic  # eval mode
  # The dropout RNG stream is materialised and usable (train mode needs it).
  mask = m.dropout(np.ones((4, 64), np.float32), deterministic=False)
  assert 0 < float((np.asarray(mask) == 0).mean()) < 0.6  # rate 0.2
  assert m.dropout.rngs.key[...].dtype == jax.random.key(0).dtype


def test_arch_name_with_path_uses_the_file_tag(v3_files):
  m = ij.create_model('inception_v3', pretrained=v3_files['full'])
  assert m.pretrained_cfg.name == 'inception_v3.tf_in1k'


def test_new_num_classes_keeps_backbone_and_reinitialises_head(v3_files):
  m = ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'], num_classes=7,
                      rngs=nnx.Rngs(3))
  got = weights.to_numpy(m)
  assert got['Logits/kernel'].shape == (2048, 7)
  np.testing.assert_array_equal(got['Mixed_7c/Branch_3/Conv2d_0b_1x1/conv/kernel'],
                                v3_files['arrays']['Mixed_7c/Branch_3/Conv2d_0b_1x1/conv/kernel'])
  # LeCun-normal-like init: std about 1/sqrt(2048), not zeros and not file values.
  assert 0.5 / np.sqrt(2048) < got['Logits/kernel'].std() < 1.5 / np.sqrt(2048)


def test_include_top_false_with_full_and_notop_files(v3_files):
  for key in ('full', 'notop'):
    m = ij.create_model('inception_v3.tf_in1k', pretrained=v3_files[key],
                        include_top=False)
    got = weights.to_numpy(m)
    assert 'Logits/kernel' not in got
    assert len(got) == len(v3_files['arrays']) - 2


def test_notop_file_with_top_is_a_clear_error(v3_files):
  with pytest.raises(weights.WeightLoadError, match='include_top=False'):
    ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['notop'])


def test_aux_heads(v3_files):
  m = ij.create_model('inception_v3.tv_in1k', pretrained=v3_files['aux'], aux_logits=True)
  np.testing.assert_array_equal(np.asarray(m.AuxLogits.Logits.kernel[...]),
                                v3_files['aux_arrays']['AuxLogits/Logits/kernel'])
  # Without aux_logits the heads in the file are not loaded (and not an error).
  m = ij.create_model('inception_v3.tv_in1k', pretrained=v3_files['aux'])
  assert not any(k.startswith('AuxLogits') for k in weights.to_numpy(m))
  with pytest.raises(weights.WeightLoadError, match='no auxiliary classifier'):
    ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'], aux_logits=True)


def test_wrong_tag_or_arch_is_a_clear_error(v3_files, tmp_path):
  with pytest.raises(weights.WeightLoadError, match='inception_v3.tf_in1k, not '
                     'inception_v3.gluon_in1k'):
    ij.create_model('inception_v3.gluon_in1k', pretrained=v3_files['full'])
  # A file that claims another architecture.
  arrays, config = weights.load(v3_files['full'])
  config['arch'] = 'inception_v4'
  weights.save(str(tmp_path / 'v4.safetensors'), arrays, config)
  with pytest.raises(weights.WeightLoadError, match="not for architecture 'inception_v3'"):
    ij.create_model('inception_v3.tf_in1k', pretrained=str(tmp_path / 'v4.safetensors'))
  # Arrays of one tag's options loaded with another's (bn_scale differs).
  with pytest.raises(weights.WeightLoadError, match='unexpected'):
    ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'], bn_scale=False)


# ---------------------------------------------------------------------------------
# The one strict check (weights.check): loading, the converter and checkpoints.

def _abstract_v3(**options):
  return nnx.eval_shape(lambda: ij.create_model('inception_v3', **options))


def test_strict_check_names_missing_unexpected_and_misshaped_keys(v3_files):
  arrays = dict(v3_files['arrays'])
  del arrays['Mixed_6a/Branch_0/Conv2d_1a_1x1/conv/kernel']
  arrays['Mixed_9z/conv/kernel'] = np.zeros((1, 1, 8, 8), np.float32)
  arrays['Mixed_5b/Branch_0/Conv2d_0a_1x1/bn/mean'] = np.zeros(63, np.float32)
  with pytest.raises(weights.WeightLoadError) as e:
    weights.check(_abstract_v3(), arrays, source='f.safetensors')
  msg = str(e.value)
  assert msg.splitlines()[0] == 'f.safetensors does not fit inception_v3:'
  assert "missing (1): ['Mixed_6a/Branch_0/Conv2d_1a_1x1/conv/kernel']" in msg
  assert "unexpected (1): ['Mixed_9z/conv/kernel']" in msg
  assert ("shape mismatch (1): ['Mixed_5b/Branch_0/Conv2d_0a_1x1/bn/mean: (63,) given, "
          "(64,) expected']") in msg
  assert 'Likely cause: a file of another architecture or tag' in msg


def _without(arrays, prefix):
  return {k: v for k, v in arrays.items() if not k.startswith(prefix)}


@pytest.mark.parametrize('case,cause', [
    ('notop', 'the file has no classifier (a no-top file): pass include_top=False'),
    ('classes', "another number of classes: num_classes=None keeps the file's"),
    ('aux', 'the model has auxiliary heads the file lacks: drop aux_logits=True'),
    ('bn_scale', 'BatchNorm scale (gamma) differs'),
    ('arch', 'a file of another architecture or tag'),
])
def test_strict_check_states_the_likely_cause(v3_files, case, cause):
  full = v3_files['arrays']
  model, arrays = {
      'notop': (_abstract_v3(), _without(full, 'Logits/')),
      'classes': (_abstract_v3(num_classes=7), full),
      'aux': (_abstract_v3(aux_logits=True), full),
      'bn_scale': (_abstract_v3(bn_scale=False), full),
      'arch': (nnx.eval_shape(lambda: ij.create_model('inception_v4')), full),
  }[case]
  with pytest.raises(weights.WeightLoadError, match=re.escape(cause)):
    weights.check(model, arrays)


def test_converter_and_checkpoints_use_the_strict_check(v3_files):
  from third_party_weights import convert  # pylint: disable=g-import-not-at-top
  convert.check_against_model('inception_v3.tf_in1k', v3_files['arrays'])  # fits
  bad = _without(v3_files['arrays'], 'Mixed_7c/Branch_3/')
  with pytest.raises(weights.WeightLoadError,
                     match=r'converted for inception_v3.tf_in1k does not fit inception_v3:'
                           r'\n  missing \(5\)'):
    convert.check_against_model('inception_v3.tf_in1k', bad)
  # A train state against a checkpoint's stored shapes (checkpoint.py), partial read.
  with pytest.raises(weights.WeightLoadError, match=r'(?s)checkpoint 3 .*shape mismatch.*'
                     r'different architecture, num_classes'):
    weights.check({'params.a': (2,), 'params.b': (3,)}, {'params.a': (2,), 'params.b': (4,),
                                                         'opt_state.c': (1,)},
                  source='checkpoint 3 in d', allow_unexpected=True,
                  cause='a different architecture, num_classes')


def test_loading_initialises_only_what_the_file_lacks(v3_files):
  """Loading compiles no initialiser; a new classifier is the one draw."""
  names = []
  listener = lambda event, duration, **kw: (
      names.append(kw.get('fun_name')) if event == _COMPILE_EVENT else None)
  nnx.Rngs(0).params()  # the RNG stream's own programs, compiled once per process
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    m = ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'])
    assert names == []
    factory._draw_chunk.clear_cache()  # pylint: disable=protected-access  (order-independent)
    m11 = ij.create_model('inception_v3.tf_in1k', pretrained=v3_files['full'],
                          num_classes=11)  # a new classifier: the one draw program
    assert names == ['jit(_draw_chunk)']
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert m.Logits.kernel.shape == (2048, 1000) and m11.Logits.kernel.shape == (2048, 11)


def test_truncated_file_is_a_clear_error(v3_files, tmp_path):
  data = open(v3_files['full'], 'rb').read()
  bad = tmp_path / 'trunc.safetensors'
  bad.write_bytes(data[:len(data) // 3])
  with pytest.raises(weights.WeightLoadError, match='truncated or corrupt'):
    ij.create_model('inception_v3.tf_in1k', pretrained=str(bad))


def test_missing_cached_file_gives_the_command(tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match='third_party_weights.convert --tag inception_v3.tf_in1k'):
    ij.create_model('inception_v3.tf_in1k')


def test_cache_dir_finds_converted_file(v3_files, tmp_path, monkeypatch):
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path))
  cfg = ij.get_pretrained_cfg('inception_v3.tf_in1k')
  os.symlink(v3_files['full'], tmp_path / cfg.converted_file)
  m = ij.create_model('inception_v3.tf_in1k', include_top=False)
  assert m.pretrained_cfg is cfg


# ---------------------------------------------------------------------------------
# Preprocessing.

def test_resize_sizes_match_the_publishers():
  g = ij.get_pretrained_cfg
  assert preprocessing.resize_size(g('inception_v3.tv_in1k')) == 342  # torchvision
  assert preprocessing.resize_size(g('inception_v1_bn.tv_in1k')) == 256  # torchvision
  assert preprocessing.resize_size(g('inception_v3.tf_in1k')) == 341  # timm: 299/0.875
  assert preprocessing.resize_size(g('inception_resnet_v2.tf_in1k')) == 333  # 299/0.8975


def test_eval_transform_shape_crop_and_normalisation():
  cfg = ij.get_pretrained_cfg('inception_v3.gluon_in1k')
  # Left half black, right half white, 600x400 (wide): the crop is centred.
  img = np.zeros((400, 600, 3), np.uint8)
  img[:, 300:] = 255
  x = preprocessing.eval_transform(img, cfg)
  assert x.shape == (299, 299, 3) and x.dtype == np.float32
  mean, std = np.array(cfg.mean), np.array(cfg.std)
  np.testing.assert_allclose(x[150, 0], (0 - mean) / std, atol=1e-6)
  np.testing.assert_allclose(x[150, -1], (1 - mean) / std, atol=1e-6)
  # Constant grey 128 with Inception mean/std: 128 / 127.5 - 1.
  cfg = ij.get_pretrained_cfg('inception_v3.tf_in1k')
  grey = Image.new('RGB', (320, 500), (128, 128, 128))
  np.testing.assert_allclose(preprocessing.eval_transform(grey, cfg),
                             128 / 255 / 0.5 - 1, atol=1e-6)


def test_background_class_file_classifies_with_offset(v3_files, tmp_path):
  """A 1001-class file (TF-slim background kept): default width, offset labels."""
  # TF-slim BN has no gamma.
  arrays = {k: v for k, v in v3_files['arrays'].items() if not k.endswith('/bn/scale')}
  arrays['Logits/kernel'] = np.zeros((2048, 1001), np.float32)
  bias = np.zeros(1001, np.float32)
  bias[208], bias[0] = 10.0, 9.0  # output 208 = ImageNet 207 (golden retriever)
  arrays['Logits/bias'] = bias
  cfg = ij.get_pretrained_cfg('inception_v3.slim_in1k')
  path = str(tmp_path / 'keep.safetensors')
  weights.save(path, arrays, {**cfg.to_dict(), 'num_classes': 1001, 'label_offset': 1,
                              'include_top': True})
  m = ij.create_model('inception_v3.slim_in1k', pretrained=path)
  assert m.num_classes == 1001  # the file's width: no re-initialised head
  assert (m.pretrained_cfg.num_classes, m.pretrained_cfg.label_offset) == (1001, 1)
  small = dataclasses.replace(m.pretrained_cfg, input_size=75)
  (top,) = preprocessing.classify(m, small, [np.full((80, 80, 3), 100, np.uint8)], top_k=2)
  assert [n for n, _ in top] == ['golden retriever', 'background']
  # An explicit width still re-initialises the classifier.
  m = ij.create_model('inception_v3.slim_in1k', pretrained=path, num_classes=1000)
  assert m.num_classes == 1000


def test_imagenet_classes():
  names = preprocessing.imagenet_classes()
  assert len(names) == 1000
  assert (names[0], names[207], names[999]) == ('tench', 'golden retriever', 'toilet tissue')


def test_classify_returns_class_names(v3_files, tmp_path):
  arrays = dict(v3_files['arrays'])
  arrays['Logits/kernel'] = np.zeros_like(arrays['Logits/kernel'])
  bias = np.zeros(1000, np.float32)
  bias[207], bias[3] = 10.0, 9.0  # golden retriever, then tiger shark
  arrays['Logits/bias'] = bias
  path = _write(tmp_path / 'hand.safetensors', 'inception_v3.tf_in1k', arrays)
  m = ij.create_model('inception_v3.tf_in1k', pretrained=path)
  cfg = dataclasses.replace(m.pretrained_cfg, input_size=75)  # small and fast
  img = np.full((90, 120, 3), 100, np.uint8)
  (top,) = preprocessing.classify(m, cfg, [img], top_k=3)
  assert [n for n, _ in top[:2]] == ['golden retriever', 'tiger shark']
  p = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
  assert top[0][1] == pytest.approx(p[207], rel=1e-5)
  assert jax.numpy.isfinite(top[2][1])
