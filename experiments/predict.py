r"""Classify images with a trained run (or several, averaged) or ported weights.

  python -m experiments.predict --run=runs/inception_v3-flowers-20261201-101500 rose.jpg
  python -m experiments.predict --run=RUN photos/ 'shots/*.png' --top_k=3 --output=top3.csv
  python -m experiments.predict --run=RUN_A,RUN_B,RUN_C photos/        # averaged probabilities
  python -m experiments.predict --weights=inception_v3.tf_in1k cat.jpg

Each PATH is an image, a folder (searched recursively for image files) or a glob
(quote it). Prints the top-k class names with probabilities for every image and
writes them to ``--output`` (``.csv``: one row per image with ``class_i`` /
``probability_i`` columns and an ``error`` column; ``.json``: a list of
``{path, top_k: [{class, probability}]}`` plus the skipped files); an existing
output file is replaced.

Several models (``--run=A,B,C``, ``--weights=...``) must have the same classes in
the same order; each reads the images with its own input size and
preprocessing, and their probabilities are averaged (equal weights).

A file that cannot be read (not an image, truncated, a path that matches
nothing) is reported on stderr and skipped. Exit status: 0 when at least one
image was classified, 2 when none was (or for any other mistake).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging

import inception_jax  # pylint: disable=g-bad-import-order

inception_jax.configure_xla()  # its XLA:CPU flags, before JAX starts its CPU client

import numpy as np  # pylint: disable=g-import-not-at-top,g-bad-import-order

from experiments import evaluation as ev  # pylint: disable=g-import-not-at-top
from experiments import folders  # pylint: disable=g-import-not-at-top
from experiments import runs as runs_lib  # pylint: disable=g-import-not-at-top

FLAGS = flags.FlagValues()
flags.DEFINE_list('run', [], 'Run directory (or several, comma-separated: probabilities '
                  'averaged).', flag_values=FLAGS)
flags.DEFINE_list('weights', [], 'Ported weights: tags (inception_v3.tf_in1k) or '
                  'converted files.', flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step (for every --run).',
                    flag_values=FLAGS)
flags.DEFINE_integer('top_k', 5, 'Classes per image.', flag_values=FLAGS)
flags.DEFINE_string('output', None, 'Also write the predictions to FILE.csv or FILE.json.',
                    flag_values=FLAGS)
flags.DEFINE_string('tta', '', 'Test-time augmentation: flip, crop5 or flip,crop5.',
                    flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 32, 'Global batch.', flag_values=FLAGS)
flags.DEFINE_integer('num_devices', None, 'Local devices to use (default all).',
                     flag_values=FLAGS)
flags.DEFINE_string('cache_dir', None, 'Where converted copies of odd-format images go.',
                    flag_values=FLAGS)


def _csv(results, skipped, k) -> str:
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(['path'] + [c for i in range(1, k + 1) for c in (f'class_{i}',
                                                               f'probability_{i}')] + ['error'])
  for r in results:
    w.writerow([r['path']] + [v for c in r['top_k'] for v in (c['class'],
                                                              f'{c["probability"]:.6f}')]
               + [''] * (2 * (k - len(r['top_k']))) + [''])
  for path, why in skipped:
    w.writerow([path] + [''] * (2 * k) + [why])
  return buf.getvalue()


def run(argv) -> dict[str, Any]:
  """In-process: ``argv`` as on the command line (flags and paths)."""
  rest = ev.parse_argv(FLAGS, argv)
  return execute(rest[1:])


def execute(paths: list[str]) -> dict[str, Any]:
  """The command with the flags parsed; ``paths`` the positional arguments."""
  if not paths:
    raise ev.UserError('give image files, folders or globs, e.g. python -m '
                       'experiments.predict --run=RUN_DIR photo.jpg photos/ "shots/*.png"')
  ev.check_positive('top_k', FLAGS.top_k)
  ev.check_positive('batch_size', FLAGS.batch_size)
  tta = ev.parse_tta(FLAGS.tta)
  if FLAGS.output and os.path.splitext(FLAGS.output)[1].lower() not in ('.csv', '.json'):
    raise ev.UserError(f'--output={FLAGS.output}: name a .csv or a .json file')
  if FLAGS.weights and FLAGS.checkpoint != 'best':
    raise ev.UserError('--checkpoint applies to every --run; use it without --weights')
  members = ev.resolve_members(FLAGS.run, FLAGS.weights, FLAGS.checkpoint)
  ev.check_same_classes(members)

  files, problems = folders.expand_paths(paths)
  skipped = [tuple(p.rsplit(': ', 1)) for p in problems]
  if files:
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    usable, _, examples = folders.scan(files, FLAGS.cache_dir or
                                       folders.default_cache_dir(root))
    why, i = {}, 0
    for e in examples:  # 'path (status)' of the files that were not plain ok, in order
      while not e.startswith(files[i] + ' ('):
        i += 1
      why[files[i]] = e[len(files[i]) + 2:-1]
    skipped += [(f, why.get(f, 'skipped')) for f, u in zip(files, usable) if u is None]
    good = [(f, u) for f, u in zip(files, usable) if u is not None]
  else:
    good = []
  for path, reason in skipped:
    print(f"skipped {path}: {reason.removeprefix('skipped: ')}", file=sys.stderr)
  if not good:
    raise ev.UserError(f'no image could be read from {paths} ({len(skipped)} skipped): '
                       'give image files (JPEG, PNG, ...), folders holding them, or globs')

  for m in members:
    ev.load_member(m)
  ev.check_same_classes(members)
  ev.enable_compilation_cache()
  mesh = ev.make_mesh(FLAGS.num_devices)
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  split = data_lib.Split('files', len(good), labels=np.zeros(len(good), np.int32),
                         paths=np.array([u for _, u in good]),
                         sources=np.array([f for f, _ in good]))
  lps = [ev.predict_log_probs(m, split, mesh, batch_size=FLAGS.batch_size, tta=tta)
         for m in members]
  log_probs = ev.average_log_probs(lps) if len(lps) > 1 else lps[0].astype(np.float64)
  probs = np.exp(log_probs)
  names = members[0].class_names
  k = min(FLAGS.top_k, len(names))
  top = np.argsort(-probs, axis=1, kind='stable')[:, :k]
  results = []
  for (path, _), idx, p in zip(good, top, probs):
    results.append(dict(path=path, top_k=[dict({'class': names[int(j)]},
                                                probability=float(p[j])) for j in idx]))
    print(f'{path}: ' + ', '.join(f'{c["class"]} {c["probability"]:.4f}'
                                  for c in results[-1]['top_k']))
  if FLAGS.output:
    out = os.path.abspath(os.path.expanduser(FLAGS.output))
    if out.lower().endswith('.json'):
      text = json.dumps(dict(models=[m.source for m in members], predictions=results,
                             skipped=[dict(path=p, error=w) for p, w in skipped]),
                        indent=1, ensure_ascii=False) + '\n'
    else:
      text = _csv(results, skipped, k)
    runs_lib.atomic_write_text(out, text)
    print(f'Written: {out}')
  print(f'{len(results)} images classified by {", ".join(m.name for m in members)}'
        + (f'; {len(skipped)} skipped' if skipped else ''), file=sys.stderr)
  logging.flush()
  return dict(predictions=results, skipped=skipped, log_probs=log_probs)


def main(argv):
  ev.cli_main(lambda a: execute(a[1:]), argv)


if __name__ == '__main__':
  app.run(main, flags_parser=ev.make_flags_parser(FLAGS, __doc__, positional=True))
