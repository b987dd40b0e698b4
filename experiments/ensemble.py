r"""Evaluate an ensemble of runs: their probabilities averaged.

  python -m experiments.ensemble --runs=runs/v3-flowers-1,runs/irv2-flowers-2,runs/v4-flowers-3
  python -m experiments.ensemble --runs=A,B,C --weights_per_run=0.5,0.3,0.2
  python -m experiments.ensemble --runs=A,B,C --select=greedy        # chosen on validation
  python -m experiments.ensemble --runs=A,B --dataset=folder:~/flowers_test

Prints every member's top-1, top-5 and loss beside the ensemble's, and writes the
ensemble's report as ``experiments.evaluate`` does (``summary.md`` with a members
table, ``confusion_matrix.csv`` / ``.png``, ``per_class_error.png``,
``predictions.csv``, ``misclassified.png``) into ``--output_dir`` (default
``./evals/ensemble-<dataset>``, a numbered sibling when it exists).

Members may differ in architecture and input size: each reads the images with its
own preprocessing, and the ensemble is the weighted mean of their probabilities
(equal weights by default; ``--weights_per_run``, normalised to sum 1). They must
have the same classes in the same order.

``--select=greedy``: Caruana et al. (ICML 2004) forward selection *with
replacement* on the selection split (``--select_dataset``, default the runs'
validation split): start empty, add at each of ``--select_steps`` steps the member
that most lowers the ensemble's loss (``--select_metric=top1``: raises top-1,
loss breaking ties), and keep the best ensemble seen; a member chosen n times gets
weight n / total. The result is then reported on ``--dataset`` (default the test
split), which must be other data than the selection split.

Data defaults: the runs' common test split, else their validation split (runs
trained with different data flags need ``--dataset``).
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

FLAGS = flags.FlagValues()
flags.DEFINE_list('runs', [], 'Run directories, comma-separated (a run may appear twice).',
                  flag_values=FLAGS)
flags.DEFINE_string('dataset', None, 'Report data: folder:PATH, tfds:NAME, test, '
                    'validation. Default: the runs\' test split, else validation.',
                    flag_values=FLAGS)
flags.DEFINE_list('weights_per_run', [], 'One weight per run (normalised to sum 1); '
                  'default equal.', flag_values=FLAGS)
flags.DEFINE_enum('select', 'none', ['none', 'greedy'], 'greedy: Caruana forward '
                  'selection with replacement on --select_dataset.', flag_values=FLAGS)
flags.DEFINE_string('select_dataset', 'validation', 'Selection data for --select=greedy.',
                    flag_values=FLAGS)
flags.DEFINE_enum('select_metric', 'loss', ['loss', 'top1'], 'What greedy selection '
                  'optimises.', flag_values=FLAGS)
flags.DEFINE_integer('select_steps', 0, 'Greedy additions (0: 5 x the number of runs).',
                     flag_values=FLAGS)
flags.DEFINE_string('tta', '', 'Test-time augmentation of every member: flip, crop5.',
                    flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 32, 'Global batch.', flag_values=FLAGS)
flags.DEFINE_integer('num_devices', None, 'Local devices to use (default all).',
                     flag_values=FLAGS)
flags.DEFINE_string('output_dir', None, 'Report directory (default ./evals/ensemble-...).',
                    flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Allow --output_dir to hold an earlier report.',
                  flag_values=FLAGS)
flags.DEFINE_string('cache_dir', None, 'Where converted copies of odd-format images go.',
                    flag_values=FLAGS)
flags.DEFINE_integer('num_misclassified', 20, 'Images in misclassified.png.',
                     flag_values=FLAGS)


def _weights(n: int) -> np.ndarray | None:
  if not FLAGS.weights_per_run:
    return None
  try:
    w = np.array([float(v) for v in FLAGS.weights_per_run])
  except ValueError:
    raise ev.UserError(f'--weights_per_run={",".join(FLAGS.weights_per_run)}: give '
                       'numbers') from None
  if len(w) != n:
    raise ev.UserError(f'--weights_per_run has {len(w)} values for {n} runs; give one '
                       'per run')
  if (w < 0).any() or w.sum() <= 0 or not np.isfinite(w).all():
    raise ev.UserError('--weights_per_run: use non-negative numbers, not all 0')
  return w / w.sum()


def _members_table(members, metrics, weights) -> str:
  lines = ['## Members', '', '| # | run | arch | input | weight | top-1 | top-5 | loss |',
           '|---|---|---|---|---|---|---|---|']
  for i, (m, r, w) in enumerate(zip(members, metrics, weights)):
    lines.append(f'| {i + 1} | {m.source} | {m.clf.model.arch} | {m.prep.image_size} | '
                 f'{w:.3f} | {100 * r["top1"]:.2f}% | {100 * r["top5"]:.2f}% | '
                 f'{r["loss"]:.4f} |')
  return '\n'.join(lines)


def run(argv) -> dict[str, Any]:
  """In-process: ``argv`` as on the command line."""
  ev.parse_argv(FLAGS, argv)
  return execute()


def execute() -> dict[str, Any]:
  """The command with the flags parsed."""
  t_start = time.time()
  if not FLAGS.runs:
    raise ev.UserError('give the members: --runs=RUN_A,RUN_B,...')
  ev.check_positive('batch_size', FLAGS.batch_size)
  tta = ev.parse_tta(FLAGS.tta)
  members = ev.resolve_members(FLAGS.runs, [])
  weights = _weights(len(members))
  greedy = FLAGS.select == 'greedy'
  if greedy and weights is not None:
    raise ev.UserError('--select=greedy chooses the weights; drop --weights_per_run')
  if FLAGS.select_steps < 0:
    raise ev.UserError('--select_steps must be >= 0')
  ev.check_same_classes(members)
  names = members[0].class_names
  choice = ev.resolve_data(FLAGS.dataset, members, cache_dir=FLAGS.cache_dir)
  ev.check_data_classes(choice, names, members[0].name)
  sel = None
  if greedy:
    sel = ev.resolve_data(FLAGS.select_dataset, members, flag='--select_dataset',
                          cache_dir=FLAGS.cache_dir)
    ev.check_data_classes(sel, names, members[0].name)
    if sel.key == choice.key:
      raise ev.UserError(
          f'greedy selection on {sel.description} would be reported on the same images; '
          'report on other data: --dataset=folder:TEST (or runs with a test split)')
  slug = choice.slug + (f'-{ev.tta_slug(tta)}' if tta else '')
  out_dir, note = ev.output_dir(FLAGS.output_dir, os.path.join(
      'evals', f'ensemble{"-greedy" if greedy else ""}-{slug}'), FLAGS.overwrite)
  for c in (choice, sel):
    if c is not None:
      ev.scan_images(c)
  for m in members:
    ev.load_member(m)
  ev.enable_compilation_cache()
  mesh = ev.make_mesh(FLAGS.num_devices)

  sections = []
  if greedy:
    sel_split = ev.load_split(sel, names).split
    sel_lps = [ev.predict_log_probs(m, sel_split, mesh, batch_size=FLAGS.batch_size,
                                    tta=tta) for m in members]
    steps = FLAGS.select_steps or 5 * len(members)
    counts, trace = ev.greedy_select(sel_lps, sel_split.labels, steps=steps,
                                     metric=FLAGS.select_metric)
    weights = counts / counts.sum()
    lines = ['## Greedy selection', '',
             f'Caruana et al. 2004 forward selection with replacement on '
             f'{sel.description} ({sel_split.num_examples} images), {steps} steps '
             f'minimising {"loss" if FLAGS.select_metric == "loss" else "top-1 error"}; '
             f'kept: counts {counts.tolist()}.', '',
             '| step | added | counts | selection loss / top-1 |', '|---|---|---|---|']
    for t in trace:
      score = (f'{t["score"][0]:.4f}' if FLAGS.select_metric == 'loss' else
               f'{t["score"][1]:.4f} / {-100 * t["score"][0]:.2f}%')
      lines.append(f'| {t["step"]} | #{t["added"] + 1} | {t["counts"]} | {score} |')
    sections.append('\n'.join(lines))
  elif weights is None:
    weights = np.full(len(members), 1.0 / len(members))

  loaded = ev.load_split(choice, names)
  split = loaded.split
  t0 = time.time()
  lps = [ev.predict_log_probs(m, split, mesh, batch_size=FLAGS.batch_size, tta=tta)
         for m in members]
  seconds = time.time() - t0
  log_probs = ev.average_log_probs(lps, weights)
  from experiments import report  # pylint: disable=g-import-not-at-top
  member_metrics = [report.topk_metrics(lp, split.labels) for lp in lps]
  sections.insert(0, _members_table(members, member_metrics, weights))
  facts = {'members': f'{len(members)} (probabilities averaged with the weights below)',
           'data': choice.description,
           'test-time augmentation': ev.tta_slug(tta) or 'none',
           'devices': ev.devices_fact(mesh),
           'forward passes': f'{seconds:.1f} s for {len(members)} members'}
  if choice.skipped:
    facts['unreadable files left out'] = (f'{len(choice.skipped)}: '
                                          + '; '.join(choice.skipped[:5]))
  res = report.write_report(out_dir, title=f'Ensemble of {len(members)} on {choice.slug}',
                            facts=facts, class_names=names, labels=split.labels,
                            log_probs=log_probs, sources=split.source_names(),
                            load_image=ev.image_loader(split), sections=sections,
                            num_misclassified=FLAGS.num_misclassified)
  print(f'\n{"member":<40} {"weight":>7} {"top-1":>8} {"top-5":>8} {"loss":>8}')
  for m, r, w in zip(members, member_metrics, weights):
    print(f'{m.name[-40:]:<40} {w:7.3f} {100 * r["top1"]:7.2f}% {100 * r["top5"]:7.2f}% '
          f'{r["loss"]:8.4f}')
  print(f'{"ensemble":<40} {1.0:7.3f} {100 * res["top1"]:7.2f}% {100 * res["top5"]:7.2f}% '
        f'{res["loss"]:8.4f}')
  print(f'\n{res["count"]} images of {choice.description}')
  if note:
    print(note)
  print(f'Report: {out_dir}; {time.time() - t_start:.1f} s')
  logging.flush()
  return dict(res, out_dir=out_dir, weights=weights, members=member_metrics,
              log_probs=log_probs, member_log_probs=lps, labels=split.labels)


def main(argv):
  del argv
  ev.cli_main(lambda _: execute(), [])


if __name__ == '__main__':
  app.run(main, flags_parser=ev.make_flags_parser(FLAGS, __doc__))
