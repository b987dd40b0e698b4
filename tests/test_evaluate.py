"""The commands after training: evaluate, predict, ensemble, extract_features.

No training: run directories are written directly (flags.json and run.json as
finetune writes them, ``best.safetensors`` by ``inference.save_classifier``) from
randomly initialised two-layer networks (``tiny_test_net`` of test_finetune, and a
wider variant as "another architecture"), on a generated 3-class folder with
train/val/test splits. The commands run in this process (8 fake CPU devices, so
every forward pass is data-parallel with a padded last batch); one subprocess
checks the command line itself (exit status 2, no traceback, no TensorFlow).
Reference values: hand computations on fixed logits, scikit-learn's metrics, and
the network applied by hand to the pipeline's images.
"""

import csv
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import inception_jax as ij
from experiments import data as data_lib
from experiments import ensemble
from experiments import evaluate
from experiments import evaluation as ev
from experiments import extract_features
from experiments import finetune
from experiments import outputs
from experiments import predict
from experiments import report
from experiments import runs as runs_lib
from inception_jax import inference
from inception_jax import preprocessing as prep_lib
from test_finetune import ROOT, TINY_ARCH  # registers tiny_test_net
from test_runs import CLASSES, make_folder

WIDE_ARCH = '''
from inception_jax import registry, specs
if 'tiny_test_net_wide' not in registry.list_models():
  registry.register_arch(specs.ArchSpec(
      name='tiny_test_net_wide',
      layers=(specs.Conv('Conv2d_1a_3x3', 12, 3, stride=2, padding='VALID'),
              specs.Mixed('Mixed_5b', ((specs.Conv('Conv2d_0a_1x1', 12, 1),),))),
      default_size=32, defaults={}))
'''
exec(WIDE_ARCH)  # pylint: disable=exec-used


# ------------------------------------------------------------------------- fixtures


def write_run(run_dir, data, *, seed=0, arch='tiny_test_net', image_size=24,
              class_names=CLASSES, layout=True, test_images=12):
  """A finished run directory as finetune leaves it, with a random model."""
  model = ij.create_model(arch, num_classes=len(class_names), rngs=nnx.Rngs(seed))
  # Random BN statistics, so evaluation uses them (not the identity of a fresh net).
  rng = np.random.default_rng(seed)
  stats = nnx.state(model, nnx.BatchStat)
  stats = jax.tree.map_with_path(
      lambda path, v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape)
                                  if any(getattr(k, 'key', '') == 'var' for k in path)
                                  else rng.normal(0, 0.1, v.shape), v.dtype), stats)
  nnx.update(model, stats)
  hp = {k: v for k, v in finetune._flag_defaults().items() if k not in runs_lib.PLUMBING}
  hp.update(arch=arch, dataset=f'folder:{data}', image_size=image_size)
  runs_lib.write_flags(str(run_dir), hp, finetune.COMMAND)
  splits = dict(train=str(data / 'train'), validation=str(data / 'val'),
                test=str(data / 'test'))
  runs_lib.RunRecord(str(run_dir)).update(
      status='finished', arch=arch, dataset=f'folder:{data}',
      layout=splits if layout else {}, class_names=list(class_names),
      num_classes=len(class_names), train_images=36, validation_images=12,
      test_images=test_images if layout else 0, image_size=image_size)
  prep = prep_lib.Preprocessing(image_size)
  inference.save_classifier(str(run_dir / inference.RUN_FILE), model, class_names, prep,
                            step=6, epoch=3.0, selected='best val_top1 (step 6)')
  return run_dir


@pytest.fixture(scope='session')
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp('evalx')
  data = make_folder(root / 'data')
  runs = dict(a=write_run(root / 'run_a', data, seed=0),
              b=write_run(root / 'run_b', data, seed=1, image_size=32),
              wide=write_run(root / 'run_wide', data, seed=2, arch='tiny_test_net_wide'))
  other = root / 'other_classes'
  for c in ('blue', 'green', 'purple'):
    (other / c).mkdir(parents=True)
    Image.new('RGB', (20, 20), (90, 10, 200)).save(other / c / 'x.png')
  return dict(root=root, data=data, runs=runs, other=other)


