"""Input pipeline: datasets, bad files, augmentation, determinism, sharding."""

import os
import struct
import zlib

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: F401  (JAX before TensorFlow, as the experiments do)
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from experiments import data

SIZE = 24


def _png16_rgb(path, arr):
  """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
  h, w, _ = arr.shape
  raw = b''.join(b'\x00' + arr[y].astype('>u2').tobytes() for y in range(h))

  def chunk(t, d):
    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))

  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def _rgb(seed, h=40, w=30):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# name -> (writer, expected status prefix)
def _bad_files(d):
  """Writes every kind of odd file into folder ``d``; returns expected statuses."""
  os.makedirs(d, exist_ok=True)
  p = lambda n: os.path.join(d, n)  # noqa: E731
  Image.fromarray(_rgb(1)).save(p('good.jpg'))
  Image.fromarray(_rgb(2)).save(p('good.png'))
  Image.fromarray(_rgb(3)[..., 0]).save(p('gray8.png'))  # mode L: kept
  Image.fromarray(np.full((20, 20), 30000, np.uint16)).save(p('gray16.png'))  # I;16
  _png16_rgb(p('rgb16.png'), np.full((20, 20, 3), 40000, np.uint16))
  Image.fromarray(np.dstack([_rgb(4), np.full((40, 30), 128, np.uint8)])).save(p('rgba.png'))
  Image.fromarray(_rgb(5)).convert('P').save(p('palette.png'))
  Image.fromarray(np.full((20, 20, 4), 100, np.uint8), 'CMYK').save(p('cmyk.jpg'))
  Image.fromarray(_rgb(6)).save(p('bitmap.bmp'))
  Image.fromarray(_rgb(7)).save(p('anim.gif'))
  Image.fromarray(_rgb(8)).save(p('photo.tiff'))
  Image.fromarray(_rgb(9)).save(p('actually_png.jpg'), format='PNG')  # wrong extension
  with open(p('good.jpg'), 'rb') as f:
    jpeg = f.read()
  with open(p('truncated.jpg'), 'wb') as f:
    f.write(jpeg[:len(jpeg) // 2])
  with open(p('garbage.jpg'), 'wb') as f:
    f.write(os.urandom(500))
  with open(p('notes.txt'), 'w') as f:
    f.write('not an image\n')
  open(p('empty.png'), 'wb').close()
  Image.fromarray(_rgb(10, 2, 2)).save(p('tiny.png'))
  ok = ['good.jpg', 'good.png', 'gray8.png', 'rgb16.png', 'actually_png.jpg']
  converted = ['gray16.png', 'rgba.png', 'palette.png', 'cmyk.jpg', 'bitmap.bmp',
               'anim.gif', 'photo.tiff']
  skipped = ['truncated.jpg', 'garbage.jpg', 'notes.txt', 'empty.png', 'tiny.png']
  return ok, converted, skipped


@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('bad')
  for c in ('cat', 'dog'):
    ok, converted, skipped = _bad_files(os.path.join(root, 'ds', c))
    for i in range(3):  # a few more plain images per class
      Image.fromarray(_rgb(100 + i)).save(os.path.join(root, 'ds', c, f'extra{i}.jpg'))
  return str(root / 'ds'), str(root / 'cache'), (ok, converted, skipped)


def test_bad_files_are_converted_or_skipped_and_a_full_epoch_runs(bad_folder, caplog):
  root, cache, (ok, converted, skipped) = bad_folder
  with caplog.at_level('WARNING'):
    ds = data.load_dataset(f'folder:{root}', validation_split=0.25, cache_dir=cache)
  per_class = len(ok) + len(converted) + len(skipped) + 3
  r = ds.report
  assert r['files'] == 2 * per_class
  assert r['skipped'] == 2 * len(skipped)
  assert r['converted'] == 2 * len(converted)
  assert r['ok'] == 2 * (len(ok) + 3)
  assert 'skipped' in caplog.text and 'converted' in caplog.text
  assert ds.class_names == ['cat', 'dog']
  usable = 2 * (len(ok) + len(converted) + 3)
  assert ds.train.num_examples + ds.val.num_examples == usable
  # Every kept file decodes in TensorFlow: a whole epoch and the validation pass run.
  prep = data.Preprocessing(SIZE)
  aug = data.Augmentation(random_resized_crop=True, rotation_range=30, horizontal_flip=True)
  pipe = data.Pipeline(ds.train, prep, aug, global_batch_size=4, seed=0)
  n = 0
  for _, b in pipe.train_batches(0, pipe.steps_per_epoch):
    assert b.images.shape == (4, SIZE, SIZE, 3) and np.isfinite(b.images).all()
    n += 1
  assert n == pipe.steps_per_epoch
  val = data.Pipeline(ds.val, prep, global_batch_size=4)
  assert sum(b.mask.sum() for b in val.eval_batches()) == ds.val.num_examples


def test_sixteen_bit_grayscale_is_scaled_not_clipped(bad_folder):
  root, cache, _ = bad_folder
  usable, status = data._check_image(os.path.join(root, 'cat', 'gray16.png'), cache)
  assert status.startswith('converted')
  px = np.asarray(Image.open(usable))
  assert px.shape == (20, 20, 3)
  # 30000 / 65535 of full scale = 30000 / 257 = 116.7 -> 117 (PIL's convert clips to 255).
  assert (px == 117).all()


def test_statuses_per_kind(tmp_path):
  ok, converted, skipped = _bad_files(str(tmp_path / 'c'))
  for name, want in [(n, 'ok') for n in ok] + [(n, 'converted') for n in converted] + [
      (n, 'skipped') for n in skipped]:
    _, status = data._check_image(str(tmp_path / 'c' / name), str(tmp_path / 'cache'))
    assert status.startswith(want), (name, status)


def test_folder_layout_errors(tmp_path):
  with pytest.raises(data.DataError, match='no such directory'):
    data.load_dataset(f'folder:{tmp_path}/missing')
  (tmp_path / 'a' / 'cat').mkdir(parents=True)
  (tmp_path / 'a' / 'dog').mkdir()
  Image.fromarray(_rgb(0)).save(tmp_path / 'a' / 'cat' / 'x.png')
  with pytest.raises(data.DataError, match='dog is empty'):
    data.load_dataset(f'folder:{tmp_path}/a', cache_dir=str(tmp_path / 'cache'))
  (tmp_path / 'b').mkdir()
  Image.fromarray(_rgb(0)).save(tmp_path / 'b' / 'x.png')
  with pytest.raises(data.DataError, match='no class sub-folders'):
    data.load_dataset(f'folder:{tmp_path}/b')
  (tmp_path / 'c' / 'cat').mkdir(parents=True)
  (tmp_path / 'c' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8junk')
  (tmp_path / 'c' / 'dog').mkdir()
  Image.fromarray(_rgb(0)).save(tmp_path / 'c' / 'dog' / 'x.png')
  with pytest.raises(data.DataError, match="class 'cat' has no readable"):
    data.load_dataset(f'folder:{tmp_path}/c', cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(data.DataError, match='unknown dataset'):
    data.load_dataset('imagenet')


def _tree(root, spec, n=2):
  """Writes ``n`` PNGs into every folder of ``spec`` ('a/b/cls' paths under root)."""
  for d in spec:
    os.makedirs(root / d, exist_ok=True)
    for i in range(n):
      Image.fromarray(_rgb(i)).save(root / d / f'{i}.png')


def _load(root, **kw):
  return data.load_dataset(f'folder:{root}', cache_dir=str(root) + '_cache', **kw)


def test_split_layouts(tmp_path):
  # train/ + val/ + test/.
  _tree(tmp_path / 'a', ['train/cat', 'train/dog', 'val/cat', 'val/dog', 'test/cat',
                         'test/dog'], n=3)
  ds = _load(tmp_path / 'a')
  assert ds.class_names == ['cat', 'dog']
  assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (6, 6, 6)
  assert list(ds.val.labels) == [0, 0, 0, 1, 1, 1]
  assert ds.test.source_names()[0].endswith(os.path.join('test', 'cat', '0.png'))
  # Kaggle: seg_train/seg_train/<class>, seg_test/seg_test/<class>, seg_pred/seg_pred/.
  _tree(tmp_path / 'k', ['seg_train/seg_train/sea', 'seg_train/seg_train/forest',
                         'seg_train/seg_train/street', 'seg_test/seg_test/sea',
                         'seg_test/seg_test/forest', 'seg_test/seg_test/street',
                         'seg_pred/seg_pred'], n=4)
  ds = _load(tmp_path / 'k', validation_split=0.25)
  assert ds.class_names == ['forest', 'sea', 'street']
  assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (9, 3, 12)
  # Pointing at one split unwraps its redundant level instead of learning 1 class.
  ds = _load(tmp_path / 'k' / 'seg_train', validation_split=0.25)
  assert ds.class_names == ['forest', 'sea', 'street'] and ds.test is None
  # A wrapper folder above the splits, train + validation only.
  _tree(tmp_path / 'w', ['archive/Training/x', 'archive/Training/y', 'archive/Validation/x',
                         'archive/Validation/y'])
  ds = _load(tmp_path / 'w')
  assert (ds.train.num_examples, ds.val.num_examples, ds.test) == (4, 4, None)
  # Separate --validation_dataset / --test_dataset folders.
  ds = data.load_dataset(f'folder:{tmp_path}/k/seg_train', cache_dir=str(tmp_path / 'c'),
                         validation_dataset=f'folder:{tmp_path}/k/seg_test',
                         test_dataset=str(tmp_path / 'k' / 'seg_test' / 'seg_test'))
  assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (12, 12, 12)


def test_split_named_classes_and_single_class_are_refused(tmp_path):
  # A test split unpacked inside the training split.
  _tree(tmp_path / 'a', ['cat', 'dog', 'test/cat', 'test/dog'])
  with pytest.raises(data.DataError, match=r'class folders named like dataset splits '
                     r'\(test\).*folder:.*a/test'):
    _load(tmp_path / 'a')
  _tree(tmp_path / 'a2', ['data/train', 'data/test'])  # images directly in train/, test/
  with pytest.raises(data.DataError, match='train has no class sub-folders'):
    _load(tmp_path / 'a2')
  _tree(tmp_path / 'b', ['test/cat', 'test/dog'])
  with pytest.raises(data.DataError, match='no training split'):
    _load(tmp_path / 'b')
  _tree(tmp_path / 'c', ['cats'])
  with pytest.raises(data.DataError, match='only one class folder .cats/.*two classes'):
    _load(tmp_path / 'c')
  _tree(tmp_path / 'd', ['train/cat', 'train/dog', 'val/cat', 'val/dog', 'extra/x'])
  with pytest.raises(data.DataError, match='mixes split folders'):
    _load(tmp_path / 'd')
  _tree(tmp_path / 'e', ['train/cat', 'train/dog', 'val/cat', 'val/bird'])
  with pytest.raises(data.DataError, match=r"not in .*\['bird'\].*missing from .*\['dog'\]"):
    _load(tmp_path / 'e')


def test_split_role_names():
  from experiments import folders
  for name, role in [('train', 'train'), ('Training', 'train'), ('seg_train', 'train'),
                     ('val', 'validation'), ('VALID', 'validation'), ('dev', 'validation'),
                     ('validation', 'validation'), ('seg_test', 'test'), ('Testing', 'test'),
                     ('seg_pred', 'predict'), ('trains', None), ('training_shoes', None),
                     ('cat', None), ('contest', None)]:
    assert folders.split_role(name) == role, name


def _jpegs(tmp_path):
  """Real photos (scikit-learn's two sample JPEGs) re-encoded at odd sizes and shapes."""
  from sklearn.datasets import load_sample_images
  paths = []
  for i, im in enumerate(load_sample_images().images):  # 427x640 RGB
    for j, a in enumerate([im, im.transpose(1, 0, 2)[:301], im[:250, :333]]):
      p = str(tmp_path / f'{i}_{j}.jpg')
      Image.fromarray(np.ascontiguousarray(a)).save(p, quality=90)
      paths.append(p)
  return paths


def test_pil_and_tf_data_evaluation_agree_on_jpegs(tmp_path):
  from inception_jax import preprocessing
  paths = _jpegs(tmp_path)
  split = data.Split('files', len(paths), labels=np.zeros(len(paths), np.int32),
                     paths=np.array(paths))
  for prep, max_levels in [
      (data.Preprocessing(75), 1.0),
      (data.Preprocessing(299, crop_pct=0.875, interpolation='bicubic'), None),
      (data.Preprocessing(96, crop_pct=0.9, crop_mode='squash'), 1.0),
      (data.Preprocessing(64, interpolation='nearest', mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225)), None)]:
    tf_images = next(data.Pipeline(split, prep, global_batch_size=len(paths))
                     .eval_batches()).images
    pil_images = np.stack([preprocessing.eval_transform(p, prep) for p in paths])
    assert tf_images.shape == pil_images.shape
    # In 8-bit levels: same geometry and decoder; the resamplers round differently.
    levels = np.abs(tf_images - pil_images) * 255 * np.array(prep.std)
    assert levels.mean() < 0.2, (prep, levels.mean())
    if max_levels is not None:  # bilinear: PIL's two 8-bit passes vs one float pass
      assert levels.max() <= max_levels + 1e-3, (prep, levels.max())
    else:  # bicubic overshoot clipped between PIL's passes; nearest ties at .5
      assert np.mean(levels > 1.001) < 0.005, (prep, np.mean(levels > 1.001))


