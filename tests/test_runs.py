"""Run directories, resume safety, the inference file and the library loader.

One tiny run (``tiny_test_net`` on a generated 3-class folder with train/val/test
splits, trained in this process) is shared by the module; tests that need their own
run use ``--steps`` of a few steps.
"""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from flax import nnx
from PIL import Image

import inception_jax as ij
from experiments import finetune
from experiments import runs as runs_lib
from inception_jax import inference
from inception_jax import weights
from test_finetune import TINY  # registers tiny_test_net

pytestmark = pytest.mark.slow  # reference libraries or trained runs: minutes on CPU

CLASSES = ['blue', 'green', 'red']


def make_folder(root, per_class=(12, 4, 4), seed=0):
  """Noisy, differently sized images whose dominant colour is the class."""
  rng = np.random.default_rng(seed)
  colour = {'red': (200, 40, 40), 'green': (40, 200, 40), 'blue': (40, 40, 200)}
  for split, n in zip(('train', 'val', 'test'), per_class):
    for c in CLASSES:
      d = root / split / c
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        h, w = rng.integers(20, 48, 2)
        img = np.clip(np.array(colour[c]) + rng.normal(0, 40, (h, w, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(d / f'{c}{i}.jpg', quality=90)
  return root


def train(workdir, **kw):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['finetune'])
  with flagsaver.flagsaver(**{**TINY, 'workdir': str(workdir), **kw}):
    return finetune.run()


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return make_folder(tmp_path_factory.mktemp('colours') / 'data')


@pytest.fixture(scope='module')
def tiny_run(folder, tmp_path_factory):
  """3 epochs of 2 steps on the colour folder, evaluated every epoch."""
  workdir = tmp_path_factory.mktemp('runs') / 'tiny'
  out = train(workdir, dataset=f'folder:{folder}', batch_size=16, epochs=3,
              learning_rate=3e-3, cache_dir=str(folder) + '_cache')
  return workdir, out


def test_run_directory_records(tiny_run):
  workdir, out = tiny_run
  for name in ('flags.json', 'flags.txt', 'run.json', 'best.safetensors', 'summary.md',
               'metrics/evals.jsonl', 'plots/curves.png'):
    assert (workdir / name).stat().st_size > 0, name
  record = json.loads((workdir / 'run.json').read_text())
  assert record['status'] == 'finished'
  assert record['class_names'] == CLASSES
  assert (record['train_images'], record['validation_images'], record['test_images']) == (
      36, 12, 12)
  assert record['params'] == weights.num_weights(ij.create_model(pretrained=str(workdir)))
  assert record['best']['step'] == out['best']['step']
  assert len(record['attempts']) == 1 and record['attempts'][0]['end_step'] == 6
  assert record['wall_seconds'] > 0
  flags_json = json.loads((workdir / 'flags.json').read_text())
  assert flags_json['learning_rate'] == 3e-3 and 'workdir' not in flags_json
  # flags.txt replays: parsed back, it gives the same settings.
  argv = flags.FLAGS.read_flags_from_files([f'--flagfile={workdir / "flags.txt"}'],
                                           force_gnu=False)
  with flagsaver.flagsaver():
    flags.FLAGS(['finetune'] + argv)
    replayed = {k: v for k, v in finetune._flag_values().items()
                if k not in runs_lib.PLUMBING}
  assert json.loads(json.dumps(replayed)) == flags_json


def test_rerun_with_other_settings_is_refused_with_a_diff(tiny_run, folder):
  workdir, _ = tiny_run
  before = {p: (workdir / p).read_bytes() for p in ('flags.json', 'summary.md', 'run.json')}
  with pytest.raises(finetune.RunError) as e:
    train(workdir, dataset=f'folder:{folder}', batch_size=16, epochs=4,
          learning_rate=1e-2, cache_dir=str(folder) + '_cache')
  msg = str(e.value)
  assert '--epochs' in msg and 'run: 3' in msg and 'now: 4' in msg
  assert '--learning_rate' in msg and 'run: 0.003' in msg and 'now: 0.01' in msg
  assert 'flags.txt' in msg
  # Process plumbing may differ; nothing of the run was touched.
  assert {p: (workdir / p).read_bytes() for p in before} == before


def test_finished_run_resumed_trains_nothing(tiny_run, folder):
  workdir, _ = tiny_run
  out = train(workdir, dataset=f'folder:{folder}', batch_size=16, epochs=3,
              learning_rate=3e-3, cache_dir=str(folder) + '_cache', keep_checkpoints=5)
  assert out['complete'] and out['steps'] == 6


def test_inference_file_equals_the_checkpoint(tiny_run):
  workdir, out = tiny_run
  best_step = out['best']['step']
  clf = ij.load(str(workdir))
  assert clf.class_names == tuple(CLASSES)
  assert clf.preprocessing.image_size == 24 and clf.preprocessing.crop_mode == 'center'
  assert clf.info['step'] == best_step and clf.info['kind'] == inference.KIND
  model, names, prep = clf  # unpacks like a tuple
  from_ckpt = ij.load(str(workdir), checkpoint=best_step)
  x = jax.random.normal(jax.random.key(0), (4, 24, 24, 3))
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(from_ckpt.model(x)))
  # create_model(pretrained=RUN_DIR) needs no optimizer settings and no name.
  m = ij.create_model(pretrained=str(workdir))
  np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(model(x)))
  assert m.num_classes == 3
  arrays, config = weights.load(str(workdir / 'best.safetensors'))
  assert not any(k.startswith(('AuxLogits', 'opt')) for k in arrays)
  assert config['class_names'] == CLASSES and config['arch'] == 'tiny_test_net'
  # Fine-tuning from a run: the backbone kept, a new classifier.
  m5 = ij.create_model('tiny_test_net', pretrained=str(workdir), num_classes=5)
  assert m5.num_classes == 5
  np.testing.assert_array_equal(np.asarray(m5.Mixed_5b.Branch_0.Conv2d_0a_1x1.conv.kernel[...]),
                                arrays['Mixed_5b/Branch_0/Conv2d_0a_1x1/conv/kernel'])
  latest = ij.load(str(workdir), checkpoint='latest')
  assert latest.info['step'] == 6


