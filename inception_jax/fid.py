"""FID feature extraction in JAX: each reference's resize and scaling, exactly.

Three modes, each the input pipeline of a reference implementation, from uint8
RGB images of any size to ``inception_v3_fid`` at 299x299:

* ``'tf'``: the 2015 TF graph fed through ``ExpandDims`` (TTUR, the ADM
  evaluator) and torch-fidelity / torchmetrics, which reproduce it: float
  0..255, TF1 ``ResizeBilinear`` (``align_corners=False``, asymmetric mapping
  ``src = dst * in / out``, no antialiasing), then ``(x - 128) / 128``.
* ``'pytorch_fid'``: pytorch-fid: ``x / 255`` (torchvision ``ToTensor``),
  ``F.interpolate(mode='bilinear', align_corners=False)`` (half-pixel centres,
  no antialiasing), then ``2 x - 1``.
* ``'clean'``: clean-fid's ``clean`` mode: PIL bicubic resize of each channel as a
  float32 image (antialiased when downsampling, no uint8 quantisation), clipped
  to 0..255, then ``(x - 128) / 128``. clean-fid runs PIL on the host; here the
  same filter is applied on the device: PIL's own coefficients (its
  ``precompute_coeffs``, bicubic ``a = -0.5``, support scaled by the downscale
  factor, normalised per output pixel) as taps summed in PIL's order,
  horizontal pass first. PIL accumulates in float64, this in float32: the
  results agree to float32 rounding (tested against PIL).

All three resample the width first and then the height, in each reference's
arithmetic order, so the results agree with the references to float rounding
(tested against torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``,
``torch.nn.functional.interpolate`` and PIL).

``FeatureExtractor`` runs the resize (jitted per mode and input shape) and the
network (jitted once per batch size) on the device, data-parallel over a
``'data'`` mesh axis, at float32 'highest' matmul precision (so GPUs do not use
TF32 and TPUs not bfloat16 passes), and returns the metric endpoints:

* ``pool_3``: global average of Mixed_7c, ``[B, 2048]`` (FID, KID).
* ``logits_unbiased``: ``pool_3 @ W`` without the bias, ``[B, 1008]`` (IS).
* ``spatial``: the ADM evaluator's sFID feature ``mixed_6/conv:0[..., :7]``,
  flattened in NHWC order, ``[B, 17 * 17 * 7 = 2023]``. ``mixed_6`` is the 7th
  module of the 2015 graph (``mixed``, ``mixed_1`` .. = Mixed_5b, 5c, 5d, 6a,
  6b, 6c, 6d), and its ``conv`` is the 1x1 branch (torch-fidelity's weight
  converter maps ``mixed_6/conv/conv2d_params`` and ``mixed_6/conv/batchnorm``
  to ``Mixed_6d.branch1x1``). The op named ``mixed_6/conv`` follows
  ``batchnorm -> CheckNumerics -> control_dependency`` (identities) in that
  graph and is the layer's ReLU, so the tensor is post-BN, post-ReLU. Branch_0
  comes first in the module's concatenation, so it is channels 0..6 of the
  Mixed_6d endpoint.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from inception_jax import layers

Array = jax.Array
MODES = ('tf', 'pytorch_fid', 'clean')
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM evaluator: mixed_6/conv:0[..., :7]
ENDPOINTS = ('pool_3', 'logits_unbiased', 'spatial')
DEFAULT_WEIGHTS = 'inception_v3_fid.tf_2015_12_05'


# ----------------------------------------------------------------------------- resize

def _tf1_taps(n_in: int, n_out: int):
  """TF1 ResizeBilinear (align_corners=False) indices and weights of one axis.

  TF: ``scale = (float) in / out``; ``src = dst * scale`` in float32; ``lo =
  floor(src)``, ``hi = min(lo + 1, in - 1)``, ``frac = src - lo``.
  """
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.arange(n_out, dtype=np.float32) * scale
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def _torch_taps(n_in: int, n_out: int):
  """``F.interpolate(bilinear, align_corners=False)`` indices and weights of one axis.

  PyTorch's CPU kernel (``area_pixel_compute_source_index``) in float32:
  ``scale = (float) in / out``, ``src = max(scale * (dst + 0.5) - 0.5, 0)``
  rounded once (the compiled kernel fuses the multiply-add; the float32 operands'
  product is exact in float64, so computing there and rounding once is the
  same), ``lo = min(floor(src), in - 1)``, ``hi = lo + (lo < in - 1)``,
  ``w1 = src - lo``, ``w0 = 1 - w1``.
  """
  scale = np.float32(n_in) / np.float32(n_out)
  dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
  src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
  hi = lo + (lo < n_in - 1).astype(np.int32)
  w1 = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
  return lo, hi, (np.float32(1) - w1).astype(np.float32), w1


def _pil_bicubic(x: float) -> float:
  """PIL's bicubic kernel (a = -0.5), ``Resample.c``."""
  a = -0.5
  x = abs(x)
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  if x < 2.0:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