def test_resize_crop_box_is_torchvision_geometry():
  from inception_jax import preprocessing
  prep = data.Preprocessing(299, crop_pct=299 / 342)  # torchvision v3: Resize(342)
  for h, w in [(375, 500), (500, 375), (342, 342), (343, 1000), (299, 300), (1001, 777)]:
    # torchvision Resize(342): shorter side 342, longer int(342 * long / short);
    # CenterCrop(299): offsets int(round((dim - 299) / 2.0)).
    short, long = min(h, w), max(h, w)
    nh, nw = (342, int(342 * long / short)) if h <= w else (int(342 * long / short), 342)
    want = (nh, nw, int(round((nh - 299) / 2.0)), int(round((nw - 299) / 2.0)))
    assert preprocessing.resize_crop_box(h, w, prep) == want, (h, w)
    got = preprocessing.resize_crop_box(tf.constant(h), tf.constant(w), prep,
                                        minimum=tf.minimum)
    assert tuple(int(x) for x in got) == want, (h, w)
  squash = data.Preprocessing(100, crop_mode='squash')
  assert preprocessing.resize_crop_box(40, 300, squash) == (100, 100, 0, 0)


def test_tta_views(digits):
  prep = data.Preprocessing(SIZE)
  pipe = data.Pipeline(digits.val, prep, global_batch_size=8)
  plain = next(pipe.eval_batches()).images
  flip = next(pipe.eval_batches(tta=('flip',))).images
  assert flip.shape == (8, 2, SIZE, SIZE, 3)
  np.testing.assert_array_equal(flip[:, 0], plain)
  np.testing.assert_array_equal(flip[:, 1], plain[:, :, ::-1])
  both = next(pipe.eval_batches(tta=('flip', 'multicrop'))).images
  assert both.shape == (8, 10, SIZE, SIZE, 3) and data.num_views(('flip', 'multicrop')) == 10
  np.testing.assert_array_equal(both[:, 5:], both[:, :5, :, ::-1])
  # The corner crops of the 8x8 digit resized to SIZE / 0.875 differ from the centre.
  assert not np.allclose(both[:, 0], both[:, 4])


