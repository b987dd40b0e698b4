r"""Evaluate a trained run (or ported ImageNet weights) on labelled images.

  python -m experiments.evaluate --run=runs/inception_v3-flowers-20261201-101500
  python -m experiments.evaluate --run=RUN --checkpoint=latest --dataset=folder:~/flowers_new
  python -m experiments.evaluate --run=RUN --tta=flip,crop5
  python -m experiments.evaluate --weights=inception_v3.tf_in1k --dataset=folder:~/imagenet_few

Prints top-1, top-5, the loss (cross-entropy) and the image count, and writes a
report directory: ``summary.md`` (per-class precision, recall, F1, error rate,
support, most-confused-with), ``confusion_matrix.csv`` / ``.png``,
``per_class_error.png``, ``predictions.csv`` (path, true, predicted, probability,
top-5) and ``misclassified.png`` (the most confident mistakes).

Data (``--dataset``): by default the run's test split if it had one, else its
validation split (said in the output); ``test``, ``validation`` or ``train`` for
a run's own split (rebuilt from its flags as finetune built it); ``folder:PATH``,
a folder of class folders whose names must be the run's classes (for ImageNet
weights: some of the 1000 ImageNet class names); ``tfds:NAME``.

Output: ``--output_dir``, by default ``RUN/eval/<dataset>-<checkpoint>[-<tta>]``
(``./evals/<weights>-<dataset>`` for weights). A default directory that exists
is never reused: the new report goes to ``...-2``, ``...-3``; an explicit
``--output_dir`` that holds files is refused unless ``--overwrite``.

The run's record (``run.json``, read by ``experiments.compare``) gets a ``test``
section only when this is the run's own test split, the best checkpoint, no
test-time augmentation and the same images the run had: never numbers that did
not come from the run's own protocol.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

import inception_jax  # pylint: disable=g-bad-import-order

inception_jax.configure_xla()  # its XLA:CPU flags, before JAX starts its CPU client

from experiments import evaluation as ev  # pylint: disable=g-import-not-at-top,g-bad-import-order
from experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top

FLAGS = flags.FlagValues()
flags.DEFINE_string('run', None, 'Run directory of experiments.finetune.', flag_values=FLAGS)
flags.DEFINE_string('weights', None, 'Ported weights instead of a run: a tag '
                    '(inception_v3.tf_in1k) or a converted file; needs --dataset.',
                    flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', 'best (the run\'s best.safetensors), latest, '
                    'or a step number.', flag_values=FLAGS)
flags.DEFINE_string('dataset', None, 'folder:PATH, tfds:NAME, or the run\'s own split: '
                    'test, validation, train. Default: the run\'s test split, else its '
                    'validation split.', flag_values=FLAGS)
flags.DEFINE_string('tta', '', 'Test-time augmentation: flip, crop5 (four corners and '
                    'the centre) or flip,crop5; probabilities averaged over the views.',
                    flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 32, 'Global batch (rounded up to a multiple of the '
                     'devices).', flag_values=FLAGS)
flags.DEFINE_integer('num_devices', None, 'Local devices to use (default all).',
                     flag_values=FLAGS)
flags.DEFINE_string('output_dir', None, 'Report directory (default RUN/eval/...).',
                    flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Allow --output_dir to hold an earlier report.',
                  flag_values=FLAGS)
flags.DEFINE_bool('record', True, 'Record the metrics in the run\'s run.json when they '
                  'are its own test metrics (see above).', flag_values=FLAGS)
flags.DEFINE_string('cache_dir', None, 'Where converted copies of odd-format images go.',
                    flag_values=FLAGS)
flags.DEFINE_integer('num_misclassified', 20, 'Images in misclassified.png.',
                     flag_values=FLAGS)


def _default_dir(m: ev.Member, choice: ev.DataChoice, tta) -> str:
  parts = [choice.slug]
  if m.kind == 'run':
    parts.append(m.checkpoint)
    if tta:
      parts.append(ev.tta_slug(tta))
    return os.path.join(m.source, 'eval', '-'.join(parts))
  if tta:
    parts.append(ev.tta_slug(tta))
  return os.path.join('evals', runs_lib.dataset_slug(m.source) + '-' + '-'.join(parts))


def _record_reason(m: ev.Member, choice: ev.DataChoice, tta, loaded) -> str | None:
  """None when the metrics are the run's own test metrics, else why they are not."""
  if m.kind != 'run':
    return 'ported weights have no run record'
  if choice.own != 'test':
    return 'not the run\'s own test split'
  if m.checkpoint != 'best':
    return f'checkpoint {m.checkpoint}, not the best model'
  if tta:
    return 'test-time augmentation'
  if loaded.notes:
    return loaded.notes[0]
  if m.record.get('status') == 'running':
    return 'the run is still training'
  return None