def pil_bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """PIL ``Image.resize(BICUBIC)`` taps of one axis: (indices, weights) ``[out, k]``.

  PIL's ``precompute_coeffs`` in float64: ``scale = in / out``, the support
  ``2 * max(scale, 1)`` (antialiasing when downsampling), per output pixel the
  window ``[int(center - support + 0.5), int(center + support + 0.5))`` clipped to
  the image, weights ``bicubic((x - center + 0.5) / max(scale, 1))`` normalised to
  sum 1. Unused taps get index 0 and weight 0.
  """
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  ksize = int(math.ceil(support)) * 2 + 1
  idx = np.zeros((n_out, ksize), np.int32)
  wts = np.zeros((n_out, ksize), np.float64)
  for o in range(n_out):
    center = (o + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    w = np.array([_pil_bicubic((x - center + 0.5) / filterscale) for x in range(lo, hi)])
    total = w.sum()
    if total != 0.0:
      w = w / total
    idx[o, :hi - lo] = np.arange(lo, hi)
    wts[o, :hi - lo] = w
  return idx, wts


def _along(x: Array, axis: int, idx) -> Array:
  return jnp.take(x, jnp.asarray(idx), axis=axis)


def resize_tf1_bilinear(x: Array, size: int = INPUT_SIZE) -> Array:
  """TF1 ``ResizeBilinear`` (align_corners=False) of float NHWC images to ``size``.

  torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``: width lerps of
  the two source rows, then a height lerp, each ``a + (b - a) * frac``.
  """
  h, w = x.shape[1:3]
  ylo, yhi, dy = _tf1_taps(h, size)
  xlo, xhi, dx = _tf1_taps(w, size)
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]
  top, bottom = _along(x, 1, ylo), _along(x, 1, yhi)
  t0, t1 = _along(top, 2, xlo), _along(top, 2, xhi)
  b0, b1 = _along(bottom, 2, xlo), _along(bottom, 2, xhi)
  row0 = t0 + (t1 - t0) * dx
  row1 = b0 + (b1 - b0) * dx
  return row0 + (row1 - row0) * dy


def resize_torch_bilinear(x: Array, size: int = INPUT_SIZE) -> Array:
  """``F.interpolate(x, (size, size), mode='bilinear', align_corners=False)``, NHWC.

  PyTorch's CPU kernel order: ``h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 +
  w1 * x11)``.
  """
  h, w = x.shape[1:3]
  ylo, yhi, h0, h1 = _torch_taps(h, size)
  xlo, xhi, w0, w1 = _torch_taps(w, size)
  w0, w1 = (jnp.asarray(v)[None, None, :, None] for v in (w0, w1))
  h0, h1 = (jnp.asarray(v)[None, :, None, None] for v in (h0, h1))
  top, bottom = _along(x, 1, ylo), _along(x, 1, yhi)
  row0 = _along(top, 2, xlo) * w0 + _along(top, 2, xhi) * w1
  row1 = _along(bottom, 2, xlo) * w0 + _along(bottom, 2, xhi) * w1
  return row0 * h0 + row1 * h1


def _pil_pass(x: Array, axis: int, n_out: int) -> Array:
  idx, wts = pil_bicubic_taps(x.shape[axis], n_out)
  shape = [1, 1, 1, 1]
  shape[axis] = n_out
  out = None
  for k in range(idx.shape[1]):
    if not np.any(wts[:, k]):
      continue
    term = _along(x, axis, idx[:, k]) * jnp.asarray(wts[:, k], jnp.float32).reshape(shape)
    out = term if out is None else out + term
  return out


def resize_pil_bicubic(x: Array, size: int = INPUT_SIZE) -> Array:
  """PIL ``resize((size, size), BICUBIC)`` of float32 NHWC images (mode 'F' per channel).

  Horizontal pass, then vertical, as PIL does; PIL returns a copy for an
  unchanged size (and its taps are then the identity).
  """
  h, w = x.shape[1:3]
  if (h, w) == (size, size):
    return x
  if w != size:
    x = _pil_pass(x, 2, size)
  if h != size:
    x = _pil_pass(x, 1, size)
  return x


def preprocess(images: Array, mode: str, size: int = INPUT_SIZE) -> Array:
  """uint8 (or 0..255 float) NHWC images -> the network input of ``mode``."""
  if mode not in MODES:
    raise ValueError(f'unknown FID mode {mode!r}; use one of {MODES}')
  x = images.astype(jnp.float32)
  if mode == 'tf':
    x = resize_tf1_bilinear(x, size)
    return (x - 128.0) / 128.0
  if mode == 'pytorch_fid':
    if images.dtype == jnp.uint8:
      # ToTensor's x / 255, correctly rounded; XLA would turn a division by a
      # constant into a multiplication by its reciprocal (1 ulp off).
      x = jnp.asarray(np.arange(256, dtype=np.float32) / np.float32(255))[images]
    else:
      x = x / 255.0
    x = resize_torch_bilinear(x, size)
    return 2.0 * x - 1.0
  x = jnp.clip(resize_pil_bicubic(x, size), 0.0, 255.0)
  return (x - 128.0) / 128.0