def test_digits_split_is_stratified_and_fixed():
  ds = data.load_dataset('digits')
  assert ds.num_classes == 10
  assert ds.train.num_examples + ds.val.num_examples == 1797  # sklearn's count
  counts = ds.val.class_counts(10)
  assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
  again = data.load_dataset('digits')
  np.testing.assert_array_equal(ds.val.images, again.val.images)


@pytest.fixture(scope='module')
def digits():
  return data.load_dataset('digits')


def _first(pipe, step=0):
  return next(pipe.train_batches(step, step + 1))[1]


AUGS = dict(horizontal_flip=dict(horizontal_flip=True), vertical_flip=dict(vertical_flip=True),
            rotation=dict(rotation_range=40), width_shift=dict(width_shift_range=0.2),
            height_shift=dict(height_shift_range=0.2), shear=dict(shear_range=30),
            zoom=dict(zoom_range=0.3), crop=dict(random_resized_crop=True),
            reflect=dict(rotation_range=40, fill_mode='reflect'),
            wrap=dict(width_shift_range=0.3, fill_mode='wrap'),
            constant=dict(zoom_range=0.3, fill_mode='constant', cval=255.0))


@pytest.mark.parametrize('name', sorted(AUGS))
def test_augmentation_is_seeded_and_changes_images(digits, name):
  prep = data.Preprocessing(SIZE)
  aug = data.Augmentation(**AUGS[name])
  make = lambda seed, a: data.Pipeline(digits.train, prep, a, global_batch_size=16,  # noqa: E731
                                       seed=seed)
  a, b = _first(make(3, aug)), _first(make(3, aug))
  np.testing.assert_array_equal(a.images, b.images)
  plain = _first(make(3, data.Augmentation()))
  np.testing.assert_array_equal(a.labels, plain.labels)  # same order, same examples
  assert not np.allclose(a.images, plain.images)
  other = _first(make(4, aug))
  assert not np.array_equal(other.images, a.images)