def by_hand(run_dir, split, flip=False):
  """log-softmax of the network applied without sharding to the pipeline's images."""
  clf = ij.load(str(run_dir))
  images = np.concatenate([b.images[b.mask > 0] for b in data_lib.Pipeline(
      split, clf.preprocessing, global_batch_size=8).eval_batches()])
  logp = np.asarray(jax.nn.log_softmax(clf.model(jnp.asarray(images)), -1), np.float64)
  if flip:
    logp_f = np.asarray(jax.nn.log_softmax(clf.model(jnp.asarray(images[:, :, ::-1])), -1))
    logp = np.log((np.exp(logp) + np.exp(logp_f)) / 2)
  return logp, images, clf


def load_test_split(env, role='test'):
  return data_lib.load_class_folder(str(env['data'] / role), CLASSES, role)


# -------------------------------------------------------------------------- metrics


def test_metrics_on_fixed_logits():
  # 6 images, 3 classes; predictions (argmax) 0,0,1,2,2,0 for labels 0,0,1,1,2,2.
  logits = np.array([[3., 1, 0], [2, 1, 0], [0, 2, 1], [0, 1, 4], [1, 0, 2], [2, 1, 0]])
  labels = np.array([0, 0, 1, 1, 2, 2])
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  m = report.topk_metrics(logp, labels, k=2)
  assert m['top1'] == pytest.approx(4 / 6) and m['count'] == 6
  # top-2: image 3 (label 1, top-2 {2, 1}) is a hit, image 5 (label 2, top-2 {0, 1}) not.
  assert m['top5'] == pytest.approx(5 / 6)
  # Cross-entropy by hand: -log softmax of the true class.
  ce = [-(3 - np.log(np.e**3 + np.e + 1)), -(2 - np.log(np.e**2 + np.e + 1)),
        -(2 - np.log(1 + np.e**2 + np.e)), -(1 - np.log(1 + np.e + np.e**4)),
        -(2 - np.log(np.e + 1 + np.e**2)), -(0 - np.log(np.e**2 + np.e + 1))]
  assert m['loss'] == pytest.approx(np.mean(ce), rel=1e-12)
  cm = report.confusion_matrix(labels, report.predictions(logp), 3)
  np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 1, 1], [1, 0, 1]])
  s = report.per_class_metrics(cm)
  # class 0: tp 2, predicted 3, support 2; class 1: tp 1, pred 1, sup 2; class 2: 1, 2, 2.
  np.testing.assert_allclose(s['precision'], [2 / 3, 1, 1 / 2])
  np.testing.assert_allclose(s['recall'], [1, 1 / 2, 1 / 2])
  np.testing.assert_allclose(s['f1'], [2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5, 0.5])
  np.testing.assert_allclose(s['error'], [0, 0.5, 0.5])
  np.testing.assert_array_equal(s['confused_with'], [-1, 2, 0])
  np.testing.assert_array_equal(s['support'], [2, 2, 2])
  # Ties go to the lower class, as argmax.
  assert report.predictions(np.log(np.array([[0.4, 0.4, 0.2]])))[0] == 0
  # Predicted once, no images: precision 0, no recall, F1 0; neither: all undefined.
  s = report.per_class_metrics(np.array([[1, 1], [0, 0]]))
  assert s['precision'][1] == 0 and np.isnan(s['recall'][1]) and s['f1'][1] == 0
  s = report.per_class_metrics(np.array([[2, 0], [0, 0]]))
  assert np.isnan(s['precision'][1]) and np.isnan(s['recall'][1]) and np.isnan(s['f1'][1])
  # Never predicted, with images: no precision, recall 0, F1 0.
  s = report.per_class_metrics(np.array([[2, 0], [1, 0]]))
  assert np.isnan(s['precision'][1]) and s['f1'][1] == 0 and s['recall'][1] == 0


