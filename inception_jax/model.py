"""``Inception``: one NNX module that runs any architecture table of the family."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from inception_jax import kernels
from inception_jax import layers
from inception_jax import specs

Array = jax.Array

# Defaults for every architecture; an ArchSpec's ``defaults`` override them.
BASE_DEFAULTS = dict(
    dropout_rate=0.2,  # TF-slim dropout_keep_prob=0.8
    aux_logits=False,
    padding='tf',
    count_include_pad=False,
    batch_norm=True,
    bn_eps=1e-3,
    bn_momentum=0.99,
    bn_scale=True,
    conv_bias=None,
    scan_blocks=True,
    embedding_size=None,
    kernels='auto',  # 'xla' | 'cpu' | 'auto': see inception_jax/kernels.py
)

OPTIONS = ('num_classes', 'include_top', 'pooling', 'dtype', 'param_dtype',
           'in_channels') + tuple(BASE_DEFAULTS)


def _dtype_name(dtype: Any, what: str) -> str:
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    raise ValueError(f"{what} must be a dtype such as 'float32' or jnp.bfloat16, got "
                     f'{dtype!r}') from None


class _ModelConfigMethods:
  """Methods of ``ModelConfig`` (its fields are generated from ``OPTIONS``)."""

  @classmethod
  def for_arch(cls, spec: specs.ArchSpec, *, num_classes: int | None = None,
               include_top: bool = True, pooling: str | None = 'avg',
               dtype: Any = 'float32', param_dtype: Any = 'float32', in_channels: int = 3,
               **options: Any) -> 'ModelConfig':
    """The options ``spec`` is built with: defaults resolved, every option checked.

    Args:
      spec: the architecture table.
      num_classes: classifier width (None: 1000); recorded as None without a top.
      include_top, pooling, dtype, param_dtype, in_channels: as for ``create_model``.
      **options: ``BASE_DEFAULTS`` options; None (or absent) means the
        architecture's default (``spec.defaults``, else ``BASE_DEFAULTS``). ``arch``
        is accepted when it names ``spec``, so that ``to_dict()`` round-trips.

    Raises:
      ValueError: an unknown option or a value or combination that cannot be built.
    """
    arch = options.pop('arch', spec.name)
    if arch != spec.name:
      raise ValueError(f'a config of {arch} given for architecture {spec.name}')
    unknown = sorted(set(options) - set(BASE_DEFAULTS))
    if unknown:
      raise ValueError(f'{spec.name}: unknown option(s) {unknown}; valid options are '
                       f'{sorted(OPTIONS)}')
    opts = {**BASE_DEFAULTS, **spec.defaults}
    opts.update({k: v for k, v in options.items() if v is not None})
    if num_classes is None:
      num_classes = 1000
    if pooling not in ('avg', 'max', None):
      raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
    if include_top and pooling is None:
      raise ValueError("include_top=True needs pooling='avg' or 'max' (pooling=None "
                       'only returns the feature map, with include_top=False)')
    if include_top and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                        or num_classes < 1):
      raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    if opts['padding'] not in ('tf', 'symmetric'):
      raise ValueError(f"padding must be 'tf' or 'symmetric', got {opts['padding']!r}")
    kernels.check(opts['kernels'])
    if not 0.0 <= opts['dropout_rate'] < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {opts['dropout_rate']}")
    emb = opts['embedding_size']
    if emb is not None and (not isinstance(emb, int) or isinstance(emb, bool) or emb < 1):
      raise ValueError(f'embedding_size must be a positive int or None, got {emb!r}')
    if emb is not None and pooling is None:
      raise ValueError("embedding_size needs pooling='avg' or 'max' (the bottleneck "
                       'reads the pooled features)')
    if opts['aux_logits'] and not spec.aux_heads:
      raise ValueError(f'{spec.name} has no auxiliary classifier; drop aux_logits=True')
    if opts['aux_logits'] and not include_top:
      if options.get('aux_logits'):
        raise ValueError('aux_logits=True needs include_top=True')
      opts['aux_logits'] = False  # an architecture default (GoogLeNet); no head, no aux
    return cls(arch=spec.name, num_classes=num_classes if include_top else None,
               include_top=bool(include_top), pooling=pooling,
               dtype=_dtype_name(dtype, 'dtype'),
               param_dtype=_dtype_name(param_dtype, 'param_dtype'),
               in_channels=in_channels, **opts)

  def to_dict(self) -> dict[str, Any]:
    """The fields as a JSON-friendly dict (dtypes by name, e.g. 'float32')."""
    return dataclasses.asdict(self)


ModelConfig = dataclasses.make_dataclass(
    'ModelConfig',
    [('arch', str), ('num_classes', 'int | None'), ('include_top', bool),
     ('pooling', 'str | None'), ('dtype', str), ('param_dtype', str),
     ('in_channels', int)] + [(k, Any) for k in BASE_DEFAULTS],
    bases=(_ModelConfigMethods,), frozen=True)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = """The options a network was built with, resolved and checked (frozen).

