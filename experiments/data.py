"""Input pipeline for fine-tuning: datasets -> fixed-size numpy batches (tf.data).

Datasets (``--dataset``):

* ``digits`` (default): scikit-learn's ``load_digits``, 1,797 real 8x8 handwritten
  digits in 10 classes, shipped inside the scikit-learn wheel (no download).
  Upsampled to the network input. A fixed, stratified 20% is the validation set.
* ``folder:PATH``: one sub-folder per class, like Keras ``flow_from_directory``
  (``PATH/<class>/**/<image>``), split by ``validation_split``; or a split layout
  ``PATH/train/<class>/...`` with ``val/`` or ``validation/`` and ``test/`` beside it
  (also ``seg_train`` style names), and one redundant nesting level anywhere
  (Kaggle's ``seg_train/seg_train/<class>``). Separate ``validation_dataset`` and
  ``test_dataset`` folders may be given. Class folders named like splits and
  single-class datasets are refused (see ``resolve_folder_layout``).
  Every file is checked up front with PIL in a thread pool: unreadable, truncated
  and non-image files are skipped, odd formats (grayscale 16-bit, RGBA, palette,
  CMYK, BMP/GIF/TIFF/WebP...) are converted once to 8-bit RGB PNGs in a cache
  folder, with counts in a warning, so no file can fail mid-epoch.
* ``tfds:NAME``: a prepared TensorFlow Datasets dataset (``data_dir``); its
  ``validation`` split, else the last ``validation_split`` of train; ``test`` is
  the test split.

Evaluation geometry (resize, crop) is ``inception_jax.preprocessing.resize_crop_box``,
shared with the PIL path; the resize itself is ``tf.image.resize`` with
antialiasing, rounded to 8-bit values as PIL's resize is.

Determinism: the order of epoch ``e`` is a permutation drawn from ``(seed, e)``
and every random augmentation of an example is drawn from ``(seed, e, example)``
with TF stateless ops, so the batches of a global step do not depend on thread
timing, and a resumed run reproduces them from the step number alone.

Multi-host: every process builds the same global order and reads only its own
rows of each global batch (rows ``[p * B/P, (p + 1) * B/P)``), so the batches the
processes hand to ``shard_batch`` together form the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any, Iterator

import numpy as np

from inception_jax.preprocessing import CROP_MODES, INTERPOLATIONS, Preprocessing  # noqa: F401  pylint: disable=unused-import
from inception_jax.preprocessing import resize_crop_box

from experiments import folders


@functools.cache
def _tf():
  """TensorFlow, imported when the first pipeline is built; only tf.data uses it.

  Not at import time, so that a dataset that cannot be used (too few images for
  one batch, a missing folder...) is refused before TensorFlow's ~5 s import;
  after JAX, as the experiments import it (TensorFlow first and then torch or timm
  crashes the process); and kept off any accelerator.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  return tf


log = logging.getLogger(__name__)

# Keras ImageDataGenerator fill modes -> ImageProjectiveTransformV3 names.
FILL_MODES = {'nearest': 'NEAREST', 'constant': 'CONSTANT', 'reflect': 'REFLECT',
              'wrap': 'WRAP'}
# The split of the default dataset does not depend on --seed, so runs with
# different seeds are scored on the same validation images.
SPLIT_SEED = 0