def test_per_class_metrics_match_scikit_learn():
  from sklearn import metrics as skm
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 7, 300)
  preds = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 7, 300))
  preds[preds == 6] = 5  # class 6 never predicted: precision ill-defined
  cm = report.confusion_matrix(labels, preds, 7)
  np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(7)))
  p, r, f, sup = skm.precision_recall_fscore_support(labels, preds, labels=range(7),
                                                     zero_division=np.nan)
  s = report.per_class_metrics(cm)
  np.testing.assert_allclose(s['precision'], p, equal_nan=True)
  np.testing.assert_allclose(s['recall'], r)
  np.testing.assert_allclose(s['f1'][:6], f[:6])
  assert s['f1'][6] == 0  # sklearn: nan with zero_division=nan, 0 with the default
  np.testing.assert_array_equal(s['support'], sup)
  macro = report.macro_averages(s)
  mp, mr, mf, _ = skm.precision_recall_fscore_support(labels, preds, labels=range(7),
                                                      average='macro', zero_division=0)
  assert (macro['precision'], macro['recall'], macro['f1']) == pytest.approx((mp, mr, mf))


def test_ensemble_average_and_greedy_selection_by_hand():
  p = [np.array([[0.6, 0.4], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.9, 0.1]])]
  avg = ev.average_log_probs([np.log(x) for x in p], [3, 1])
  np.testing.assert_allclose(np.exp(avg), 0.75 * p[0] + 0.25 * p[1])
  # Labels [0, 0]; true-class probabilities: #0 (.6, .5), loss 0.602; #1 (.2, .9)
  # 0.857; #2 (.6, .3) 0.857. Step 1 adds #0. Step 2: {0,0} 0.602; {0,1} (.4, .7)
  # 0.637; {0,2} (.6, .4) 0.714: #0 again, and again. Best: {#0} (the earliest).
  m2 = np.array([[0.6, 0.4], [0.3, 0.7]])
  lps = [np.log(p[0]), np.log(p[1]), np.log(m2)]
  counts, trace = ev.greedy_select(lps, np.array([0, 0]), steps=3)
  assert [t['added'] for t in trace] == [0, 0, 0]
  np.testing.assert_array_equal(counts, [1, 0, 0])
  assert trace[0]['score'][0] == pytest.approx(-(np.log(.6) + np.log(.5)) / 2)
  # Complementary members, labels [0, 1]: true-class probabilities a (.99, .05),
  # b (.05, .99), each alone 1.503 (tie: a, the lower index). Step 2: {a,a} 1.503,
  # {a,b} (.52, .52) 0.654: b. Step 3: {a,b,a} (.677, .363) 0.702 = {a,b,b}: a.
  # Step 4: {a,a,b,b} 0.654 < {a,a,a,b} (.755, .285) 0.768: b. The best ensemble is
  # the first with loss 0.654: one of each.
  a = np.array([[0.99, 0.01], [0.95, 0.05]])
  b = np.array([[0.05, 0.95], [0.01, 0.99]])
  counts, trace = ev.greedy_select([np.log(a), np.log(b)], np.array([0, 1]), steps=4)
  assert [t['added'] for t in trace] == [0, 1, 0, 1]
  np.testing.assert_array_equal(counts, [1, 1])
  assert trace[1]['score'][0] == pytest.approx(-np.log(0.52))
  assert trace[2]['score'][0] == pytest.approx(
      -(np.log((2 * .99 + .05) / 3) + np.log((2 * .05 + .99) / 3)) / 2)
  with pytest.raises(ev.UserError, match='non-negative'):
    ev.average_log_probs(lps, [1, -1, 0])


def test_tta_names():
  assert ev.parse_tta('flip,crop5') == ('flip', 'multicrop') == data_lib.TTA_MODES
  assert ev.parse_tta('') == () and ev.parse_tta('crop5') == ('multicrop',)
  assert data_lib.num_views(ev.parse_tta('crop5,flip')) == 10
  with pytest.raises(ev.UserError, match='unknown view'):
    ev.parse_tta('flip,rotate')


