"""Evaluation preprocessing and top-k classification (numpy + PIL, no TensorFlow).

The eval transform of a ``PretrainedCfg`` is timm's / torchvision's: resize the
shorter side to ``floor(input_size / crop_pct)`` with the cfg's filter, take the
central ``input_size`` square, scale to [0, 1] and normalise by the cfg's mean and
std. For the Inception mean = std = 0.5 this is TF-slim's ``x / 127.5 - 1``.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from PIL import Image

_FILTERS = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC,
            'nearest': Image.Resampling.NEAREST}


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
  """Shorter-side length before the centre crop: ``floor(input_size / crop_pct)``."""
  # The epsilon keeps e.g. 299 / (299 / 342) at 342 despite rounding.
  return int(math.floor(cfg.input_size / cfg.crop_pct + 1e-6))


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
  """One image -> float32 ``[input_size, input_size, 3]``, normalised as ``cfg``.

  Args:
    image: path, PIL image or uint8 array.
    cfg: a ``PretrainedCfg`` (input_size, crop_pct, interpolation, mean, std).
  """
  if cfg.interpolation not in _FILTERS:
    raise ValueError(f'unknown interpolation {cfg.interpolation!r}; use one of '
                     f'{sorted(_FILTERS)}')
  im = to_pil(image)
  size = resize_size(cfg)
  w, h = im.size
  if w <= h:
    new = (size, max(1, int(size * h / w)))
  else:
    new = (max(1, int(size * w / h)), size)
  im = im.resize(new, _FILTERS[cfg.interpolation])
  w, h = im.size
  c = cfg.input_size
  # torchvision CenterCrop: offsets round((dim - crop) / 2).
  left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
  im = im.crop((left, top, left + c, top + c))
  x = np.asarray(im, dtype=np.float32) / 255.0
  return (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)


def preprocess(images: Sequence[Any], cfg) -> np.ndarray:
  """A batch ``[B, S, S, 3]`` float32 from paths / PIL images / uint8 arrays."""
  return np.stack([eval_transform(im, cfg) for im in images])


def classify(model, cfg, images: Sequence[Any], top_k: int = 5
             ) -> list[list[tuple[str, float]]]:
  """Top-k ImageNet classes of each image.

  Args:
    model: an ``Inception`` in eval mode with a classifier (e.g.
      ``create_model('inception_v3.tf_in1k')``).
    cfg: the weights' ``PretrainedCfg`` (``model.pretrained_cfg``).
    images: paths, PIL images or uint8 arrays.
    top_k: number of classes per image.

  Returns:
    For each image, ``top_k`` pairs (class name, probability), most likely first.
    With a 1001-class head (``label_offset=1``) index 0 is 'background'.
  """
  if not getattr(model, 'include_top', True):
    raise ValueError('classify needs a model with a classifier (include_top=True)')
  x = preprocess(images, cfg)
  logits = np.asarray(_logits(model, x), dtype=np.float32)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  names = imagenet_classes()
  off = cfg.label_offset
  if logits.shape[-1] != len(names) + off:
    raise ValueError(f'the model has {logits.shape[-1]} classes; ImageNet names need '
                     f'{len(names) + off} (num_classes=1000, label_offset={off})')
  label = lambda i: 'background' if i < off else names[i - off]
  out = []
  for p in probs:
    idx = np.argsort(-p)[:top_k]
    out.append([(label(int(i)), float(p[i])) for i in idx])
  return out
