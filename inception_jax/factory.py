"""The one way to build a model: ``create_model``; and ``load``, a model with its classes.

``create_model(name)`` builds a registered architecture (``registry``), with the
options of a pretrained tag (``pretrained``) or of a run's inference file
(``inference``), and fills it from the file. Every build takes the same steps:

1. the network is constructed abstractly (``abstract_model``: shapes, no values);
2. the arrays of a file, if any, are checked strictly against it and assigned
   (``weights.assign``);
3. whatever is left is initialised at once: every random kernel is a slice of one
   truncated-normal draw (``unit_truncated_normal``, one compiled program),
   scaled as its ``initializer``
   says (``layers.VarianceScaling``), and constants are written by NumPy.
   Running each initialiser instead costs one XLA compile per parameter shape
   (tens of seconds for Inception-v3 on a CPU).

Imports point one way: ``factory`` uses ``registry``, ``pretrained``, ``inference``
and ``model``; none of them imports ``factory``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Sequence

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax import inference
from inception_jax import layers
from inception_jax import model as model_lib
from inception_jax import preprocessing as prep_lib
from inception_jax import pretrained as pretrained_lib
from inception_jax import registry
from inception_jax import specs
from inception_jax import weights as weights_lib


def create_model(name: str | None = None, *, num_classes: int | None = None,
                 rngs: nnx.Rngs | None = None, pretrained: str | None = None,
                 **options: Any) -> model_lib.Inception:
  """Builds a network of the family.

  Args:
    name: an architecture from ``list_models()`` or a pretrained tag
      ``arch.tag`` from ``list_pretrained()``; a tag sets the options that make
      the network match its source (padding, ``count_include_pad``, BN scale...).
      May be omitted when ``pretrained`` is a run or an inference file.
    num_classes: classifier width (default: the weights', else 1000). With
      pretrained weights a different value keeps the backbone and re-initialises
      the classifier (transfer learning).
    rngs: parameter/dropout RNGs; ``nnx.Rngs(0)`` when omitted.
    pretrained: path of a converted weight file (``third_party_weights.convert``)
      to load strictly into the network, or a fine-tuning run directory / its
      inference file (``inception_jax.inference``: architecture, options and
      classes come from the file).
    **options: ``include_top``, ``pooling`` ('avg', 'max' or None), ``dropout_rate``,
      ``aux_logits``, ``dtype``, ``param_dtype``, ``in_channels`` and the numerics
      options ``padding`` ('tf' | 'symmetric'), ``count_include_pad``,
      ``batch_norm``, ``bn_eps``, ``bn_momentum``, ``bn_scale``, ``conv_bias``; and
      ``scan_blocks`` (default True: the Inception-ResNet block loop stays rolled;
      False unrolls it); ``embedding_size`` (a FaceNet bottleneck head of that
      size; see ``Inception.embed``). ``model.config`` records them resolved.

  Returns:
    An ``Inception`` module in eval mode.
  """
  if rngs is None:
    rngs = nnx.Rngs(0)
  if pretrained is not None and inference.is_classifier(pretrained):
    loaded, config = inference.read_classifier(pretrained, name=name,
                                               num_classes=num_classes, **options)
    model = build(loaded.arch, loaded.options, rngs, loaded)
    model.classifier_config = config
    return model
  if name is None:
    raise ValueError('create_model needs an architecture name (list_models()) unless '
                     'pretrained= is a run directory or an inference file')
  arch, _, tag = name.partition('.')
  if tag or pretrained is not None:
    cfg, loaded = pretrained_lib.load_weights(name, path=pretrained,
                                              num_classes=num_classes, **options)
    model = build(cfg.arch, loaded.options, rngs, loaded)
    model.pretrained_cfg = cfg
    return model
  return build(arch, {**options, 'num_classes': num_classes}, rngs)


def build(arch: str | specs.ArchSpec, options: dict[str, Any], rngs: nnx.Rngs,
          loaded: weights_lib.Loaded | None = None) -> model_lib.Inception:
  """The network ``arch`` with ``options``, filled from ``loaded`` and initialised.

  ``create_model`` resolves names, tags and files to these arguments; call this
  directly for an ``ArchSpec`` that is not registered (a test's tiny table).
  """
  spec = registry.get_arch(arch) if isinstance(arch, str) else arch
  model_lib.ModelConfig.for_arch(spec, **options)  # option errors before any tracing
  model = abstract_model(spec, options)
  if loaded is not None:
    weights_lib.assign(model, loaded.arrays, skip=loaded.skip, source=loaded.source)
  initialise(model, rngs)
  return model


class _NoKeys:
  """The ``params`` stream of an abstract build: it hands out ``None``.

  The ``layers`` initialisers then return a ``jax.ShapeDtypeStruct`` of the
  shape instead of drawing, and no stream counter is updated per parameter.
  Dropout still forks the default stream (``abstract_model`` makes its key
  abstract again).
  """

  def __call__(self):
    return None


def abstract_model(spec: specs.ArchSpec, options: dict[str, Any]) -> model_lib.Inception:
  """The network with shapes only: every variable holds a ``jax.ShapeDtypeStruct``.

  Constructed in plain Python (the initialisers return shapes for a ``None``
  key; no trace, no arrays): ``nnx.eval_shape`` gives the same model but traced
  the construction, which took as long as drawing the values.
  """
  rngs = nnx.Rngs(0)  # the dropout streams' keys are replaced by initialise()
  rngs.params = _NoKeys()
  model = model_lib.Inception(spec, rngs=rngs, **options)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.RngState)):
    value = var.get_value()
    var.set_value(jax.ShapeDtypeStruct(value.shape, value.dtype))
  return model


def initialise(model: model_lib.Inception, rngs: nnx.Rngs) -> None:
  """Gives every variable of ``model`` that is still abstract its initial value.

  Random kernels (``layers.VarianceScaling``) are consecutive slices of one
  truncated-normal draw from ``rngs.params()``, in network order (stem to head,
  so that the head's size or presence does not change the backbone for a seed),
  each scaled by its initializer's standard deviation; constants are written by
  NumPy; dropout RNG streams get fresh keys from ``rngs.dropout`` (or its
  default stream).
  The same distribution as running each initialiser, not the same numbers.
  """
  todo = [(weights_lib.path_key(path), var)
          for path, var in nnx.to_flat_state(nnx.state(model))
          if isinstance(var.get_value(), jax.ShapeDtypeStruct)]
  order = (*model.layer_names, *(n for n, _ in model.aux_names), 'Bottleneck', 'Logits')
  rank = {n: i for i, n in enumerate(order)}
  values, random, streams = {}, [], []
  for key, var in todo:
    shape = tuple(var.shape)
    if isinstance(var, nnx.RngKey):
      streams.append((key, var))
      continue
    if isinstance(var, nnx.RngCount):
      values[key] = np.zeros(shape, var.dtype)
      continue
    init = var.get_metadata().get('initializer')
    if isinstance(init, layers.Constant):
      values[key] = np.full(shape, init.value, var.dtype)
    elif isinstance(init, layers.VarianceScaling):
      random.append((rank.get(key.split('/')[0], len(rank)), key, var, init))
    else:
      raise TypeError(f'{key}: no initializer recorded on the variable (give it '
                      'initializer= metadata, see inception_jax.layers.init_args)')
  random.sort(key=lambda r: r[:2])
  sizes = [math.prod(var.shape) for _, _, var, _ in random]
  if random:
    unit = unit_truncated_normal(rngs.params(), sum(sizes))
    # Under a trace (``nnx.eval_shape(lambda: create_model(...))``) the slices are
    # traced too; otherwise NumPy cuts them without compiling a program per shape.
    xp = jnp if isinstance(unit, jax.core.Tracer) else np
    offset = 0
    for (_, key, var, init), n in zip(random, sizes):
      part = unit[offset:offset + n].reshape(var.shape) * xp.float32(init.std(var.shape))
      values[key] = xp.asarray(part, var.dtype)
      offset += n
  for key, var in streams:  # after the draw: its key does not depend on the head
    stream_key = rngs['dropout']()  # the only streams a network holds (or 'default')
    values[key] = jax.random.split(stream_key, var.shape) if var.shape else stream_key
  keys = list(values)
  on_device = jax.device_put([values[k] for k in keys])
  by_key = dict(todo)
  for k, value in zip(keys, on_device):
    by_key[k].set_value(value)


_SQRT2 = math.sqrt(2.0)
_ERF_LO, _ERF_HI = math.erf(-2.0 / _SQRT2), math.erf(2.0 / _SQRT2)
# Numbers per compiled draw: one program serves every size (a program per size
# compiled for 0.4 s on every build of a new architecture or head).
_CHUNK = 1 << 21


@jax.jit
def _draw_chunk(key: jax.Array, start: jax.Array) -> jax.Array:
  """Numbers ``start .. start + _CHUNK - 1`` (``start`` even) of ``unit_truncated_normal``."""
  k1, k2 = jax.random.key_data(key)
  m = _CHUNK // 2
  counters = jnp.concatenate([jnp.zeros(m, jnp.uint32),
                              start // 2 + jnp.arange(m, dtype=jnp.uint32)])
  words = jax.extend.random.threefry_2x32((k1, k2), counters)  # [word 0 of each, word 1]
  bits = jnp.stack([words[:m], words[m:]], axis=-1).reshape(-1)
  # 23 random mantissa bits under the exponent of 1.0: uniform on [1, 2), minus 1.
  u = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
  x = _SQRT2 * jax.lax.erf_inv(_ERF_LO + u * (_ERF_HI - _ERF_LO))
  return jnp.clip(x, np.nextafter(np.float32(-2), np.float32(0)),
                  np.nextafter(np.float32(2), np.float32(0)))


def unit_truncated_normal(key: jax.Array, n: int) -> jax.Array | np.ndarray:
  """``n`` float32 unit normals truncated to [-2, 2], from one key.

  The math of ``jax.random.truncated_normal`` (inverse CDF of 23-bit uniforms),
  with half its hashing: JAX's default threefry hashes one counter per number into
  two 32-bit words and keeps their XOR; here numbers ``2j`` and ``2j + 1`` are the
  two words of counter ``j``. Drawing is most of a build's time (42.7 M numbers
  for Inception-v4). Number ``i`` depends only on ``key`` and ``i``, not on
  ``n``, so a network's backbone does not change with its head. Keys of another
  PRNG implementation use ``jax.random.truncated_normal``.

  Returns a NumPy array (eagerly: the chunks of one compiled program, joined on
  the host), or a traced one under a trace.
  """
  if jax.random.key_impl(key) != 'threefry2x32':
    return jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)
  if n >= 2 ** 32:
    raise ValueError(f'{n} numbers exceed the 2**32 counters of one key')
  chunks = [_draw_chunk(key, np.uint32(start)) for start in range(0, n, _CHUNK)]
  if isinstance(key, jax.core.Tracer):
    return jnp.concatenate(chunks)[:n]
  return np.concatenate([np.asarray(c) for c in chunks])[:n]


# ------------------------------------------------------------------ classifiers


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A model with what using it takes: class names and preprocessing.

  Unpacks as ``model, class_names, preprocessing = inception_jax.load(...)``.

  Attributes:
    model: the ``Inception`` network, eval mode.
    class_names: one name per output, in label order.
    preprocessing: the evaluation transform (``inception_jax.preprocessing``).
    source: what was loaded (run directory, file or tag).
    info: the file's config (arch, step, metrics, ...) or the tag's cfg.
  """
  model: Any
  class_names: tuple[str, ...]
  preprocessing: prep_lib.Preprocessing
  source: str
  info: dict[str, Any]

  def __iter__(self):
    return iter((self.model, self.class_names, self.preprocessing))

  def predict(self, images: Sequence[Any], top_k: int = 5
              ) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) per image (paths, PIL images, uint8 arrays)."""
    return prep_lib.classify(self.model, self.preprocessing, images, top_k=top_k,
                             class_names=self.class_names)


def load(source: str, *, checkpoint: str | int | None = None,
         rngs: nnx.Rngs | None = None, **options: Any) -> Classifier:
  """Loads a classifier with its class names and preprocessing, in one call.

  Args:
    source: a run directory of ``experiments.finetune``, an inference file, a
      converted ImageNet weight file, or a pretrained tag (``inception_v3.tf_in1k``,
      from the converted-weights cache).
    checkpoint: for a run directory: None or 'best' (the inference file),
      'latest' or a step number (parameters and BN statistics read from that
      training checkpoint; needs orbax).
    rngs: RNGs (dropout streams of the model).
    **options: model options (e.g. ``dtype=jnp.bfloat16``).

  Returns:
    A ``Classifier``.

  Raises:
    FileNotFoundError: no such run, file, checkpoint or converted tag (the
      message says what to do).
    RunLoadError / WeightLoadError: the file or checkpoint does not fit.
  """
  src = os.path.expanduser(os.fspath(source))
  if checkpoint not in (None, 'best'):
    if not os.path.isdir(src):
      raise inference.RunLoadError(f'checkpoint={checkpoint!r} needs a run directory, '
                                   f'got {source}')
    return _load_checkpoint(src, checkpoint, rngs or nnx.Rngs(0), options)
  if os.path.isdir(src) or (os.path.isfile(src) and inference.is_classifier(src)):
    model = create_model(pretrained=src, rngs=rngs, **options)
    c = model.classifier_config
    return Classifier(model, tuple(c['class_names']),
                      prep_lib.Preprocessing.from_dict(c['preprocessing']), src, c)
  if os.path.isfile(src):
    config = inference.read_config(src)
    name = f"{config.get('arch')}.{config.get('tag')}"
    model = create_model(name, pretrained=src, rngs=rngs, **options)
  elif '.' in src and os.sep not in src:
    model = create_model(src, rngs=rngs, **options)
  else:
    raise FileNotFoundError(inference.missing_message(src))
  cfg = model.pretrained_cfg
  names = prep_lib.imagenet_classes()
  if cfg.label_offset:
    names = ('background',) + names
  return Classifier(model, tuple(names), prep_lib.as_preprocessing(cfg), src,
                    cfg.to_dict())


def _load_checkpoint(run_dir: str, checkpoint, rngs: nnx.Rngs, options) -> Classifier:
  """Parameters and BN statistics of a training checkpoint (no optimizer needed)."""
  from inception_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(run_dir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f'{run_dir} has no checkpoints/ folder: not a run directory '
                            'of experiments.finetune')
  reader = checkpoint_lib.CheckpointManager(ckpt_dir)
  try:
    steps = reader.all_steps()
    if not steps:
      raise FileNotFoundError(f'{ckpt_dir} holds no checkpoint')
    if checkpoint == 'latest':
      step = steps[-1]
    else:
      try:
        step = int(checkpoint)
      except ValueError:
        raise inference.RunLoadError(f"checkpoint must be 'best', 'latest' or a step "
                                     f'number, got {checkpoint!r}') from None
      if step not in steps:
        raise FileNotFoundError(f'no checkpoint of step {step} in {ckpt_dir}; '
                                f'available: {steps}')
    meta = reader.metadata(step)
    if 'model' not in meta:
      raise inference.RunLoadError(
          f'checkpoint {step} in {ckpt_dir} has no model description (written by an '
          'older version); resume the run to rewrite it')
    m = meta['model']
    opts = {**m['options'], **options, 'num_classes': int(m['num_classes'])}
    opts.pop('aux_logits', None)  # aux heads train only: not read
    spec = registry.get_arch(m['arch'])
    model_lib.ModelConfig.for_arch(spec, **opts)
    model = abstract_model(spec, opts)
    arrays = reader.restore_weights(step, model)
  finally:
    reader.close()
  weights_lib.assign(model, arrays, source=f'{ckpt_dir} step {step}')
  initialise(model, rngs)
  info = dict(meta, step=step, selected=f'checkpoint {step}')
  return Classifier(model, tuple(meta['class_names']),
                    prep_lib.Preprocessing.from_dict(meta['preprocessing']), run_dir, info)


__all__ = ['Classifier', 'abstract_model', 'build', 'create_model', 'initialise', 'load']