# -------------------------------------------------------------------------- endpoints

def endpoints(model, x: Array) -> dict[str, Array]:
  """The metric endpoints of ``inception_v3_fid`` on preprocessed 299x299 input.

  Returns ``pool_3`` [B, 2048], ``logits_unbiased`` [B, classes] (no bias) and
  ``spatial`` [B, 17*17*7] (``mixed_6/conv:0[..., :7]`` in NHWC order; see the
  module docstring).
  """
  if model.arch != 'inception_v3_fid':
    raise ValueError(f'FID features need the inception_v3_fid network, got {model.arch}')
  if model.Logits is None:
    raise ValueError('FID features need the classifier (include_top=True) for the '
                     'Inception Score logits')
  feats = model.features(x)
  pool = layers.global_pool(feats['Mixed_7c'].astype(jnp.float32), 'avg')
  spatial = feats['Mixed_6d'][..., :SPATIAL_CHANNELS].astype(jnp.float32)
  logits = pool @ model.Logits.kernel[...].astype(jnp.float32)
  return {'pool_3': pool, 'logits_unbiased': logits,
          'spatial': spatial.reshape(spatial.shape[0], -1)}


def create_fid_model(weights: str | None = None, **options):
  """``inception_v3_fid`` with converted weights, its 1008-class head kept.

  Args:
    weights: a converted weight file, or None for the tag's file in the cache
      (``python -m third_party_weights.convert --tag inception_v3_fid.tf_2015_12_05``).
    **options: model options (e.g. ``dtype``).
  """
  from inception_jax import factory, pretrained  # pylint: disable=g-import-not-at-top
  cfg = pretrained.get_pretrained_cfg(DEFAULT_WEIGHTS)
  return factory.create_model(DEFAULT_WEIGHTS, pretrained=weights,
                              num_classes=cfg.num_classes, **options)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _preprocess_jit(images, mode, size):
  return preprocess(images, mode, size)


@functools.partial(jax.jit, static_argnums=0)
def _endpoints_jit(graphdef, state, x):
  with jax.default_matmul_precision('highest'):
    return endpoints(nnx.merge(graphdef, state), x)


class FeatureExtractor:
  """Jitted, data-parallel FID features of uint8 image batches.

  ``extractor(images)`` takes a host batch ``[B, H, W, 3]`` (uint8, any size) and
  returns numpy ``pool_3``, ``logits_unbiased`` and ``spatial`` (float32). The
  batch is padded to ``batch_size`` (or to a multiple of the device count),
  sharded over the ``'data'`` axis of the mesh with the network replicated, and
  the padding is dropped from the result. The resize is compiled per input
  shape and mode, the network once per batch size (shared by every extractor of
  the same network structure).

  Args:
    model: an ``inception_v3_fid`` network (``create_fid_model``), eval mode.
    mode: 'tf', 'pytorch_fid' or 'clean' (module docstring).
    batch_size: pad every batch to this size (one network compilation); None
      pads to a multiple of the device count only.
    mesh: a 1-D mesh with axis ``'data'``; default: all local devices.
  """

  def __init__(self, model, mode: str = 'tf', *, batch_size: int | None = None,
               mesh: jax.sharding.Mesh | None = None):
    if mode not in MODES:
      raise ValueError(f'unknown FID mode {mode!r}; use one of {MODES}')
    if getattr(model, 'arch', None) != 'inception_v3_fid' or model.Logits is None:
      raise ValueError('FeatureExtractor needs an inception_v3_fid network with its '
                       'classifier (create_fid_model)')
    model.eval()
    if mesh is None:
      mesh = jax.make_mesh((jax.local_device_count(),), ('data',),
                           axis_types=(AxisType.Auto,), devices=jax.local_devices())
    self.mesh = mesh
    self.mode = mode
    self.num_devices = mesh.size
    if batch_size is not None:
      batch_size = -(-batch_size // self.num_devices) * self.num_devices
    self.batch_size = batch_size
    self._graphdef, state = nnx.split(model)
    self._state = jax.device_put(state, NamedSharding(mesh, P()))
    self._data = NamedSharding(mesh, P('data'))

  def __call__(self, images: Any) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected RGB images [B, H, W, 3], got shape {images.shape}')
    if images.dtype != np.uint8:
      raise TypeError(f'expected uint8 images (0..255), got {images.dtype}')
    if self.batch_size and images.shape[0] > self.batch_size:
      parts = [self(images[i:i + self.batch_size])
               for i in range(0, images.shape[0], self.batch_size)]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    b = images.shape[0]
    target = self.batch_size or -(-b // self.num_devices) * self.num_devices
    if target > b:
      images = np.concatenate([images, np.zeros((target - b,) + images.shape[1:],
                                                np.uint8)])
    x = _preprocess_jit(jax.device_put(images, self._data), self.mode, INPUT_SIZE)
    with jax.default_matmul_precision('highest'):
      out = _endpoints_jit(self._graphdef, self._state, x)
    return {k: np.asarray(v)[:b] for k, v in out.items()}
