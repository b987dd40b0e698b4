"""Evaluation preprocessing and top-k classification (numpy + PIL, no TensorFlow).

One description of how an image becomes a network input, ``Preprocessing``, and one
definition of the evaluation geometry, ``resize_crop_box``: both the PIL path here
(``eval_transform``, ``classify``) and the tf.data pipeline of the experiments use
them, so a model is scored on the same pixels whichever path feeds it.

The centre-crop transform is timm's / torchvision's: resize the shorter side to
``floor(image_size / crop_pct)`` (the longer side in proportion, truncated), take the
central ``image_size`` square (offsets rounded half to even, like Python's
``round``), scale to [0, 1] and normalise by mean and std. For the Inception
mean = std = 0.5 this is TF-slim's ``x / 127.5 - 1``. The ``squash`` mode resizes
both sides to ``floor(image_size / crop_pct)`` whatever the aspect ratio (Keras
``flow_from_directory``'s ``target_size``) before the same central crop.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

# Resize kernels by name; the tf.data pipeline maps the same names to tf.image.resize
# (antialiased), which agrees with PIL to about one 8-bit level (tested). TF's
# 'area' and 'lanczos3' do not match PIL's BOX and LANCZOS, so they are not offered.
_FILTERS = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC,
            'nearest': Image.Resampling.NEAREST}
INTERPOLATIONS = tuple(_FILTERS)
CROP_MODES = ('center', 'squash')


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How an image becomes a network input (evaluation transform and normalisation).

  Attributes:
    image_size: square network input side.
    mean: per-channel mean in [0, 1] units (timm convention).
    std: per-channel std in [0, 1] units; 0.5/0.5 maps pixels to [-1, 1], the
      Inception (TF-slim / Keras) scaling used when training from scratch.
    crop_pct: the image is resized to ``floor(image_size / crop_pct)`` before the
      central ``image_size`` crop (0.875 for most ImageNet weights; 1.0 keeps all).
    interpolation: resize kernel, one of ``INTERPOLATIONS``.
    crop_mode: 'center' keeps the aspect ratio (shorter side resized, centre
      crop: the edges of a non-square image are cut); 'squash' resizes both sides
      (the whole image, distorted; Keras ``flow_from_directory``).
  """
  image_size: int
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  crop_pct: float = 1.0
  interpolation: str = 'bilinear'
  crop_mode: str = 'center'

  def __post_init__(self):
    object.__setattr__(self, 'mean', tuple(float(v) for v in self.mean))
    object.__setattr__(self, 'std', tuple(float(v) for v in self.std))
    if not isinstance(self.image_size, int) or self.image_size < 1:
      raise ValueError(f'image_size must be a positive int, got {self.image_size!r}')
    if not 0.0 < self.crop_pct <= 1.0:
      raise ValueError(f'crop_pct must be in (0, 1], got {self.crop_pct}')
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got '
                       f'{self.interpolation!r}')
    if self.crop_mode not in CROP_MODES:
      raise ValueError(f'crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}')
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ValueError(f'mean and std need 3 values (std > 0), got {self.mean}, '
                       f'{self.std}')

  @property
  def resize_size(self) -> int:
    """Side the image is resized to before the crop: ``floor(image_size / crop_pct)``."""
    # The epsilon keeps e.g. 299 / (299 / 342) at 342 despite rounding.
    return int(math.floor(self.image_size / self.crop_pct + 1e-6))

  def to_dict(self) -> dict[str, Any]:
    """JSON-able fields (for run records and weight-file metadata)."""
    d = dataclasses.asdict(self)
    d['mean'], d['std'] = list(self.mean), list(self.std)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'Preprocessing':
    """Inverse of ``to_dict``; unknown keys are an error (a newer file?)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'unknown preprocessing field(s) {unknown}; known: {sorted(names)}')
    return cls(**d)


def as_preprocessing(cfg: Any) -> Preprocessing:
  """A ``Preprocessing`` from itself or from a ``PretrainedCfg`` (its eval transform)."""
  if isinstance(cfg, Preprocessing):
    return cfg
  return Preprocessing(int(np.ravel(cfg.input_size)[-1]), mean=tuple(cfg.mean),
                       std=tuple(cfg.std), crop_pct=cfg.crop_pct,
                       interpolation=cfg.interpolation)


def resize_crop_box(height, width, prep: Preprocessing,
                    minimum: Callable[[Any, Any], Any] = min):
  """The evaluation geometry: ``(resized_height, resized_width, top, left)``.

  The only definition of it: the PIL path calls it with ints, the tf.data path
  with int32 tensors (``minimum=tf.minimum``), so it uses integer arithmetic only.
  Centre mode: the shorter side becomes ``prep.resize_size`` and the longer
  ``floor(resize_size * long / short)`` (torchvision ``Resize(int)``); squash: both
  sides ``resize_size``. The crop offsets are ``round((resized - image_size) / 2)``
  with ties to even (torchvision ``CenterCrop``, Python ``round``).
  """
  r = prep.resize_size
  if prep.crop_mode == 'squash':
    nh, nw = height * 0 + r, width * 0 + r
  else:
    short = minimum(height, width)
    nh, nw = (r * height) // short, (r * width) // short

  def offset(d):
    # round(d / 2), ties to even: d = 4k + 3 rounds up, d = 4k + 1 down.
    return d // 2 + (d % 4) // 3

  return nh, nw, offset(nh - prep.image_size), offset(nw - prep.image_size)


@nnx.jit
def _logits(model, x):
  return model(x)


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names in label order (torchvision's list)."""
  text = (importlib.resources.files('inception_jax') / 'data' /
          'imagenet_classes.txt').read_text(encoding='utf-8')
  names = tuple(line for line in text.splitlines() if line)
  if len(names) != 1000:
    raise RuntimeError(f'imagenet_classes.txt has {len(names)} names, expected 1000')
  return names