def test_confusion_plot_scales_from_2_to_100_classes_with_hangul(tmp_path):
  sizes = {}
  for k in (2, 100):
    names = [f'클래스_{i}' if i % 2 else f'class {i}' for i in range(k)]
    cm = np.diag(np.full(k, 7))
    cm[0, k - 1] = 3
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      outputs.plot_confusion(str(tmp_path / f'cm{k}.png'), cm, names)
    assert not [w for w in caught if 'missing from' in str(w.message)], caught
    sizes[k] = Image.open(tmp_path / f'cm{k}.png').size
  assert sizes[100][0] > 3 * sizes[2][0] and sizes[100][1] > 3 * sizes[2][1]


# ------------------------------------------------------------------------- evaluate


def test_evaluate_run_on_its_test_split(env):
  run_a = env['runs']['a']
  res = evaluate.run(['evaluate', f'--run={run_a}', '--batch_size=8'])
  out = res['out_dir']
  assert out == str(run_a / 'eval' / 'test-best')
  assert "the run's test split" in res['data']
  # The sharded, padded forward pass equals the network applied by hand.
  want, _, _ = by_hand(run_a, load_test_split(env))
  np.testing.assert_allclose(res['log_probs'], want, atol=2e-6)
  m = report.topk_metrics(want, res['labels'])
  assert (res['top1'], res['count']) == (m['top1'], 12)
  assert res['loss'] == pytest.approx(m['loss'], abs=1e-6)
  for f in ('summary.md', 'confusion_matrix.csv', 'confusion_matrix.png',
            'per_class_error.png', 'predictions.csv', 'misclassified.png'):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  # predictions.csv and confusion_matrix.csv tell the same story as the hand result.
  with open(os.path.join(out, 'predictions.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 12 and {r['true'] for r in rows} == set(CLASSES)
  pred = np.argmax(want, 1)
  assert [r['predicted'] for r in rows] == [CLASSES[i] for i in pred]
  np.testing.assert_allclose([float(r['probability']) for r in rows],
                             np.exp(want.max(1)), atol=1e-5)
  assert all(len(r['top3_classes'].split('|')) == 3 for r in rows)
  with open(os.path.join(out, 'confusion_matrix.csv')) as f:
    table = list(csv.reader(f))
  cm = np.array([[int(v) for v in row[1:]] for row in table[1:]])
  np.testing.assert_array_equal(cm, report.confusion_matrix(res['labels'], pred, 3))
  summary = open(os.path.join(out, 'summary.md')).read()
  for s in ('| class | images | precision | recall | F1 | error rate | errors | most '
            'confused with |', '| blue | 4 |', 'top-1', 'run.json test record | written'):
    assert s in summary, s
  record = json.loads((run_a / 'run.json').read_text())
  assert record['test']['count'] == 12 and record['test']['top1'] == res['top1']
  assert record['test']['step'] == 6


def test_evaluate_never_reuses_a_report_and_records_only_its_own_test(env):
  run_b = env['runs']['b']
  before = json.loads((run_b / 'run.json').read_text())
  tta = evaluate.run(['evaluate', f'--run={run_b}', '--tta=flip'])
  assert tta['out_dir'].endswith('test-best-flip') and not tta['recorded']
  want, _, _ = by_hand(run_b, load_test_split(env), flip=True)
  np.testing.assert_allclose(tta['log_probs'], want, atol=2e-6)
  val = evaluate.run(['evaluate', f'--run={run_b}', '--dataset=validation'])
  assert val['out_dir'].endswith('validation-best') and not val['recorded']
  again = evaluate.run(['evaluate', f'--run={run_b}', '--dataset=validation'])
  assert again['out_dir'].endswith('validation-best-2')
  assert os.path.exists(os.path.join(val['out_dir'], 'summary.md'))
  after = json.loads((run_b / 'run.json').read_text())
  assert 'test' not in after and after == before  # nothing recorded from these
  with pytest.raises(ev.UserError, match='--overwrite'):
    evaluate.run(['evaluate', f'--run={run_b}', f'--output_dir={val["out_dir"]}'])


def test_a_changed_test_split_is_not_recorded(env, tmp_path):
  run = write_run(tmp_path / 'run', env['data'], test_images=13)  # one file gone since
  res = evaluate.run(['evaluate', f'--run={run}', f'--dataset=folder:{env["data"]}/test'])
  assert "the test split of run" in res['data'] and not res['recorded']
  assert 'test' not in json.loads((run / 'run.json').read_text())
  assert '12 readable images now, 13 when the run was trained' in open(
      os.path.join(res['out_dir'], 'summary.md')).read()


def test_evaluate_skips_an_unreadable_image_and_names_it(env, tmp_path):
  data = tmp_path / 'test'
  for c in CLASSES:
    (data / c).mkdir(parents=True)
    for i in range(2):
      Image.new('RGB', (30, 26), (40 + 80 * i, 90, 160)).save(data / c / f'{i}.png')
  (data / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
  res = evaluate.run(['evaluate', f'--run={env["runs"]["a"]}', f'--dataset=folder:{data}',
                      f'--output_dir={tmp_path / "out"}'])
  assert res['count'] == 6 and not res['recorded']
  summary = (tmp_path / 'out' / 'summary.md').read_text()
  assert 'unreadable files left out | 1:' in summary and 'broken.jpg' in summary


@pytest.mark.parametrize('case', ['missing_run', 'not_a_run', 'no_checkpoints',
                                  'other_arch', 'classes', 'empty_root', 'split_named',
                                  'empty_class', 'all_unreadable', 'weights_no_data'])
def test_evaluate_refuses_bad_input_naming_the_fix(env, tmp_path, case):
  run_a = env['runs']['a']
  args = [f'--run={run_a}']
  if case == 'missing_run':
    args, want = [f'--run={tmp_path / "nope"}'], 'no such run directory'
  elif case == 'not_a_run':
    args, want = [f'--run={tmp_path}'], 'not a run directory of experiments.finetune'
  elif case == 'no_checkpoints':
    args, want = [f'--run={run_a}', '--checkpoint=latest'], 'use --checkpoint=best'
  elif case == 'other_arch':
    bad = tmp_path / 'run'
    bad.mkdir()
    for f in ('flags.json', 'flags.txt', 'run.json'):
      (bad / f).write_bytes((run_a / f).read_bytes())
    (bad / 'best.safetensors').write_bytes(
        (env['runs']['wide'] / 'best.safetensors').read_bytes())
    args, want = [f'--run={bad}'], 'holds a tiny_test_net_wide model but'
  elif case == 'classes':
    args += [f'--dataset=folder:{env["other"]}']
    want = r"not in .*: \['purple'\].*missing from .*: \['red'\]"
  elif case == 'empty_root':
    (tmp_path / 'empty').mkdir()
    args += [f'--dataset=folder:{tmp_path / "empty"}']
    want = 'has no class sub-folders'
  elif case == 'split_named':
    for d in ('test', 'blue'):
      (tmp_path / 'sp' / d).mkdir(parents=True)
      Image.new('RGB', (9, 9)).save(tmp_path / 'sp' / d / 'x.png')
    args += [f'--dataset=folder:{tmp_path / "sp"}']
    want = 'named like dataset splits'
  elif case == 'empty_class':
    for c in CLASSES:
      (tmp_path / 'ec' / c).mkdir(parents=True)
    args += [f'--dataset=folder:{tmp_path / "ec"}']
    want = 'is empty: add images or remove the folder'
  elif case == 'all_unreadable':
    for c in CLASSES:
      (tmp_path / 'un' / c).mkdir(parents=True)
      (tmp_path / 'un' / c / 'a.jpg').write_text('text')
    args += [f'--dataset=folder:{tmp_path / "un"}']
    want = 'no readable image'
  else:
    args, want = ['--weights=inception_v3.tf_in1k'], '--weights needs --dataset'
  with pytest.raises(ev.user_errors(), match=want):
    evaluate.run(['evaluate'] + args)


CLI = TINY_ARCH + WIDE_ARCH + '''
import sys
from absl import app
from experiments import evaluation, {module}
sys.argv[0] = '{module}'
def report():
  print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)
import atexit
atexit.register(report)
app.run({module}.main, flags_parser=evaluation.make_flags_parser({module}.FLAGS, ''))
'''


def test_cli_errors_exit_2_without_traceback_before_tensorflow(env):
  r = subprocess.run(
      [sys.executable, '-c', CLI.replace('{module}', 'evaluate'), f'--run={env["runs"]["a"]}',
       f'--dataset=folder:{env["other"]}'], cwd=ROOT, capture_output=True, text=True,
      env=dict(os.environ, CI='true', PYTHONPATH=ROOT), timeout=300)
  assert r.returncode == 2, r.stderr
  assert 'error: the class folders of' in r.stderr and "['purple']" in r.stderr
  assert 'Traceback' not in r.stderr
  assert 'tensorflow imported: False' in r.stderr


# -------------------------------------------------------------------------- predict


def test_predict_files_folders_globs_and_an_unreadable_file(env, tmp_path):
  data, run_a = env['data'], env['runs']['a']
  bad = tmp_path / 'notes.jpg'
  bad.write_text('not an image')
  out = tmp_path / 'pred.csv'
  res = predict.run(['predict', f'--run={run_a}', '--top_k=2', f'--output={out}',
                     str(data / 'test' / 'red' / 'red0.jpg'), str(data / 'test' / 'blue'),
                     str(data / 'test' / 'g*' / '*.jpg'), str(bad), str(tmp_path / 'nope*')])
  paths = [p['path'] for p in res['predictions']]
  assert len(paths) == 1 + 4 + 4 and len(set(paths)) == 9
  assert {s[0] for s in res['skipped']} == {str(bad), str(tmp_path / 'nope*')}
  # The same numbers as the network applied by hand to those files.
  split = data_lib.Split('files', 9, labels=np.zeros(9, np.int32), paths=np.array(paths))
  clf = ij.load(str(run_a))
  images = np.concatenate([b.images[b.mask > 0] for b in data_lib.Pipeline(
      split, clf.preprocessing, global_batch_size=16).eval_batches()])
  probs = np.asarray(jax.nn.softmax(clf.model(jnp.asarray(images)), -1))
  for p, row in zip(res['predictions'], probs):
    top = np.argsort(-row)[:2]
    assert [c['class'] for c in p['top_k']] == [CLASSES[i] for i in top]
    np.testing.assert_allclose([c['probability'] for c in p['top_k']], row[top], atol=1e-5)
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 11 and rows[0]['class_1'] in CLASSES
  assert [r['error'] for r in rows if r['path'] == str(bad)] == ['skipped: not an image']
  js = tmp_path / 'pred.json'
  predict.run(['predict', f'--run={run_a}', f'--output={js}', str(data / 'test' / 'red')])
  doc = json.loads(js.read_text())
  assert len(doc['predictions']) == 4 and len(doc['predictions'][0]['top_k']) == 3
  with pytest.raises(ev.UserError, match='no image could be read'):
    predict.run(['predict', f'--run={run_a}', str(bad)])


def test_predict_averages_runs_and_refuses_other_classes(env, tmp_path):
  data, runs = env['data'], env['runs']
  files = [str(data / 'val' / c / f'{c}0.jpg') for c in CLASSES]
  a = predict.run(['predict', f'--run={runs["a"]}'] + files)['log_probs']
  b = predict.run(['predict', f'--run={runs["b"]}'] + files)['log_probs']  # 32x32 input
  ab = predict.run(['predict', f'--run={runs["a"]},{runs["b"]}'] + files)['log_probs']
  np.testing.assert_allclose(np.exp(ab), (np.exp(a) + np.exp(b)) / 2, atol=1e-6)
  other = write_run(tmp_path / 'run_c', data, class_names=['blue', 'green', 'yellow'])
  with pytest.raises(ev.UserError, match=r"only in run_c: \['yellow'\]; only in run_a: "
                                         r"\['red'\]"):
    predict.run(['predict', f'--run={runs["a"]},{other}'] + files)


# ------------------------------------------------------------------------- ensemble


def test_ensemble_of_identical_members_and_of_two(env, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the default report directory is ./evals/...
  runs = env['runs']
  one = evaluate.run(['evaluate', f'--run={runs["a"]}', '--record=false'])
  same = ensemble.run(['ensemble', f'--runs={runs["a"]},{runs["a"]}'])
  np.testing.assert_allclose(same['log_probs'], one['log_probs'], atol=1e-6)
  assert (same['top1'], same['top5']) == (one['top1'], one['top5'])
  assert same['loss'] == pytest.approx(one['loss'], abs=1e-6)
  b = evaluate.run(['evaluate', f'--run={runs["b"]}', '--record=false'])
  two = ensemble.run(['ensemble', f'--runs={runs["a"]},{runs["b"]}',
                      '--weights_per_run=3,1'])
  np.testing.assert_allclose(np.exp(two['log_probs']),
                             0.75 * np.exp(one['log_probs']) + 0.25 * np.exp(b['log_probs']),
                             atol=1e-6)
  assert two['members'][1]['loss'] == pytest.approx(b['loss'], abs=1e-6)
  summary = open(os.path.join(two['out_dir'], 'summary.md')).read()
  assert '## Members' in summary and '| 0.750 |' in summary and 'tiny_test_net' in summary
  assert os.path.getsize(os.path.join(two['out_dir'], 'confusion_matrix.png')) > 0


def test_ensemble_greedy_selects_on_validation_and_reports_on_test(env, tmp_path,
                                                                   monkeypatch):
  monkeypatch.chdir(tmp_path)
  runs = env['runs']
  res = ensemble.run(['ensemble', f'--runs={runs["a"]},{runs["b"]},{runs["wide"]}',
                      '--select=greedy', '--select_steps=4'])
  # The selection redone by hand on the members' validation log-probabilities.
  val = data_lib.load_class_folder(str(env['data'] / 'val'), CLASSES, 'val')
  lps = [by_hand(runs[k], val)[0] for k in ('a', 'b', 'wide')]
  counts, _ = ev.greedy_select(lps, val.labels, steps=4)
  np.testing.assert_allclose(res['weights'], counts / counts.sum())
  assert res['count'] == 12 and 'test split' in open(
      os.path.join(res['out_dir'], 'summary.md')).read()
  with pytest.raises(ev.UserError, match='same images'):
    ensemble.run(['ensemble', f'--runs={runs["a"]},{runs["b"]}', '--select=greedy',
                  '--dataset=validation'])


# ------------------------------------------------------------------ extract_features


def test_extract_features_equals_pooled_features_by_hand(env, tmp_path):
  run_a = env['runs']['a']
  out = tmp_path / 'f.npz'
  res = extract_features.run(['extract_features', f'--run={run_a}', '--dataset=test',
                              '--endpoint=Conv2d_1a_3x3', '--pooling=max',
                              f'--output={out}'])
  z = np.load(out)
  _, images, clf = by_hand(run_a, load_test_split(env))
  want = np.asarray(clf.model.features(jnp.asarray(images))['Conv2d_1a_3x3']).max((1, 2))
  assert z['features'].shape == (12, 8)
  np.testing.assert_allclose(z['features'], want, atol=1e-5)
  assert list(z['class_names']) == CLASSES and str(z['endpoint']) == 'Conv2d_1a_3x3'
  np.testing.assert_array_equal(z['labels'], load_test_split(env).labels)
  assert [os.path.basename(p) for p in z['paths']][:2] == ['blue0.jpg', 'blue1.jpg']
  # Default: the last endpoint, averaged; a folder labelled by its own class folders.
  res = extract_features.run(['extract_features', f'--run={run_a}',
                              f'--dataset=folder:{env["other"]}'])
  assert res['endpoint'] == 'Mixed_5b' and res['path'].endswith('other_classes-Mixed_5b-avg.npz')
  assert res['features'].shape == (3, 16) and res['class_names'] == ['blue', 'green', 'purple']
  with pytest.raises(ev.UserError, match='valid: Conv2d_1a_3x3, Mixed_5b'):
    extract_features.run(['extract_features', f'--run={run_a}', '--dataset=test',
                          '--endpoint=Mixed_6e'])
  with pytest.raises(ev.UserError, match='--overwrite'):
    extract_features.run(['extract_features', f'--run={run_a}', '--dataset=test',
                          f'--output={out}'])


# --------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_finetune_then_evaluate_predict_and_compare(tmp_path, monkeypatch):
  """A run trained by finetune: evaluate records its test metrics where compare reads
  them; the latest checkpoint (the same step) gives the inference file's numbers."""
  from experiments import compare
  from test_runs import train
  monkeypatch.chdir(tmp_path)
  data = make_folder(tmp_path / 'data')
  workdir = tmp_path / 'runs' / 'tiny'
  train(workdir, dataset=f'folder:{data}', batch_size=16, steps=2,
        cache_dir=str(tmp_path / 'cache'))
  best = evaluate.run(['evaluate', f'--run={workdir}'])
  assert best['recorded'] and best['count'] == 12
  (run,) = compare.find_runs([str(workdir)])
  assert run.test['top1'] == best['top1'] and run.test['count'] == 12
  latest = evaluate.run(['evaluate', f'--run={workdir}', '--checkpoint=latest'])
  assert latest['out_dir'].endswith('test-latest') and not latest['recorded']
  np.testing.assert_allclose(latest['log_probs'], best['log_probs'], atol=1e-6)
  res = predict.run(['predict', f'--run={workdir}', str(data / 'test')])
  np.testing.assert_allclose(res['log_probs'], best['log_probs'], atol=1e-6)


@pytest.mark.slow
def test_evaluate_ported_weights_on_a_folder_of_some_imagenet_classes(tmp_path,
                                                                       monkeypatch):
  """--weights=TAG: the tag's own preprocessing, ImageNet names; the folder holds two
  of the 1000 classes, so the report shows those rows and an (other) column."""
  from inception_jax import weights
  monkeypatch.setenv('INCEPTION_JAX_CACHE', str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  cfg = ij.get_pretrained_cfg('inception_v3.tf_in1k')
  abstract = nnx.eval_shape(lambda: ij.create_model('inception_v3', **dict(cfg.options)))
  rng = np.random.default_rng(0)
  arrays = {k: (np.abs(a) + 0.5 if k.endswith('/var') else a) for k, a in (
      (k, rng.normal(0, 0.05, v.shape).astype(np.float32))
      for k, v in weights.flat_state(abstract).items())}
  (tmp_path / 'cache').mkdir()
  weights.save(str(tmp_path / 'cache' / cfg.converted_file), arrays,
               {**cfg.to_dict(), 'include_top': True})
  names = prep_lib.imagenet_classes()
  for c in names[:2]:
    (tmp_path / 'few' / c).mkdir(parents=True)
    for i in range(2):
      Image.new('RGB', (50, 40), (30 * i, 120, 200)).save(tmp_path / 'few' / c / f'{i}.png')
  res = evaluate.run(['evaluate', '--weights=inception_v3.tf_in1k',
                      f'--dataset=folder:{tmp_path / "few"}', '--batch_size=8'])
  assert res['count'] == 4 and res['out_dir'].endswith(
      os.path.join('evals', 'inception_v3.tf_in1k-few'))
  summary = open(os.path.join(res['out_dir'], 'summary.md')).read()
  assert '299x299 (center, crop_pct 0.875, bicubic)' in summary  # the tag's transform
  assert f'| {names[0]} | 2 |' in summary and f'| {names[2]} |' not in summary
  with open(os.path.join(res['out_dir'], 'confusion_matrix.csv')) as f:
    table = list(csv.reader(f))
  assert table[0][1:3] == list(names[:2]) and len(table) == 3
  assert sum(int(v) for row in table[1:] for v in row[1:]) == 4
  with open(os.path.join(res['out_dir'], 'predictions.csv')) as f:
    assert all(r['predicted'] in names for r in csv.DictReader(f))
  with pytest.raises(ev.UserError, match=r"does not know: \['not_a_class'\]"):
    (tmp_path / 'few' / 'not_a_class').mkdir()
    Image.new('RGB', (50, 40)).save(tmp_path / 'few' / 'not_a_class' / 'x.png')
    evaluate.run(['evaluate', '--weights=inception_v3.tf_in1k',
                  f'--dataset=folder:{tmp_path / "few"}'])
