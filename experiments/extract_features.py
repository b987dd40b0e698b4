r"""Globally pooled features of any endpoint, for a run or ported weights, to ``.npz``.

  python -m experiments.extract_features --run=RUN --dataset=test --endpoint=Mixed_7c
  python -m experiments.extract_features --weights=inception_v3.tf_in1k \
      --dataset=folder:~/photos --endpoint=Mixed_6e --pooling=max --output=mixed6e.npz

The ``.npz`` holds ``features`` (float32 ``[N, D]``: the endpoint's activations
averaged, or with ``--pooling=max`` maximised, over height and width), ``labels``
(int ``[N]``), ``paths`` (the image files, or ``digits[i]``), ``class_names``
(the labels' names: the run's classes for its own splits, else the folder's
class folders), ``endpoint`` and ``pooling``, plus ``model`` (what was loaded).

``--endpoint`` is a name ``model.features()`` returns (the TF-slim scope names:
``Conv2d_1a_3x3`` ... ``Mixed_7c``; ``python -m inception_jax.summary ARCH
--endpoints`` lists them); default the last one, the feature map the classifier
pools. An unknown name lists the valid ones.

Data: ``--dataset`` as for ``experiments.evaluate`` (``test``, ``validation``,
``train`` for a run's splits; ``folder:PATH``, any folder of class folders;
``tfds:NAME``). Output: ``--output``, default
``RUN/features/<dataset>-<endpoint>-<pooling>.npz`` (``./features/...`` for
weights); an existing default gets a numbered name, an existing ``--output``
needs ``--overwrite``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

import inception_jax  # pylint: disable=g-bad-import-order

inception_jax.configure_xla()  # its XLA:CPU flags, before JAX starts its CPU client

import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order

from experiments import evaluation as ev  # pylint: disable=g-import-not-at-top
from experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top

FLAGS = flags.FlagValues()
flags.DEFINE_string('run', None, 'Run directory of experiments.finetune.', flag_values=FLAGS)
flags.DEFINE_string('weights', None, 'Ported weights: a tag or a converted file.',
                    flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step.', flag_values=FLAGS)
flags.DEFINE_string('dataset', None, 'folder:PATH, tfds:NAME, or the run\'s test, '
                    'validation, train split.', flag_values=FLAGS)
flags.DEFINE_string('endpoint', None, 'A model.features() name (default: the last).',
                    flag_values=FLAGS)
flags.DEFINE_enum('pooling', 'avg', ['avg', 'max'], 'Global pooling over height and width.',
                  flag_values=FLAGS)
flags.DEFINE_string('output', None, 'The .npz file.', flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Allow --output to replace a file.', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 32, 'Global batch.', flag_values=FLAGS)
flags.DEFINE_integer('num_devices', None, 'Local devices to use (default all).',
                     flag_values=FLAGS)
flags.DEFINE_string('cache_dir', None, 'Where converted copies of odd-format images go.',
                    flag_values=FLAGS)


def run(argv) -> dict[str, Any]:
  """In-process: ``argv`` as on the command line."""
  ev.parse_argv(FLAGS, argv)
  return execute()


def execute() -> dict[str, Any]:
  """The command with the flags parsed."""
  t_start = time.time()
  if bool(FLAGS.run) == bool(FLAGS.weights):
    raise ev.UserError('give one model: --run=RUN_DIR or --weights=TAG_OR_FILE')
  if not FLAGS.dataset:
    raise ev.UserError('give --dataset: folder:PATH (a folder of class folders), or test '
                       '/ validation / train for a run\'s own split')
  ev.check_positive('batch_size', FLAGS.batch_size)
  if FLAGS.output and not FLAGS.output.endswith('.npz'):
    raise ev.UserError(f'--output={FLAGS.output}: name a .npz file')
  m = (ev.resolve_weights(FLAGS.weights) if FLAGS.weights else
       ev.resolve_run(FLAGS.run, FLAGS.checkpoint))
  choice = ev.resolve_data(FLAGS.dataset, [m], cache_dir=FLAGS.cache_dir)
  ev.scan_images(choice)
  ev.load_member(m)
  names = ev.endpoint_names(m.clf.model, m.prep.image_size)
  endpoint = FLAGS.endpoint or names[-1]
  if endpoint not in names:
    raise ev.UserError(f'--endpoint={endpoint}: {m.clf.model.arch} has no such endpoint; '
                       f'valid: {", ".join(names)}')
  stem = f'{choice.slug}-{endpoint}-{FLAGS.pooling}.npz'
  default = (os.path.join(m.source, 'features', stem) if m.kind == 'run' else
             os.path.join('features', f'{runs_lib.dataset_slug(m.source)}-{stem}'))
  out = ev.output_file(FLAGS.output, default, FLAGS.overwrite)
  ev.enable_compilation_cache()
  mesh = ev.make_mesh(FLAGS.num_devices)
  # The run's own splits carry its labels; another folder is labelled by its folders.
  loaded = ev.load_split(choice, m.class_names if choice.spec in ev.OWN_SPLITS else None)
  split = loaded.split
  t0 = time.time()
  feats = ev.extract_features(m, split, mesh, endpoint, FLAGS.pooling,
                              batch_size=FLAGS.batch_size)
  seconds = time.time() - t0
  labels = (np.asarray(split.labels, np.int64) if split.labels is not None
            else np.full(split.num_examples, -1, np.int64))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = os.path.join(os.path.dirname(out), f'.{os.path.basename(out)}.{os.getpid()}.tmp')
  with open(tmp, 'wb') as f:
    np.savez(f, features=feats.astype(np.float32), labels=labels,
             paths=np.array(split.source_names()), class_names=np.array(loaded.class_names),
             endpoint=np.array(endpoint), pooling=np.array(FLAGS.pooling),
             model=np.array(m.source))
  os.replace(tmp, out)
  print(f'{out}: features {feats.shape[0]} x {feats.shape[1]} ({endpoint}, '
        f'{FLAGS.pooling} pooled) of {choice.description}; {len(loaded.class_names)} '
        f'classes; {seconds:.1f} s of forward passes, {time.time() - t_start:.1f} s in all')
  if choice.skipped:
    print(f'{len(choice.skipped)} unreadable files left out: {"; ".join(choice.skipped[:5])}')
  logging.flush()
  return dict(path=out, features=feats, labels=labels, endpoint=endpoint,
              class_names=loaded.class_names)


def main(argv):
  del argv
  ev.cli_main(lambda _: execute(), [])


if __name__ == '__main__':
  app.run(main, flags_parser=ev.make_flags_parser(FLAGS, __doc__))