def run(argv) -> dict[str, Any]:
  """The command in-process; ``argv`` as on the command line. Returns the metrics and paths."""
  ev.parse_argv(FLAGS, argv)
  return execute()


def execute() -> dict[str, Any]:
  """The command with the flags parsed."""
  t_start = time.time()
  if bool(FLAGS.run) == bool(FLAGS.weights):
    raise ev.UserError('give one model: --run=RUN_DIR (a run of experiments.finetune) or '
                       '--weights=TAG_OR_FILE (e.g. inception_v3.tf_in1k)')
  ev.check_positive('batch_size', FLAGS.batch_size)
  tta = ev.parse_tta(FLAGS.tta)
  if FLAGS.weights:
    if FLAGS.checkpoint != 'best':
      raise ev.UserError('--checkpoint is for runs; drop it with --weights')
    if not FLAGS.dataset:
      raise ev.UserError('--weights needs --dataset=folder:PATH (ported weights have no '
                         'splits of their own)')
    m = ev.resolve_weights(FLAGS.weights)
  else:
    m = ev.resolve_run(FLAGS.run, FLAGS.checkpoint)
  choice = ev.resolve_data(FLAGS.dataset, [m], cache_dir=FLAGS.cache_dir)
  if m.class_names is not None:
    ev.check_data_classes(choice, m.class_names, m.name)
  out_dir, note = ev.output_dir(FLAGS.output_dir, _default_dir(m, choice, tta),
                                FLAGS.overwrite)
  ev.scan_images(choice)
  ev.load_member(m)
  subset_ok = m.kind == 'weights'
  ev.check_data_classes(choice, m.class_names, m.name, subset_ok=subset_ok)
  ev.enable_compilation_cache()
  mesh = ev.make_mesh(FLAGS.num_devices)
  loaded = ev.load_split(choice, m.class_names, subset_ok=subset_ok)
  split = loaded.split
  logging.info('Evaluating %s on %s: %d images', m.name, choice.description,
               split.num_examples)
  t0 = time.time()
  log_probs = ev.predict_log_probs(m, split, mesh, batch_size=FLAGS.batch_size, tta=tta)
  seconds = time.time() - t0

  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments import report  # pylint: disable=g-import-not-at-top
  facts = {'model': ev.describe_member(m), 'data': choice.description,
           'input': ev.describe_prep(m.prep),
           'test-time augmentation': (f'{ev.tta_slug(tta)} ({data_lib.num_views(tta)} views, '
                                      'probabilities averaged)') if tta else 'none'}
  if choice.skipped:
    facts['unreadable files left out'] = (f'{len(choice.skipped)}: '
                                          + '; '.join(choice.skipped[:5]))
  if loaded.notes:
    facts['note'] = '; '.join(loaded.notes)
  facts['devices'] = ev.devices_fact(mesh)
  facts['forward passes'] = (f'{seconds:.1f} s ({split.num_examples / seconds:.1f} '
                             'images/s, compilation included)')
  rows = None
  if subset_ok:
    rows = sorted({int(y) for y in split.labels})
  reason = _record_reason(m, choice, tta, loaded)
  recorded = FLAGS.record and reason is None
  facts['run.json test record'] = ('written' if recorded else
                                   f'not written ({reason or "--norecord"})')
  title = f'Evaluation of {m.name} on {choice.slug}'
  res = report.write_report(out_dir, title=title, facts=facts, class_names=m.class_names,
                            labels=split.labels, log_probs=log_probs,
                            sources=split.source_names(), load_image=ev.image_loader(split),
                            rows=rows, num_misclassified=FLAGS.num_misclassified)
  if recorded:
    record = runs_lib.RunRecord(m.source)
    record.update(test=dict(
        top1=res['top1'], top5=res['top5'], loss=res['loss'], count=res['count'],
        step=m.clf.info.get('step'), checkpoint='best', data=choice.root or choice.spec,
        evaluated=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        report=out_dir))
  print(res['text'].split('\n## Per class')[0].rstrip())
  if note:
    print(f'\n{note}')
  print(f'\ntop-1 {100 * res["top1"]:.2f}%  top-5 {100 * res["top5"]:.2f}%  loss '
        f'{res["loss"]:.4f}  images {res["count"]}')
  print(f'Report: {out_dir} (summary.md, confusion_matrix.csv/.png, per_class_error.png, '
        f'predictions.csv, misclassified.png); {time.time() - t_start:.1f} s')
  return dict(res, out_dir=out_dir, recorded=recorded, log_probs=log_probs,
              labels=split.labels, sources=split.source_names(), data=choice.description)


def main(argv):
  del argv  # parsed into FLAGS
  ev.cli_main(lambda _: execute(), [])


if __name__ == '__main__':
  app.run(main, flags_parser=ev.make_flags_parser(FLAGS, __doc__))