def test_affine_transform_matches_keras():
  """Same matrix composition as Keras apply_affine_transform (scipy reference).

  Square image: Keras centres its transform at (h/2, w/2) with the axes swapped,
  which is off-centre for non-square images; ours uses the true centre.
  """
  from keras.src.legacy.preprocessing import image as keras_image
  x = np.random.default_rng(0).uniform(0, 255, (11, 11, 3)).astype(np.float32)
  params = dict(theta=25.0, tx=1.0, ty=-2.0, shear=10.0, zx=0.8, zy=1.2)
  m = data.affine_matrix(*(tf.constant(v, tf.float32) for v in (
      np.deg2rad(25.0), 1.0, -2.0, np.deg2rad(10.0), 0.8, 1.2)), 11, 11)
  ours = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=m[None], output_shape=[11, 11], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='NEAREST')[0].numpy()
  ref = keras_image.apply_affine_transform(x, row_axis=0, col_axis=1, channel_axis=2,
                                           fill_mode='nearest', order=1, **params)
  np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_width_shift_moves_columns():
  # Output column c samples input column c + tx (hand computation).
  x = np.random.default_rng(1).uniform(0, 255, (6, 8, 1)).astype(np.float32)
  m = data.affine_matrix(*(tf.constant(v, tf.float32) for v in (0., 2., 0., 0., 1., 1.)), 6, 8)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=m[None], output_shape=[6, 8], fill_value=0.0,
      interpolation='BILINEAR', fill_mode='CONSTANT')[0].numpy()
  np.testing.assert_allclose(out[:, :6], x[:, 2:], atol=1e-4)
  np.testing.assert_array_equal(out[:, 6:], 0)