def resize_size(cfg) -> int:
  """Side before the centre crop: ``floor(input_size / crop_pct)``."""
  return as_preprocessing(cfg).resize_size


def to_pil(image: Any) -> Image.Image:
  """A PIL RGB image from a path, a PIL image or a uint8 HxWx3 / HxW array."""
  if isinstance(image, Image.Image):
    return image.convert('RGB')
  if isinstance(image, (str, bytes)) or hasattr(image, '__fspath__'):
    with Image.open(image) as im:
      return im.convert('RGB')
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    raise TypeError(f'image arrays must be uint8 HxWx3 (0..255), got {arr.dtype}; '
                    'pass PIL images or file paths for other formats')
  if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4)):
    return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1
                           else arr).convert('RGB')
  raise ValueError(f'expected an HxWx3 image, got an array of shape {arr.shape}')


def eval_transform(image: Any, cfg) -> np.ndarray:
  """One image -> float32 ``[image_size, image_size, 3]``, normalised as ``cfg``.

  Args:
    image: path, PIL image or uint8 array.
    cfg: a ``Preprocessing`` or a ``PretrainedCfg`` (its eval transform).
  """
  prep = as_preprocessing(cfg)
  im = to_pil(image)
  w, h = im.size
  nh, nw, top, left = resize_crop_box(h, w, prep)
  im = im.resize((nw, nh), _FILTERS[prep.interpolation])
  c = prep.image_size
  im = im.crop((left, top, left + c, top + c))
  x = np.asarray(im, dtype=np.float32) / 255.0
  return (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)


def preprocess(images: Sequence[Any], cfg) -> np.ndarray:
  """A batch ``[B, S, S, 3]`` float32 from paths / PIL images / uint8 arrays."""
  return np.stack([eval_transform(im, cfg) for im in images])


def classify(model, cfg, images: Sequence[Any], top_k: int = 5,
             class_names: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
  """Top-k classes of each image (the PIL evaluation path).

  Args:
    model: an ``Inception`` in eval mode with a classifier (e.g.
      ``create_model('inception_v3.tf_in1k')``).
    cfg: the evaluation transform: a ``Preprocessing`` or the weights'
      ``PretrainedCfg`` (``model.pretrained_cfg``).
    images: paths, PIL images or uint8 arrays.
    top_k: number of classes per image.
    class_names: one name per output; default the ImageNet names (with
      'background' first for a 1001-class head, ``label_offset=1``).

  Returns:
    For each image, ``top_k`` pairs (class name, probability), most likely first.
  """
  if not getattr(model, 'include_top', True):
    raise ValueError('classify needs a model with a classifier (include_top=True)')
  x = preprocess(images, cfg)
  logits = np.asarray(_logits(model, x), dtype=np.float32)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  if class_names is None:
    off = getattr(cfg, 'label_offset', 0)
    class_names = ('background',) * off + imagenet_classes()
  if logits.shape[-1] != len(class_names):
    raise ValueError(f'the model has {logits.shape[-1]} classes but {len(class_names)} '
                     'class names were given (ImageNet names need num_classes=1000)')
  out = []
  for p in probs:
    idx = np.argsort(-p)[:top_k]
    out.append([(str(class_names[int(i)]), float(p[i])) for i in idx])
  return out