def test_library_predict_on_files(tiny_run, folder):
  workdir, _ = tiny_run
  clf = ij.load(str(workdir))
  files = sorted(str(p) for p in (folder / 'test' / 'red').iterdir())[:2]
  top = clf.predict(files, top_k=2)
  assert len(top) == 2 and all(len(t) == 2 for t in top)
  assert all(name in CLASSES and 0 <= p <= 1 for t in top for name, p in t)


def test_load_errors_name_the_fix(tiny_run, tmp_path):
  workdir, _ = tiny_run
  with pytest.raises(FileNotFoundError, match='no such run directory or file'):
    ij.load(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='not a run directory'):
    ij.load(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 999.*available'):
    ij.load(str(workdir), checkpoint=999)
  with pytest.raises(inference.RunLoadError, match='holds a tiny_test_net model'):
    ij.create_model('inception_v3', pretrained=str(workdir))


def test_interrupted_write_keeps_the_previous_inference_file(tiny_run, tmp_path,
                                                              monkeypatch):
  workdir, _ = tiny_run
  path = tmp_path / 'best.safetensors'
  path.write_bytes((workdir / 'best.safetensors').read_bytes())
  good = path.read_bytes()
  clf = ij.load(str(workdir))

  def dies_half_way(arrays, filename, metadata=None):
    with open(filename, 'wb') as f:
      f.write(b'\x00' * 100)  # a partial file, then the process "dies"
    raise KeyboardInterrupt

  monkeypatch.setattr(weights.st_numpy, 'save_file', dies_half_way)
  with pytest.raises(KeyboardInterrupt):
    inference.save_classifier(str(path), clf.model, CLASSES, clf.preprocessing, step=1)
  assert path.read_bytes() == good
  assert os.listdir(tmp_path) == ['best.safetensors']  # no temporary file left
