"""Pretrained weights: one ``PretrainedCfg`` per ``arch.tag``, and reading their files.

A tag names one published set of ImageNet weights (``inception_v3.tf_in1k``). Its
cfg holds the facts needed to use them: the network options that make this
implementation compute what the source library computes (padding rule,
``count_include_pad``, BN scale and epsilon), the label space, the evaluation
preprocessing and where the upstream file comes from. The weights themselves are
converted once, offline, by ``python -m third_party_weights.convert`` into the
project format (``inception_jax.weights``); this module only reads converted files
and says what to build from them (``load_weights``; ``factory.create_model``
builds), it never downloads, and never imports torch or tensorflow.

torchvision's ``transform_input``: torchvision GoogLeNet and Inception-v3 weights
expect ImageNet mean/std-normalised input and internally map it back to
``(x - 0.5) / 0.5`` per channel before the first conv
(``x * std_c / 0.5 + (mean_c - 0.5) / 0.5``). The two steps compose to
normalising with mean = std = 0.5, so the ``tv_in1k`` cfgs say exactly that and the
network has no input transform: feed ``preprocessing.eval_transform`` output.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from typing import Any

from inception_jax import registry
from inception_jax import weights as weights_lib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # x / 127.5 - 1: TF-slim, Keras 'tf' mode
INCEPTION_STD = (0.5, 0.5, 0.5)

# Options that make a port exact, per source library (each library's Inception
# source): TF-slim / Keras checkpoints have no BN scale; torch ports carry gamma.
_TORCH_V3 = (('bn_eps', 1e-3), ('bn_scale', True), ('count_include_pad', True),
             ('padding', 'tf'))  # every strided op is VALID: tf == symmetric here
_TIMM_TF = (('bn_eps', 1e-3), ('bn_scale', True), ('count_include_pad', False),
            ('padding', 'tf'))
_KERAS = (('bn_eps', 1e-3), ('bn_scale', False), ('count_include_pad', False),
          ('padding', 'tf'))
_GOOGLENET = (('bn_eps', 1e-3), ('bn_scale', True), ('count_include_pad', False),
              ('padding', 'symmetric'))
# The FID Inception port (pytorch-fid): BN with gamma, TF average pools.
_FID = (('bn_eps', 1e-3), ('bn_scale', True), ('count_include_pad', False),
        ('padding', 'tf'))
# facenet-pytorch: BN with gamma (set to 1 when ported from TF), stride-2 layers VALID
# (so 'tf' == symmetric padding), FaceNet's head: dropout 0.6, 512-d bottleneck.
_FACENET = (('bn_eps', 1e-3), ('bn_scale', True), ('count_include_pad', False),
            ('dropout_rate', 0.6), ('embedding_size', 512), ('padding', 'tf'))
# FaceNet's fixed image standardisation (pixel - 127.5) / 128 as mean/std of [0, 1].
FACENET_MEAN = (0.5, 0.5, 0.5)
FACENET_STD = (128 / 255,) * 3
# TF-slim checkpoints: BN without gamma, TF SAME padding (v1/v2 pad stride-2 layers
# asymmetrically), average pools excluding padding.
_SLIM = (('bn_eps', 1e-3), ('bn_scale', False), ('count_include_pad', False),
         ('padding', 'tf'))


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
  """Facts about one set of published weights.

  Attributes:
    arch: registered architecture (``inception_v3``).
    tag: weight tag (``tf_in1k``); the full name is ``f'{arch}.{tag}'``.
    source: library the converter reads ('torchvision', 'timm', 'keras').
    options: network options that reproduce the source numerics, as (name,
      value) pairs: ``padding``, ``count_include_pad``, ``bn_scale``, ``bn_eps``.
    num_classes: classifier width of the file.
    label_offset: 1 when class 0 of the file is TF-slim's "background" and the
      ImageNet classes start at 1 (1001-class heads); 0 otherwise.
    background: the published file has TF-slim's background class at index 0
      (1001 outputs). The converter drops it (``num_classes`` 1000,
      ``label_offset`` 0) unless asked to keep it (``--keep_background``: 1001
      classes, ``label_offset`` 1, recorded in the converted file).
    has_aux: the file carries trained auxiliary classifier weights.
    input_size: training/eval resolution (square).
    crop_pct: fraction of the resized image kept by the centre crop.
    interpolation: 'bilinear' or 'bicubic' (resize filter).
    mean: per-channel mean of images scaled to [0, 1].
    std: per-channel standard deviation.
    url: upstream file.
    file_name: upstream file name.
    file_hash: published hash of the upstream file (hex, possibly a prefix) or
      None when the publisher gives none.
    hash_algo: 'sha256' or 'md5' (what ``file_hash`` is).
    url_notop: upstream file without the classifier (Keras), if any.
    file_hash_notop: its published hash.
    top1: top-1 accuracy (%) on ImageNet-1k val reported by the publisher (or
      the paper that released the weights); None where none is reported (FID
      network, FaceNet).
    top5: top-5 accuracy (%), or None.
    reported: another figure the publisher gives (FaceNet: LFW accuracy).
    license: licence of the weights.
    origin: provenance in one line.
  """
  arch: str
  tag: str
  source: str
  options: tuple[tuple[str, Any], ...]
  url: str
  file_name: str
  top1: float | None
  top5: float | None
  license: str
  origin: str
  num_classes: int = 1000
  label_offset: int = 0
  background: bool = False
  has_aux: bool = False
  input_size: int = 299
  crop_pct: float = 0.875
  interpolation: str = 'bicubic'
  mean: tuple[float, float, float] = INCEPTION_MEAN
  std: tuple[float, float, float] = INCEPTION_STD
  file_hash: str | None = None
  hash_algo: str = 'sha256'
  url_notop: str | None = None
  file_hash_notop: str | None = None
  reported: str | None = None

  @property
  def name(self) -> str:
    return f'{self.arch}.{self.tag}'

  @property
  def converted_file(self) -> str:
    """File name of the converted weights (in the cache directory)."""
    return f'{self.name}.safetensors'

  @property
  def converted_file_notop(self) -> str:
    return f'{self.name}.notop.safetensors'

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['options'] = dict(self.options)
    d['mean'], d['std'] = list(self.mean), list(self.std)
    return d


_HF = 'https://huggingface.co/timm/{}/resolve/main/model.safetensors'
_TF_MODELS = 'https://download.tensorflow.org/models/'
_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'

_CFGS = (
    PretrainedCfg(
        arch='inception_v1_bn', tag='tv_in1k', source='torchvision', options=_GOOGLENET,
        url='https://download.pytorch.org/models/googlenet-1378be20.pth',
        file_name='googlenet-1378be20.pth', file_hash='1378be20',
        input_size=224, crop_pct=0.875, interpolation='bilinear',  # resize 256, crop 224
        top1=69.778, top5=89.530, license='BSD-3-Clause (torchvision)',
        origin='torchvision GoogLeNet_Weights.IMAGENET1K_V1, a port of the TF-slim BN '
               'Inception-v1 checkpoint; its aux heads are untrained and not shipped'),
    PretrainedCfg(
        arch='inception_v3', tag='tv_in1k', source='torchvision', options=_TORCH_V3,
        url='https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth',
        file_name='inception_v3_google-0cc3c7bd.pth', file_hash='0cc3c7bd',
        has_aux=True, crop_pct=299 / 342, interpolation='bilinear',  # resize 342, crop 299
        top1=77.294, top5=93.450, license='BSD-3-Clause (torchvision)',
        origin='torchvision Inception_V3_Weights.IMAGENET1K_V1 ("ported from '
               'TensorFlow", not the slim 2016_08_28 checkpoint), with trained AuxLogits'),
    PretrainedCfg(
        arch='inception_v3', tag='tf_in1k', source='timm', options=_TORCH_V3,
        url=_HF.format('inception_v3.tf_in1k'), file_name='model.safetensors',
        top1=77.866, top5=93.644, license='Apache-2.0',
        origin='timm port of TF-slim inception_v3_2016_08_28 (1001 -> 1000 classes)'),
    PretrainedCfg(
        arch='inception_v3', tag='tf_adv_in1k', source='timm', options=_TORCH_V3,
        url=_HF.format('inception_v3.tf_adv_in1k'), file_name='model.safetensors',
        top1=77.598, top5=93.726, license='Apache-2.0',
        origin='timm port of TF adv_inception_v3_2017_08_18 (adversarially trained)'),
    PretrainedCfg(
        arch='inception_v3', tag='gluon_in1k', source='timm', options=_TORCH_V3,
        url=_HF.format('inception_v3.gluon_in1k'), file_name='model.safetensors',
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        top1=78.806, top5=94.372, license='Apache-2.0',
        origin='timm port of the GluonCV inception_v3 ImageNet model'),
    PretrainedCfg(
        arch='inception_v3', tag='keras', source='keras', options=_KERAS,
        url=_KERAS_URL + 'inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5',
        file_name='inception_v3_weights_tf_dim_ordering_tf_kernels.h5',
        file_hash='9a0d58056eeedaa3f26cb7ebd46da564', hash_algo='md5',
        url_notop=(_KERAS_URL + 'inception_v3/'
                   'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'),
        file_hash_notop='bcbd6486424b2319ff4ef7d526e38f63',
        interpolation='bilinear',
        top1=77.898, top5=93.720, license='Apache-2.0 (keras-applications)',
        origin='keras.applications.InceptionV3 weights (fchollet/deep-learning-models '
               'release v0.5), a conversion of a TF Inception-v3 checkpoint'),
    PretrainedCfg(
        arch='inception_v4', tag='tf_in1k', source='timm', options=_TIMM_TF,
        url=_HF.format('inception_v4.tf_in1k'), file_name='model.safetensors',
        top1=80.144, top5=94.982, license='Apache-2.0',
        origin='timm (Cadene) port of TF-slim inception_v4_2016_09_09'),
    PretrainedCfg(
        arch='inception_resnet_v2', tag='tf_in1k', source='timm', options=_TIMM_TF,
        url=_HF.format('inception_resnet_v2.tf_in1k'), file_name='model.safetensors',
        crop_pct=0.8975,
        top1=80.434, top5=95.312, license='Apache-2.0',
        origin='timm port of TF-slim inception_resnet_v2_2016_08_30'),
    PretrainedCfg(
        arch='inception_resnet_v2', tag='tf_ens_adv_in1k', source='timm',
        options=_TIMM_TF,
        url=_HF.format('inception_resnet_v2.tf_ens_adv_in1k'),
        file_name='model.safetensors', crop_pct=0.8975,
        top1=79.998, top5=94.940, license='Apache-2.0',
        origin='timm port of TF ens_adv_inception_resnet_v2_2017_08_18 '
               '(ensemble adversarial training, arXiv 1705.07204)'),
    PretrainedCfg(
        arch='inception_resnet_v2', tag='keras', source='keras', options=_KERAS,
        url=(_KERAS_URL + 'inception_resnet_v2/'
             'inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5'),
        file_name='inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5',
        file_hash='e693bd0210a403b3192acc6073ad2e96', hash_algo='md5',
        url_notop=(_KERAS_URL + 'inception_resnet_v2/'
                   'inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5'),
        file_hash_notop='d19885ff4a710c122648d3b5c3b684e4',
        interpolation='bilinear',
        top1=80.256, top5=95.252, license='Apache-2.0 (keras-applications)',
        origin='keras.applications.InceptionResNetV2 weights (release v0.7), '
               'converted from TF-slim inception_resnet_v2_2016_08_30'),
    PretrainedCfg(
        arch='inception_v3_fid', tag='tf_2015_12_05', source='pytorch_fid',
        options=_FID,
        url=('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
             'pt_inception-2015-12-05-6726825d.pth'),
        file_name='pt_inception-2015-12-05-6726825d.pth', file_hash='6726825d',
        num_classes=1008, crop_pct=1.0, interpolation='bilinear',
        top1=None, top5=None, license='Apache-2.0 (tensorflow/models)',
        origin='the FID network: TensorFlow inception-2015-12-05 graph '
               '(classify_image_graph_def.pb) as ported by pytorch-fid; torch-fidelity '
               'publishes the same weights as weights-inception-2015-12-05-6726825d.pth. '
               '1008 classes (the graph\'s softmax); input scaling per FID mode '
               '(inception_jax.fid)'),
)



def _slim(arch, tag, tarball, top1, top5, origin, *, input_size=299, has_aux=True):
  """A TF-slim checkpoint: 1001 classes, slim's eval preprocessing.

  TF-slim ``inception_preprocessing.preprocess_for_eval``: central crop of 87.5%,
  bilinear resize, ``x / 127.5 - 1``. No hash is published for these tarballs.
  """
  return PretrainedCfg(
      arch=arch, tag=tag, source='slim', options=_SLIM,
      url=_TF_MODELS + tarball, file_name=tarball, background=True,
      input_size=input_size, crop_pct=0.875, interpolation='bilinear',
      has_aux=has_aux, top1=top1, top5=top5, license='Apache-2.0', origin=origin)


# TF-slim model zoo (tensorflow/models research/slim README: accuracy on the
# ImageNet validation set, single central crop) and the adversarially trained
# Inceptions (research/adv_imagenet_models; accuracy = 100 - clean error of
# Tramer et al., arXiv 1705.07204, Table 4).
_SLIM_CFGS = (
    _slim('inception_v1_bn', 'slim_in1k', 'inception_v1_2016_08_28.tar.gz', 69.8, 89.6,
          'TF-slim inception_v1 checkpoint (BN GoogLeNet)', input_size=224,
          has_aux=False),
    _slim('inception_v2', 'slim_in1k', 'inception_v2_2016_08_28.tar.gz', 73.9, 91.8,
          'TF-slim inception_v2 checkpoint (BN-Inception)', input_size=224,
          has_aux=False),
    _slim('inception_v3', 'slim_in1k', 'inception_v3_2016_08_28.tar.gz', 78.0, 93.9,
          'TF-slim inception_v3 checkpoint, with AuxLogits'),
    _slim('inception_v4', 'slim_in1k', 'inception_v4_2016_09_09.tar.gz', 80.2, 95.2,
          'TF-slim inception_v4 checkpoint, with AuxLogits'),
    _slim('inception_resnet_v2', 'slim_in1k', 'inception_resnet_v2_2016_08_30.tar.gz',
          80.4, 95.3, 'TF-slim inception_resnet_v2 checkpoint, with AuxLogits'),
    _slim('inception_v3', 'slim_adv_in1k', 'adv_inception_v3_2017_08_18.tar.gz',
          78.0, 93.9, 'adversarially trained Inception-v3 (Step-L.L., Kurakin et al. '
          'arXiv 1611.01236; "v3adv")', has_aux=False),
    _slim('inception_v3', 'slim_ens3_adv_in1k', 'ens3_adv_inception_v3_2017_08_18.tar.gz',
          76.4, 92.4, 'ensemble adversarial training, Step-L.L. on 3 models (Tramer et '
          'al. arXiv 1705.07204; "v3adv-ens3")', has_aux=False),
    _slim('inception_v3', 'slim_ens4_adv_in1k', 'ens4_adv_inception_v3_2017_08_18.tar.gz',
          75.8, 92.2, 'ensemble adversarial training, Step-L.L. on 4 models (Tramer et '
          'al. arXiv 1705.07204; "v3adv-ens4")', has_aux=False),
    _slim('inception_resnet_v2', 'slim_adv_in1k',
          'adv_inception_resnet_v2_2017_12_18.tar.gz', 80.2, 95.1,
          'adversarially trained Inception-ResNet-v2 (Step-L.L.; "IRv2adv" of arXiv '
          '1705.07204)', has_aux=False),
    _slim('inception_resnet_v2', 'slim_ens_adv_in1k',
          'ens_adv_inception_resnet_v2_2017_08_18.tar.gz', 79.8, 94.9,
          'ensemble adversarial training, Step-L.L. on 3 models (arXiv 1705.07204; '
          '"IRv2adv-ens")', has_aux=False),
)
_CFGS += _SLIM_CFGS

_FACENET_URL = 'https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/'


def _facenet(tag, file_name, classes, lfw, origin):
  """FaceNet Inception-ResNet-v1 as published by facenet-pytorch (no hash published).

  Input: aligned face crops (facenet-pytorch's MTCNN), 160x160, standardised as
  ``(pixel - 127.5) / 128``; the crop is the whole image (``crop_pct`` 1).
  """
  return PretrainedCfg(
      arch='inception_resnet_v1', tag=tag, source='facenet', options=_FACENET,
      url=_FACENET_URL + file_name, file_name=file_name, num_classes=classes,
      input_size=160, crop_pct=1.0, interpolation='bilinear', mean=FACENET_MEAN,
      std=FACENET_STD, top1=None, top5=None, reported=f'LFW accuracy {lfw}',
      license='MIT (davidsandberg/facenet, facenet-pytorch)', origin=origin)


_CFGS += (
    _facenet('vggface2', '20180402-114759-vggface2.pt', 8631, 0.9965,
             'FaceNet 20180402-114759 (David Sandberg), trained on VGGFace2, ported by '
             'facenet-pytorch; 512-d embedding, 8631-identity classifier'),
    _facenet('casia_webface', '20180408-102900-casia-webface.pt', 10575, 0.9905,
             'FaceNet 20180408-102900 (David Sandberg), trained on CASIA-WebFace, ported '
             'by facenet-pytorch; 512-d embedding, 10575-identity classifier'),
)

_BY_NAME = {c.name: c for c in _CFGS}

def list_pretrained(pattern: str | None = None) -> list[str]:
  """Names ``arch.tag`` of all pretrained weights, sorted; ``pattern`` is fnmatch."""
  return sorted(n for n in _BY_NAME if pattern is None or fnmatch.fnmatch(n, pattern))


def get_pretrained_cfg(name: str) -> PretrainedCfg:
  """The cfg of ``arch.tag``; unknown names raise a ValueError listing valid ones."""
  if name not in _BY_NAME:
    close = difflib.get_close_matches(name, list(_BY_NAME), n=3)
    hint = f' Did you mean {close}?' if close else ''
    raise ValueError(f'unknown pretrained weights {name!r}.{hint} Valid names: '
                     f'{", ".join(list_pretrained())}')
  return _BY_NAME[name]


def cache_dir() -> str:
  """Where converted weights live: ``$INCEPTION_JAX_CACHE`` or ~/.cache/inception_jax."""
  return os.environ.get('INCEPTION_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'inception_jax')


def _resolve(name: str, path: str | None, include_top: bool = True
             ) -> tuple[PretrainedCfg, str, dict, dict]:
  """(cfg, path, arrays, file config) for a name and an optional file path.

  Without a path the converted file is looked up in ``cache_dir()``; for
  ``include_top=False`` a no-top file (``--notop``) serves when the full one is absent.
  """
  arch, _, tag = name.partition('.')
  registry.get_arch(arch)  # unknown architectures list the valid ones
  if path is None:
    if not tag:
      raise ValueError(f'{name!r} names no weights: pass a tag (e.g. '
                       f'{list_pretrained(arch + ".*")[:1] or list_pretrained()[:1]}) '
                       'or pretrained=PATH')
    cfg = get_pretrained_cfg(name)
    path = os.path.join(cache_dir(), cfg.converted_file)
    notop = os.path.join(cache_dir(), cfg.converted_file_notop)
    if not include_top and not os.path.exists(path) and os.path.exists(notop):
      path = notop
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'no converted weights for {name} at {path}. Convert them once with '
          f'`python -m third_party_weights.convert --tag {name}` (downloads '
          f'{cfg.url}), or pass pretrained=PATH to a converted file.')
  arrays, config = weights_lib.load(path)
  file_name = f"{config.get('arch')}.{config.get('tag')}"
  if config.get('arch') != arch:
    raise weights_lib.WeightLoadError(
        f'{path} holds weights for {file_name}, not for architecture {arch!r}; use '
        f"create_model('{file_name}', pretrained=...) or convert the weights of {arch}")
  if tag and config.get('tag') != tag:
    raise weights_lib.WeightLoadError(
        f'{path} holds weights for {file_name}, not {name}; ask for '
        f"'{file_name}' or convert {name} with `python -m third_party_weights.convert "
        f'--tag {name}`')
  cfg = get_pretrained_cfg(file_name)
  return cfg, path, arrays, config


def load_weights(name: str, *, path: str | None = None, num_classes: int | None = None,
                 **options: Any) -> tuple[PretrainedCfg, weights_lib.Loaded]:
  """Reads the converted weights of a tag and fits them to the requested options.

  Args:
    name: ``arch.tag`` (``inception_v3.tf_in1k``) or ``arch`` with ``path``.
    path: converted weight file; default: the tag's file in ``cache_dir()``.
    num_classes: classifier width (None: the file's: 1000, or 1001 for a TF-slim file
      converted with its background class). A value different from the file's
      keeps the backbone and leaves the classifier(s) to be initialised.
    **options: model options; the tag's numerics options are the defaults.
      ``include_top=False`` loads a no-top file or a full file without its
      classifier; ``aux_logits=True`` loads the auxiliary heads (an error when the
      file has none).

  Returns:
    The file's cfg (its class count and label offset) and what to build: the
    architecture, its options, the arrays and the keys the file does not provide.

  Raises:
    WeightLoadError: the file is for another architecture or tag, is corrupt, or
      does not fit the requested options.
    FileNotFoundError: no converted file (the message gives the command).
  """
  cfg, path, arrays, config = _resolve(name, path, options.get('include_top', True))
  opts = {**dict(cfg.options), **options}
  include_top = opts.get('include_top', True)
  file_classes = int(config.get('num_classes', cfg.num_classes))
  file_offset = int(config.get('label_offset', cfg.label_offset))
  if (file_classes, file_offset) != (cfg.num_classes, cfg.label_offset):
    # e.g. a TF-slim file converted with --keep_background: 1001 classes, offset 1
    cfg = dataclasses.replace(cfg, num_classes=file_classes, label_offset=file_offset)
  if num_classes is None:
    num_classes = file_classes
  file_has_top = 'Logits/kernel' in arrays
  file_has_aux = any(k.startswith(weights_lib.AUX_PREFIXES) for k in arrays)

  if opts.get('aux_logits') and not file_has_aux:
    why = ('the published weights have no trained auxiliary heads' if not cfg.has_aux
           else 'the file was converted without them')
    raise weights_lib.WeightLoadError(
        f'aux_logits=True but {path} has no auxiliary classifier ({why}); drop '
        'aux_logits=True' + (' or use inception_v3.tv_in1k' if cfg.arch == 'inception_v3'
                             else ''))
  if include_top and not file_has_top and num_classes == file_classes:
    raise weights_lib.WeightLoadError(
        f'{path} has no classifier (a no-top file): pass include_top=False for '
        'features, or num_classes=N for a new randomly initialised classifier')

  skip = ()
  if not include_top or num_classes != file_classes:
    skip = weights_lib.CLASSIFIER_KEYS
  if not include_top:
    arrays = {k: v for k, v in arrays.items()
              if not k.startswith('Logits/') and not k.startswith(weights_lib.AUX_PREFIXES)}
  if not opts.get('aux_logits'):
    arrays = {k: v for k, v in arrays.items() if not k.startswith(weights_lib.AUX_PREFIXES)}
  return cfg, weights_lib.Loaded(cfg.arch, {**opts, 'num_classes': num_classes}, arrays,
                                 skip, path)