DataError = folders.DataError
MIN_IMAGE_SIDE = folders.MIN_IMAGE_SIDE
_check_image = folders.check_image  # the tests' name for it


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation: Keras ``ImageDataGenerator`` options plus Inception crops.

  Ranges follow Keras: ``rotation_range`` and ``shear_range`` in degrees (uniform in
  ``[-r, r]``); shifts are fractions of the side when < 1, else pixels; zoom ``z``
  samples horizontal and vertical factors in ``[1 - z, 1 + z]`` (> 1 zooms out);
  ``fill_mode`` fills pixels that come from outside the image (``cval`` for
  'constant'); flips happen with probability 0.5.
  ``random_resized_crop`` is the Inception crop (area 8%-100%, aspect 3/4-4/3)
  taken from the decoded image before resizing.

  The transform matrix equals Keras ``apply_affine_transform``'s (tested side by
  side), with two deliberate differences: the centre is the true image centre
  (Keras's is off for non-square images), and ``width_shift_range`` moves the
  image horizontally as documented (Keras's legacy generator feeds
  ``height_shift_range`` to the horizontal shift and vice versa).
  """
  horizontal_flip: bool = False
  vertical_flip: bool = False
  rotation_range: float = 0.0
  width_shift_range: float = 0.0
  height_shift_range: float = 0.0
  shear_range: float = 0.0
  zoom_range: float = 0.0
  fill_mode: str = 'nearest'
  cval: float = 0.0
  random_resized_crop: bool = False
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

  def __post_init__(self):
    if self.fill_mode not in FILL_MODES:
      raise DataError(f'fill_mode must be one of {sorted(FILL_MODES)}, got '
                      f'{self.fill_mode!r}')
    for name in ('rotation_range', 'width_shift_range', 'height_shift_range',
                 'shear_range', 'zoom_range'):
      if getattr(self, name) < 0:
        raise DataError(f'{name} must be >= 0, got {getattr(self, name)}')
    if self.zoom_range >= 1:
      raise DataError(f'zoom_range must be < 1 (factors in [1 - z, 1 + z]), got '
                      f'{self.zoom_range}')

  @property
  def affine(self) -> bool:
    return bool(self.rotation_range or self.width_shift_range or
                self.height_shift_range or self.shear_range or self.zoom_range)

  @property
  def enabled(self) -> bool:
    return bool(self.affine or self.horizontal_flip or self.vertical_flip or
                self.random_resized_crop)


@dataclasses.dataclass
class Split:
  """One split of a dataset: where its examples come from.

  Attributes:
    kind: 'array' (``images`` uint8 [N, h, w, c] in memory), 'files' (``paths``
      of JPEG/PNG files) or 'tfds' (``make`` returns a fresh tf.data.Dataset of
      ``(image uint8 [h, w, c], label)`` in a fixed order).
    labels: int labels [N] (for 'tfds' only when known).
    num_examples: N.
    sources: what each example is, for reports: the original file path (``paths``
      may point at a converted copy), or ``split[i]`` for in-memory data.
  """
  kind: str
  num_examples: int
  labels: np.ndarray | None = None
  images: np.ndarray | None = None
  paths: np.ndarray | None = None
  make: Any = None
  sources: np.ndarray | None = None

  def source_names(self) -> list[str]:
    """One name per example (file path, or ``#index``)."""
    if self.sources is not None:
      return [str(x) for x in self.sources]
    return [f'#{i}' for i in range(self.num_examples)]

  def class_counts(self, num_classes: int) -> np.ndarray | None:
    if self.labels is None:
      return None
    return np.bincount(self.labels, minlength=num_classes)


@dataclasses.dataclass
class Dataset:
  """A loaded dataset: splits, class names and what the bad-file scan did.

  ``layout`` says where each split came from (for the log and the run record).
  """
  name: str
  class_names: list[str]
  train: Split
  val: Split | None
  report: dict[str, Any] = dataclasses.field(default_factory=dict)
  test: Split | None = None
  layout: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# ----------------------------------------------------------------------------- loading


def load_dataset(spec: str, *, validation_split: float = 0.2, data_dir: str | None = None,
                 cache_dir: str | None = None, seed: int = SPLIT_SEED,
                 num_threads: int | None = None, validation_dataset: str | None = None,
                 test_dataset: str | None = None) -> Dataset:
  """Loads ``digits``, ``folder:PATH`` or ``tfds:NAME`` (see the module docstring).

  Args:
    spec: the ``--dataset`` string.
    validation_split: fraction of each class held out when the dataset has no
      validation split of its own (0 = no validation).
    data_dir: TFDS data directory.
    cache_dir: where converted images and the scan manifest of a folder go.
    seed: seed of the train/validation split.
    num_threads: threads of the folder scan.
    validation_dataset: a folder of class folders used for validation instead of
      the dataset's own validation split (or a held-out fraction).
    test_dataset: a folder of class folders used as the test split.

  Returns:
    A ``Dataset``.

  Raises:
    DataError: missing path, empty class, unknown TFDS name... before any compile.
  """
  if not 0.0 <= validation_split < 1.0:
    raise DataError(f'validation_split must be in [0, 1), got {validation_split}')
  if validation_dataset:
    validation_split = 0.0
  kind, sep, arg = spec.partition(':')
  if spec == 'digits':
    ds = _load_digits(validation_split or 0.0, seed)
  elif sep and kind == 'folder' and arg:
    ds = _load_folder(arg, validation_split, cache_dir, seed, num_threads)
  elif sep and kind == 'tfds' and arg:
    ds = _load_tfds(arg, validation_split, data_dir)
  else:
    raise DataError(f'unknown dataset {spec!r}: use "digits", "folder:PATH" (one '
                    'sub-folder of images per class) or "tfds:NAME"')
  for role, extra in (('validation', validation_dataset), ('test', test_dataset)):
    if extra:
      split = load_class_folder(extra, ds.class_names, f'--{role}_dataset',
                                cache_dir=cache_dir, num_threads=num_threads,
                                reference=ds.name)
      if role == 'validation':
        ds.val = split
      else:
        ds.test = split
      ds.layout[role] = folders.resolve_class_folder(extra, f'--{role}_dataset')
  return ds


def load_class_folder(path: str, class_names: list[str], what: str, *,
                      cache_dir: str | None = None, num_threads: int | None = None,
                      reference: str = 'the model', subset_ok: bool = False) -> Split:
  """One labelled split from a folder of class folders, labelled by ``class_names``.

  Refuses a folder whose class names differ from ``class_names`` (naming the
  difference; with ``subset_ok`` only names ``class_names`` lacks) and skips
  unreadable files like the training folders.
  """
  root = folders.resolve_class_folder(path, what)
  names, files = folders.list_class_dirs(root, min_classes=1)
  if subset_ok and set(names) <= set(class_names):
    pass
  else:
    folders.check_class_names(class_names, names, f'{what} {root}', reference)
  paths = [f for n in names for f in files[n]]
  labels = [class_names.index(n) for n in names for _ in files[n]]
  usable, counts, examples = folders.scan(paths, cache_dir or folders.default_cache_dir(root),
                                          num_threads)
  _warn_bad_files(root, counts, examples, len(paths), cache_dir)
  keep = [i for i, u in enumerate(usable) if u is not None]
  if not keep:
    raise DataError(f'{what} {root}: no readable image ({dict(counts)})')
  return Split('files', len(keep), labels=np.array(labels, np.int32)[keep],
               paths=np.array([usable[i] for i in keep]),
               sources=np.array([paths[i] for i in keep]))


def _stratified_split(labels: np.ndarray, fraction: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Indices (train, val): ``round(fraction * n_c)`` random examples of each class."""
  rng = np.random.default_rng(seed)
  train, val = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    k = int(round(fraction * len(idx)))
    if fraction > 0 and k == len(idx):
      k = len(idx) - 1
    val.append(idx[:k])
    train.append(idx[k:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _load_digits(validation_split: float, seed: int) -> Dataset:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  # 16 grey levels -> 0..255, one channel [N, 8, 8, 1].
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  tr, va = _stratified_split(labels, validation_split, seed)
  names = [str(c) for c in digits.target_names]

  def split(idx):
    return Split('array', len(idx), labels=labels[idx], images=images[idx],
                 sources=np.array([f'digits[{i}]' for i in idx]))

  return Dataset('digits', names, split(tr), split(va) if len(va) else None,
                 layout=dict(train='digits', validation=f'{validation_split:g} of digits'))


# ------------------------------------------------------------------------------ folders


def _warn_bad_files(root, counts, examples, n_files, cache_dir) -> dict[str, Any]:
  n_skip = sum(v for k, v in counts.items() if k.startswith('skipped'))
  n_conv = sum(v for k, v in counts.items() if k.startswith('converted'))
  reasons = dict(sorted((k, v) for k, v in counts.items() if k != 'ok'))
  if n_skip or n_conv:
    detail = ', '.join(f'{v} {k}' for k, v in reasons.items())
    log.warning('folder:%s: %d of %d files skipped, %d converted to RGB PNG in %s '
                '(%s). First ones: %s', root, n_skip, n_files, n_conv, cache_dir,
                detail, '; '.join(examples[:5]))
  return dict(files=n_files, ok=counts.get('ok', 0), converted=n_conv, skipped=n_skip,
              reasons=reasons)


def _load_folder(root: str, validation_split: float, cache_dir: str | None, seed: int,
                 num_threads: int | None) -> Dataset:
  layout = folders.resolve_folder_layout(root)
  if layout.get('notes'):
    log.info('folder:%s: %s', root, layout['notes'])
  root = os.path.expanduser(root)
  cache_dir = cache_dir or folders.default_cache_dir(root)
  names, train_files = folders.list_class_dirs(layout['train'])
  per_split = {'train': train_files}
  for role in ('validation', 'test'):
    if role in layout:
      role_names, per_split[role] = folders.list_class_dirs(layout[role], min_classes=1)
      folders.check_class_names(names, role_names, f'the {role} split {layout[role]}',
                                f'the training split {layout["train"]}')
  split_ids = {'train': 0, 'validation': 1, 'test': 2}
  paths, labels, split_of = [], [], []
  for role, per_class in per_split.items():
    for name, fl in per_class.items():
      paths += fl
      labels += [names.index(name)] * len(fl)
      split_of += [split_ids[role]] * len(fl)
  t0 = time.time()
  usable, counts, examples = folders.scan(paths, cache_dir, num_threads)
  keep = np.array([u is not None for u in usable])
  paths_arr = np.array([u or '' for u in usable])
  sources_arr = np.array(paths)
  labels_arr = np.array(labels, np.int32)
  split_arr = np.array(split_of)
  report = _warn_bad_files(root, counts, examples, len(paths), cache_dir)
  report.update(cache_dir=cache_dir, scan_seconds=round(time.time() - t0, 2))

  for c, name in enumerate(names):
    if not np.any(keep & (labels_arr == c) & (split_arr == 0)):
      raise DataError(f'class {name!r} has no readable training image in '
                      f'{layout["train"]} (all its files were skipped: '
                      f'{report["reasons"]})')

  def make(mask):
    idx = np.flatnonzero(mask)
    return Split('files', len(idx), labels=labels_arr[idx], paths=paths_arr[idx],
                 sources=sources_arr[idx])

  test = make(keep & (split_arr == 2)) if 'test' in layout else None
  described = {k: v for k, v in layout.items() if k != 'notes'}
  if 'validation' in layout:
    train = make(keep & (split_arr == 0))
    val = make(keep & (split_arr == 1))
  else:
    idx = np.flatnonzero(keep & (split_arr == 0))
    tr, va = _stratified_split(labels_arr[idx], validation_split, seed)
    mask_tr = np.zeros(len(paths), bool)
    mask_tr[idx[tr]] = True
    mask_va = np.zeros(len(paths), bool)
    mask_va[idx[va]] = True
    train, val = make(mask_tr), make(mask_va)
    described['validation'] = f'{validation_split:g} of {layout["train"]}'
  return Dataset(f'folder:{root}', names, train, val if val.num_examples else None, report,
                 test=test if test is not None and test.num_examples else None,
                 layout=described)


# --------------------------------------------------------------------------------- TFDS


def _load_tfds(name: str, validation_split: float, data_dir: str | None) -> Dataset:
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(name, tfds.list_builders(), n=5)
    raise DataError(f'tfds:{name}: unknown TFDS dataset. '
                    f'{"Did you mean " + str(close) + "? " if close else ""}'
                    'See tfds.list_builders() for the names.') from None
  info = builder.info
  image_key, label_key = (info.supervised_keys or ('image', 'label'))[:2]
  features = info.features
  if image_key not in features or label_key not in features:
    raise DataError(f'tfds:{name} has no ({image_key!r}, {label_key!r}) image/label '
                    f'features (it has {list(features)}); pick an image '
                    'classification dataset')
  class_names = list(features[label_key].names)
  splits = list(info.splits.keys())

  def make_factory(split):
    def make():
      try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
      except AssertionError as e:  # tfds: "could not find data in ..."
        raise DataError(f'tfds:{name} is not prepared in {data_dir or "~/tensorflow_datasets"} '
                        f'({e}). Prepare it with `tfds build {name} --data_dir=DIR` on a '
                        'machine with internet and pass --data_dir=DIR') from None
      return ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
    return make

  def count(split):
    if split in info.splits:
      return info.splits[split].num_examples
    n = int(make_factory(split)().cardinality())
    if n < 0:
      n = int(make_factory(split)().reduce(0, lambda c, _: c + 1))
    return n

  # Mocked datasets (tfds.testing.mock_data) report no splits; every name works.
  # The test split stays the test split: model selection never sees it.
  test_split = 'test' if 'test' in splits or not splits else None
  if 'validation' in splits or not splits:
    train_split, val_split = 'train', 'validation'
  elif validation_split > 0:
    pct = int(round(100 * (1 - validation_split)))
    train_split, val_split = f'train[:{pct}%]', f'train[{pct}%:]'
  else:
    train_split, val_split = 'train', None
  train = Split('tfds', count(train_split), make=make_factory(train_split))
  val = (Split('tfds', count(val_split), make=make_factory(val_split))
         if val_split else None)
  test = (Split('tfds', count(test_split), make=make_factory(test_split))
          if test_split else None)
  log.info('tfds:%s: train split %r (%d), validation split %r (%s), test split %r (%s)',
           name, train_split, train.num_examples, val_split,
           val.num_examples if val else 'none', test_split,
           test.num_examples if test else 'none')
  return Dataset(f'tfds:{name}', class_names, train, val, test=test,
                 layout=dict(train=train_split, validation=str(val_split),
                             test=str(test_split)))


# ----------------------------------------------------------------------- image transforms


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """uint8 [h, w, 1|3|4] -> [h, w, 3]."""
  tf = _tf()
  c = tf.shape(image)[-1]
  image = tf.cond(c == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]),
                  lambda: image[..., :3])
  return tf.ensure_shape(image, [None, None, 3])


def _resize(image: tf.Tensor, h, w, interpolation: str) -> tf.Tensor:
  tf = _tf()
  return tf.image.resize(image, tf.stack([h, w]), method=interpolation, antialias=True)


def _resize_for_crop(image: tf.Tensor, prep: Preprocessing):
  """uint8 image -> (resized float image with 8-bit values, top, left) of the eval crop."""
  tf = _tf()
  shape = tf.shape(image)
  nh, nw, top, left = resize_crop_box(shape[0], shape[1], prep, minimum=tf.minimum)
  image = _resize(tf.cast(image, tf.float32), nh, nw, prep.interpolation)
  # PIL resizes 8-bit images to 8-bit values: round the same way.
  return tf.round(tf.clip_by_value(image, 0.0, 255.0)), top, left


def _resize_crop(image: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
  """The evaluation resize and central crop (``resize_crop_box``): float [S, S, 3]."""
  image, top, left = _resize_for_crop(image, prep)
  size = prep.image_size
  return image[top:top + size, left:left + size]


TTA_MODES = ('flip', 'multicrop')
# Multi-crop resizes to at least image_size / 0.875 so that the corner crops differ
# from the centre one (the ImageNet evaluation ratio, Inception-v3 paper 10-crop).
MULTICROP_PCT = 0.875


def num_views(tta: tuple[str, ...]) -> int:
  """Views per image of a test-time augmentation: 1, 2 (flip), 5 (crops) or 10."""
  return (5 if 'multicrop' in tta else 1) * (2 if 'flip' in tta else 1)


def eval_views(image: tf.Tensor, prep: Preprocessing, tta: tuple[str, ...] = ()
               ) -> tf.Tensor:
  """Decoded uint8 image -> normalised float32 ``[V, S, S, 3]`` test-time views.

  ``()``: the evaluation crop alone (V = 1). ``multicrop``: the four corners and
  the centre of the image resized to ``image_size / min(crop_pct, 0.875)``;
  ``flip``: every view and its left-right mirror.
  """
  tf = _tf()
  unknown = sorted(set(tta) - set(TTA_MODES))
  if unknown:
    raise DataError(f'unknown test-time augmentation {unknown}; use {TTA_MODES}')
  image = _to_rgb(image)
  size = prep.image_size
  if 'multicrop' in tta:
    wide = dataclasses.replace(prep, crop_pct=min(prep.crop_pct, MULTICROP_PCT))
    full, top, left = _resize_for_crop(image, wide)
    shape = tf.shape(full)
    bottom, right = shape[0] - size, shape[1] - size
    views = [full[y:y + size, x:x + size] for y, x in
             ((0, 0), (0, right), (bottom, 0), (bottom, right), (top, left))]
  else:
    views = [_resize_crop(image, prep)]
  if 'flip' in tta:
    views += [tf.reverse(v, [1]) for v in views]
  out = tf.stack([_normalise(v, prep) for v in views])
  return tf.ensure_shape(out, [len(views), size, size, 3])


def _normalise(image: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
  tf = _tf()
  mean = tf.constant(prep.mean, tf.float32) * 255.0
  std = tf.constant(prep.std, tf.float32) * 255.0
  return (image - mean) / std


def affine_matrix(theta, tx, ty, shear, zx, zy, height, width) -> tf.Tensor:
  """Keras ``apply_affine_transform`` as ImageProjectiveTransformV3's 8 numbers.

  Output pixel (x=column, y=row) samples the input at ``c + R T S Z (p - c)``
  (rotation, shift, shear, zoom composed in Keras's order, about the centre ``c``).
  Angles in radians, shifts in pixels.
  """
  tf = _tf()
  cos, sin = tf.cos(theta), tf.sin(theta)
  one, zero = tf.ones_like(theta), tf.zeros_like(theta)

  def mat(rows):
    return tf.stack([tf.stack(r) for r in rows])

  rot = mat([[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]])
  shift = mat([[one, zero, tx], [zero, one, ty], [zero, zero, one]])
  shr = mat([[one, -tf.sin(shear), zero], [zero, tf.cos(shear), zero],
             [zero, zero, one]])
  zoom = mat([[zx, zero, zero], [zero, zy, zero], [zero, zero, one]])
  cx = (tf.cast(width, tf.float32) - 1) / 2
  cy = (tf.cast(height, tf.float32) - 1) / 2
  to_c = mat([[one, zero, cx * one], [zero, one, cy * one], [zero, zero, one]])
  from_c = mat([[one, zero, -cx * one], [zero, one, -cy * one], [zero, zero, one]])
  m = to_c @ rot @ shift @ shr @ zoom @ from_c
  return tf.reshape(m, [-1])[:8]


def _uniform(seed, lo, hi):
  tf = _tf()
  return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi, dtype=tf.float32)


def augment(image: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
  """Keras-style affine transform and flips of a float [S, S, 3] image.

  Args:
    image: float32 pixels in [0, 255].
    seed: int32 [2] stateless seed of this example.
    aug: the options.

  Returns:
    The augmented image, same shape.
  """
  tf = _tf()
  seeds = tf.random.experimental.stateless_split(seed, 8)
  size = tf.shape(image)[0:2]
  h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
  if aug.affine:
    rad = math.pi / 180
    theta = _uniform(seeds[0], -aug.rotation_range, aug.rotation_range) * rad
    sx = _uniform(seeds[1], -aug.width_shift_range, aug.width_shift_range)
    sy = _uniform(seeds[2], -aug.height_shift_range, aug.height_shift_range)
    tx = sx * w if aug.width_shift_range < 1 else sx
    ty = sy * h if aug.height_shift_range < 1 else sy
    shear = _uniform(seeds[3], -aug.shear_range, aug.shear_range) * rad
    if aug.zoom_range:
      zx = _uniform(seeds[4], 1 - aug.zoom_range, 1 + aug.zoom_range)
      zy = _uniform(seeds[5], 1 - aug.zoom_range, 1 + aug.zoom_range)
    else:
      zx = zy = tf.constant(1.0)
    m = affine_matrix(theta, tx, ty, shear, zx, zy, size[0], size[1])
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=m[None], output_shape=size,
        fill_value=tf.constant(aug.cval, tf.float32), interpolation='BILINEAR',
        fill_mode=FILL_MODES[aug.fill_mode])[0]
  if aug.horizontal_flip:
    flip = _uniform(seeds[6], 0.0, 1.0) < 0.5
    image = tf.where(flip, tf.reverse(image, [1]), image)
  if aug.vertical_flip:
    flip = _uniform(seeds[7], 0.0, 1.0) < 0.5
    image = tf.where(flip, tf.reverse(image, [0]), image)
  return image


def train_transform(image: tf.Tensor, seed: tf.Tensor, prep: Preprocessing,
                    aug: Augmentation) -> tf.Tensor:
  """Decoded uint8 image -> augmented, normalised float32 [S, S, 3]."""
  tf = _tf()
  image = _to_rgb(image)
  size = prep.image_size
  if aug.random_resized_crop:
    crop_seed = tf.random.experimental.stateless_fold_in(seed, 1234)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=crop_seed, min_object_covered=0.0, aspect_ratio_range=aug.crop_ratio,
        area_range=aug.crop_scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, extent)
    image = _resize(tf.cast(image, tf.float32), size, size, prep.interpolation)
  else:
    # The evaluation geometry without the crop_pct margin (the whole shorter side).
    image = _resize_crop(image, dataclasses.replace(prep, crop_pct=1.0))
  if aug.affine or aug.horizontal_flip or aug.vertical_flip:
    image = augment(image, seed, aug)
  image = tf.clip_by_value(image, 0.0, 255.0)  # bicubic overshoot
  return tf.ensure_shape(_normalise(image, prep), [size, size, 3])


def eval_transform(image: tf.Tensor, prep: Preprocessing) -> tf.Tensor:
  """Decoded uint8 image -> resize, crop (``resize_crop_box``), normalise."""
  tf = _tf()
  size = prep.image_size
  image = _resize_crop(_to_rgb(image), prep)
  return tf.ensure_shape(_normalise(image, prep), [size, size, 3])


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  """File -> uint8 [h, w, 3]. JPEGs with the accurate integer IDCT, as PIL decodes
  them (TF's default fast IDCT is about one grey level off on average)."""
  tf = _tf()
  contents = tf.io.read_file(path)
  return tf.cond(
      tf.io.is_jpeg(contents),
      lambda: tf.io.decode_jpeg(contents, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))


# ------------------------------------------------------------------------------ batching


@dataclasses.dataclass
class Batch:
  """One process's rows of a global batch (numpy)."""
  images: np.ndarray   # float32 [B/P, S, S, 3], normalised
  labels: np.ndarray   # int32 [B/P]
  mask: np.ndarray     # float32 [B/P]; 0 for padding rows (evaluation only)


class Pipeline:
  """Deterministic, sharded tf.data pipeline over one split.

  Args:
    split: the examples.
    prep: network input preprocessing.
    aug: training augmentation (ignored by ``eval_batches``).
    global_batch_size: B, the batch of one step over all processes.
    seed: data seed (order and augmentation).
    process_index, process_count: this process's rows of every global batch.
  """

  def __init__(self, split: Split, prep: Preprocessing, aug: Augmentation | None = None,
               *, global_batch_size: int, seed: int = 0, process_index: int = 0,
               process_count: int = 1):
    if global_batch_size % process_count:
      raise DataError(f'batch_size {global_batch_size} is not divisible by the '
                      f'{process_count} processes')
    self.split = split
    self.prep = prep
    self.aug = aug or Augmentation()
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count

  @property
  def steps_per_epoch(self) -> int:
    """Full global batches per epoch (the last partial batch is dropped)."""
    return self.split.num_examples // self.global_batch_size

  @property
  def eval_batches_count(self) -> int:
    return -(-self.split.num_examples // self.global_batch_size)

  def _rows(self) -> tuple[int, int]:
    lo = self.process_index * self.local_batch_size
    return lo, lo + self.local_batch_size

  def _source(self, indices: np.ndarray) -> tf.data.Dataset:
    """(uint8 image, label) of the given example indices, in order."""
    tf = _tf()
    s = self.split
    if s.kind == 'array':
      images = tf.constant(s.images)
      labels = tf.constant(s.labels, tf.int32)
      ds = tf.data.Dataset.from_tensor_slices(indices)
      return ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)))
    if s.kind == 'files':
      ds = tf.data.Dataset.from_tensor_slices((s.paths[indices], s.labels[indices]))
      return ds.map(lambda p, y: (_decode_file(p), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    raise AssertionError(s.kind)

  def _epoch_dataset(self, epoch: int, start_step: int) -> tf.data.Dataset:
    """This process's examples of ``epoch`` from ``start_step``, as (image, label, seed)."""
    tf = _tf()
    spe, gb = self.steps_per_epoch, self.global_batch_size
    lo, hi = self._rows()
    base_seed = tf.constant([self.seed, epoch], tf.int64)
    if self.split.kind == 'tfds':
      # A stream: shuffle with a per-epoch seed (identical on every process), then
      # keep this process's rows of every global batch.
      ds = self.split.make()
      ds = ds.shuffle(min(self.split.num_examples, 16384),
                      seed=(self.seed * 1_000_003 + epoch) % 2**31, reshuffle_each_iteration=False)
      ds = ds.take(spe * gb).enumerate().skip(start_step * gb)
      ds = ds.filter(lambda i, ex: tf.logical_and(i % gb >= lo, i % gb < hi))
      return ds.map(lambda i, ex: (ex[0], ex[1], tf.random.experimental.stateless_fold_in(
          tf.cast(base_seed, tf.int32), tf.cast(i, tf.int32))))
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(self.split.num_examples)[:spe * gb].reshape(spe, gb)
    mine = order[start_step:, lo:hi].reshape(-1)
    src = self._source(mine)
    ids = tf.data.Dataset.from_tensor_slices(mine.astype(np.int32))
    return tf.data.Dataset.zip(src, ids).map(
        lambda ex, i: (ex[0], ex[1], tf.random.experimental.stateless_fold_in(
            tf.cast(base_seed, tf.int32), i)))

  def train_dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
    """Batches of one epoch from ``start_step``: (images, labels) tensors."""
    tf = _tf()
    prep, aug = self.prep, self.aug
    ds = self._epoch_dataset(epoch, start_step)
    ds = ds.map(lambda im, y, s: (train_transform(im, s, prep, aug), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(self.local_batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def train_batches(self, start_step: int = 0, end_step: int | None = None
                    ) -> Iterator[tuple[int, Batch]]:
    """(global step, Batch) for steps ``start_step .. end_step - 1`` across epochs.

    The batch of a step depends only on (seed, step), so resuming at ``start_step``
    reproduces an uninterrupted run.
    """
    spe = self.steps_per_epoch
    if spe < 1:
      raise DataError(f'the training split has {self.split.num_examples} examples, '
                      f'fewer than one batch of {self.global_batch_size}; lower '
                      '--batch_size')
    step = start_step
    while end_step is None or step < end_step:
      epoch, in_epoch = divmod(step, spe)
      for images, labels in self.train_dataset(epoch, in_epoch).as_numpy_iterator():
        yield step, Batch(images, labels.astype(np.int32),
                          np.ones(len(labels), np.float32))
        step += 1
        if end_step is not None and step >= end_step:
          return

  def eval_batches(self, tta: tuple[str, ...] = ()) -> Iterator[Batch]:
    """The whole split in order, padded to full global batches (mask 0 on padding).

    With test-time augmentation ``tta`` (see ``eval_views``) the images are
    ``[b, V, S, S, 3]``.
    """
    tf = _tf()
    n, gb = self.split.num_examples, self.global_batch_size
    total = self.eval_batches_count * gb
    lo, hi = self._rows()
    prep = self.prep
    if tta:
      transform = lambda im: eval_views(im, prep, tuple(tta))
      shape = [num_views(tta), prep.image_size, prep.image_size, 3]
    else:
      transform = lambda im: eval_transform(im, prep)
      shape = [prep.image_size, prep.image_size, 3]
    if self.split.kind == 'tfds':
      ds = self.split.make().map(lambda im, y: (transform(im), y, 1.0),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      pad = tf.data.Dataset.from_tensors(
          (tf.zeros(shape), tf.constant(0, tf.int32), 0.0)).repeat(total - n)
      ds = ds.concatenate(pad).enumerate()
      ds = ds.filter(lambda i, ex: tf.logical_and(i % gb >= lo, i % gb < hi))
      ds = ds.map(lambda i, ex: ex)
    else:
      order = np.concatenate([np.arange(n), np.zeros(total - n, np.int64)])
      valid = (np.arange(total) < n).astype(np.float32)
      mine = order.reshape(-1, gb)[:, lo:hi].reshape(-1)
      mine_valid = valid.reshape(-1, gb)[:, lo:hi].reshape(-1)
      ds = tf.data.Dataset.zip(self._source(mine),
                               tf.data.Dataset.from_tensor_slices(mine_valid))
      ds = ds.map(lambda ex, m: (transform(ex[0]), ex[1], m),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(self.local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    for images, labels, mask in ds.as_numpy_iterator():
      yield Batch(images, labels.astype(np.int32), mask.astype(np.float32))


# ----------------------------------------------------------------------------- benchmark


def cpu_cores() -> int:
  """Cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def measure_pipeline(dataset_spec: str, image_size: int, batch_size: int,
                     seconds: float, augmentation: Augmentation | None = None,
                     data_dir: str | None = None) -> float:
  """Training-pipeline throughput: images per second per CPU core.

  Runs the training input pipeline (decode, default augmentation = Inception
  random-resized crop + horizontal flip, normalisation, batching) alone for about
  ``seconds`` after one warm-up batch.

  Args:
    dataset_spec: as ``--dataset`` (``digits``, ``folder:PATH``, ``tfds:NAME``).
    image_size: output side.
    batch_size: batch size.
    seconds: measuring time.
    augmentation: defaults to random_resized_crop + horizontal_flip.
    data_dir: TFDS data directory.

  Returns:
    Images per second divided by the cores available to the process.
  """
  data = load_dataset(dataset_spec, validation_split=0.0, data_dir=data_dir)
  aug = augmentation or Augmentation(random_resized_crop=True, horizontal_flip=True)
  pipe = Pipeline(data.train, Preprocessing(image_size), aug,
                  global_batch_size=batch_size)
  it = pipe.train_batches()
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    _, b = next(it)
    n += len(b.labels)
  return n / (time.perf_counter() - t0) / cpu_cores()