def test_resume_and_process_shards_reproduce_batches(digits):
  prep = data.Preprocessing(SIZE)
  aug = data.Augmentation(rotation_range=20, horizontal_flip=True)
  full = data.Pipeline(digits.train, prep, aug, global_batch_size=16, seed=7)
  spe = full.steps_per_epoch
  # Steps spanning an epoch boundary, from the start and resumed.
  ref = {s: b for s, b in full.train_batches(spe - 2, spe + 2)}
  resumed = {s: b for s, b in full.train_batches(spe, spe + 2)}
  for s in resumed:
    np.testing.assert_array_equal(resumed[s].images, ref[s].images)
  assert not np.array_equal(ref[spe - 1].labels, ref[spe].labels)
  # Two processes each read their rows of the same global batches.
  parts = [data.Pipeline(digits.train, prep, aug, global_batch_size=16, seed=7,
                         process_index=p, process_count=2) for p in range(2)]
  got = [_first(p, spe) for p in parts]
  np.testing.assert_array_equal(np.concatenate([g.images for g in got]), ref[spe].images)
  np.testing.assert_array_equal(np.concatenate([g.labels for g in got]), ref[spe].labels)


def test_eval_batches_cover_the_split_once(digits):
  prep = data.Preprocessing(SIZE, crop_pct=0.875)
  n = digits.val.num_examples
  parts = [data.Pipeline(digits.val, prep, global_batch_size=64, process_index=p,
                         process_count=2) for p in range(2)]
  batches = [list(p.eval_batches()) for p in parts]
  assert len(batches[0]) == -(-n // 64)
  labels = np.concatenate([np.concatenate([b0.labels[b0.mask > 0], b1.labels[b1.mask > 0]])
                           for b0, b1 in zip(*batches)])
  np.testing.assert_array_equal(labels, digits.val.labels)


def test_preprocessing_normalises_to_minus_one_one(digits):
  b = next(data.Pipeline(digits.val, data.Preprocessing(SIZE),
                         global_batch_size=32).eval_batches())
  assert b.images.min() >= -1.0 and b.images.max() <= 1.0
  # Digit backgrounds are 0 -> -1; strokes reach 16/16 -> +1.
  assert np.isclose(b.images.min(), -1.0) and b.images.max() > 0.9


def test_tfds_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load_dataset('tfds:mnist')
    assert ds.num_classes == 10 and ds.train.num_examples == 24
    prep = data.Preprocessing(SIZE)
    full = data.Pipeline(ds.train, prep, data.Augmentation(horizontal_flip=True),
                         global_batch_size=8, seed=1)
    batches = [b for _, b in full.train_batches(0, 3)]
    assert batches[0].images.shape == (8, SIZE, SIZE, 3)  # grayscale -> 3 channels
    again = [b for _, b in full.train_batches(2, 3)]
    np.testing.assert_array_equal(again[0].images, batches[2].images)
    half = data.Pipeline(ds.train, prep, data.Augmentation(horizontal_flip=True),
                         global_batch_size=8, seed=1, process_index=1, process_count=2)
    np.testing.assert_array_equal(_first(half).images, batches[0].images[4:])
    val = data.Pipeline(ds.val, prep, global_batch_size=16)
    assert sum(b.mask.sum() for b in val.eval_batches()) == 24
  with pytest.raises(data.DataError, match='unknown TFDS dataset.*mnist'):
    data.load_dataset('tfds:mnits')


def test_measure_pipeline_reports_per_core_rate():
  rate = data.measure_pipeline('digits', SIZE, 32, seconds=0.5)
  assert rate > 0