``model.config``. Fields: ``arch``, ``num_classes`` (None without a top),
``include_top``, ``pooling``, ``dtype`` and ``param_dtype`` (names: 'float32'),
``in_channels``, and one field per ``BASE_DEFAULTS`` option, resolved with the
architecture's ``spec.defaults``. Build one with ``ModelConfig.for_arch(spec,
**options)``; equal options give equal configs, and ``create_model(**rest)`` of
``to_dict()`` (without ``arch``) rebuilds the same network.
"""


@struct.dataclass
class InceptionOutput:
  """What a network with auxiliary heads returns in train mode.

  Attributes:
    logits: main classifier logits ``[B, num_classes]``.
    aux_logits: auxiliary logits by head name (``AuxLogits``; GoogLeNet
      ``aux1`` on Mixed_4b and ``aux2`` on Mixed_4e), each ``[B, num_classes]``.
  """
  logits: Array
  aux_logits: dict[str, Array]


class Inception(nnx.Module):
  """An Inception network built from an ``ArchSpec`` table.

  Build it with ``inception_jax.create_model(name, ...)``. It is created in eval
  mode (running BN statistics, no dropout); call ``model.train()`` to train.

  * ``model(x)``: ``x`` is float ``[B, H, W, in_channels]`` (NHWC). Returns logits
    ``[B, num_classes]`` (float32); pooled features ``[B, C]`` when
    ``include_top=False`` and ``pooling`` is set; the last feature map when both are
    off. In train mode with ``aux_logits=True`` it returns an ``InceptionOutput``.
  * ``model.features(x)``: ordered dict of every endpoint, named by the
    checkpoint scopes (``Conv2d_1a_3x3`` ... ``Mixed_7c``); the last is the final
    feature map before pooling.
  * ``model.embed(x)``: L2-normalised embeddings for verification / retrieval.

  With ``embedding_size=D`` (FaceNet: 512) the pooled features go through dropout
  and a ``Bottleneck`` (linear without bias + BatchNorm) to D dimensions; the
  classifier (``include_top``) then reads that D-dimensional vector, and with
  ``include_top=False`` the model returns it L2-normalised (the face embedding).
  """

  def __init__(self, spec: specs.ArchSpec, *, rngs: nnx.Rngs, **options):
    config = ModelConfig.for_arch(spec, **options)
    self.config = config
    self.arch = spec.name
    self.default_size = spec.default_size
    self.num_classes = config.num_classes
    self.include_top = include_top = config.include_top
    self.pooling = config.pooling
    self.in_channels = in_channels = config.in_channels
    self.dtype = dtype = jnp.dtype(config.dtype)
    param_dtype = jnp.dtype(config.param_dtype)
    self.deterministic = True  # flipped by model.train() / model.eval()
    num = layers.Numerics(**{
        **{f.name: getattr(config, f.name) for f in dataclasses.fields(layers.Numerics)},
        'dtype': dtype, 'param_dtype': param_dtype})
    self.numerics = num
    self.min_input_size = spec.min_input_size(num.padding)
    self.min_input_size_aux = (spec.min_input_size(num.padding, aux=True)
                               if config.aux_logits else self.min_input_size)

    channels = spec.channels(in_channels)
    c = in_channels
    for layer in spec.layers:
      setattr(self, layer.name, layers.build_layer(layer, c, num, rngs=rngs))
      c = channels[layer.name]
    self.layer_names = tuple(layer.name for layer in spec.layers)
    self.num_features = c

    self.aux_names = ()
    num_classes, emb = config.num_classes, config.embedding_size
    if config.aux_logits:
      for head in spec.aux_heads:
        setattr(self, head.name, layers.AUX_HEADS[head.kind](
            head, channels[head.endpoint], num_classes, num, rngs=rngs))
      self.aux_names = tuple((h.name, h.endpoint) for h in spec.aux_heads)
    self.embedding_size = emb
    # FaceNet: pooled -> dropout -> Bottleneck (-> L2 norm | -> Logits).
    self.Bottleneck = layers.Bottleneck(c, emb, num, rngs=rngs) if emb else None
    self.dropout = (nnx.Dropout(config.dropout_rate, rngs=rngs)
                    if include_top or emb else None)
    if include_top:
      self.Logits = nnx.Linear(emb or c, num_classes, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs, **layers.init_args(layers.LINEAR))
    else:
      self.Logits = None
    self.eval()

  def _check_input(self, x: Array) -> None:
    if x.ndim != 4:
      raise ValueError(f'{self.arch} expects NHWC images [B, H, W, {self.in_channels}], '
                       f'got an array of shape {tuple(x.shape)}')
    if x.shape[-1] != self.in_channels:
      hint = (' (NCHW input? transpose to NHWC with x.transpose(0, 2, 3, 1))'
              if x.shape[1] == self.in_channels else '')
      raise ValueError(f'{self.arch} expects {self.in_channels} channels in the last '
                       f'axis, got shape {tuple(x.shape)}{hint}')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f'{self.arch} expects float images (e.g. scaled to [-1, 1]), got '
                      f'{x.dtype}; convert with the preprocessing of the weights '
                      '(inception_jax.preprocessing)')
    need = self.min_input_size if self.deterministic else self.min_input_size_aux
    h, w = x.shape[1:3]
    if h < need or w < need:
      what = ('with aux_logits=True in train mode'
              if need != self.min_input_size else '')
      raise ValueError(f'{self.arch} {what} needs inputs of at least {need}x{need}, got '
                       f'{h}x{w}; resize images to at least {need} (default '
                       f'{self.default_size})'.replace('  ', ' '))

  def features(self, x: Array) -> dict[str, Array]:
    """Every endpoint, in order, named by the checkpoint scope names.

    Args:
      x: float images ``[B, H, W, C]``.

    Returns:
      ``OrderedDict`` name -> activation; the last entry is the final feature map.
    """
    self._check_input(x)
    x = x.astype(self.dtype)
    out = collections.OrderedDict()
    for name in self.layer_names:
      x = getattr(self, name)(x)
      out[name] = x
    return out

  def embed(self, x: Array) -> Array:
    """L2-normalised embeddings ``[B, D]`` (float32), for verification or retrieval.

    With an embedding head (``embedding_size``, e.g. the FaceNet tags) D is its
    size: FaceNet's face embedding, compared by Euclidean distance (or, the same
    ranking, cosine similarity ``e1 @ e2``); two faces are the same person when the
    distance is below a threshold chosen on labelled pairs (FaceNet's LFW protocol).
    Without one, the globally pooled features (``pooling``, or average) normalised.

    Args:
      x: float images ``[B, H, W, C]`` preprocessed as the weights expect
        (FaceNet: ``(pixel - 127.5) / 128`` on aligned face crops, 160x160).
    """
    h = self.features(x)[self.layer_names[-1]]
    h = layers.global_pool(h, self.pooling or 'avg')
    if self.Bottleneck is not None:
      h = self.Bottleneck(self.dropout(h))
    return layers.l2_normalize(h)

  def __call__(self, x: Array) -> Array | InceptionOutput:
    """Logits (or features, see the class docstring) of a batch of NHWC images."""
    endpoints = self.features(x)
    x = endpoints[self.layer_names[-1]]
    if self.pooling is None:
      return x
    x = layers.global_pool(x, self.pooling)
    if self.Bottleneck is not None:
      x = self.Bottleneck(self.dropout(x))
      if not self.include_top:
        return layers.l2_normalize(x)
      logits = self.Logits(x).astype(jnp.float32)
    elif not self.include_top:
      return x
    else:
      logits = self.Logits(self.dropout(x)).astype(jnp.float32)
    if self.deterministic or not self.aux_names:
      return logits
    aux = {name: getattr(self, name)(endpoints[ep]).astype(jnp.float32)
           for name, ep in self.aux_names}
    return InceptionOutput(logits=logits, aux_logits=aux)
