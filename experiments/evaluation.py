"""What the commands after training share: models, data, batched forward passes.

``experiments.evaluate``, ``predict``, ``ensemble`` and ``extract_features`` are thin
commands over this module:

* Members (``resolve_run``, ``resolve_weights``, ``load_member``): a run directory
  of ``experiments.finetune`` at a checkpoint ('best' = its ``best.safetensors``,
  'latest' or a step) or ported ImageNet weights, loaded with
  ``inception_jax.load``: a model with its class names and its own preprocessing.
* Data (``resolve_data``, ``load_split``): a run's own split (``test``,
  ``validation``, ``train``, rebuilt from its flags and record exactly as finetune
  built it), a folder of class folders (``folder:PATH``) or ``tfds:NAME``. Folders
  are listed and every image is decoded with PIL before TensorFlow is imported,
  so a wrong folder, a class-name mismatch or an unreadable image is reported
  within seconds.
* Forward passes (``predict_log_probs``, ``extract_features``): one jitted program
  per model, data-parallel over the local devices: parameters replicated, the
  global batch sharded on a ``data`` mesh axis as in the train step, the last
  batch padded and masked (``experiments.data.Pipeline.eval_batches``), with
  optional test-time views averaged in probability.
* Ensembles (``average_log_probs``, ``greedy_select``): weighted averages of
  probabilities; greedy forward selection with replacement (Caruana et al. 2004).

Every user mistake raises ``UserError`` (or a ``DataError`` / load error) with a
message naming the fix; ``cli_main`` turns them into ``error: ...`` and exit status
2, without a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import flags
from absl import logging

from experiments import folders
from experiments import runs as runs_lib

EXIT_USAGE = 2
# The run's flags that decide its splits: runs agreeing on them have the same data.
DATA_FLAGS = ('dataset', 'validation_split', 'validation_dataset', 'test_dataset',
              'data_dir')
OWN_SPLITS = ('test', 'validation', 'train')
TTA_NAMES = {'flip': 'flip', 'crop5': 'multicrop', 'multicrop': 'multicrop'}


class UserError(ValueError):
  """A command cannot do what it was asked (the message names the problem and the fix)."""


def user_errors() -> tuple[type[BaseException], ...]:
  """The exception types that are the user's to fix (reported without a traceback)."""
  from inception_jax import inference  # pylint: disable=g-import-not-at-top
  from inception_jax import weights as weights_lib  # pylint: disable=g-import-not-at-top
  return (UserError, folders.DataError, runs_lib.RunDirError, inference.RunLoadError,
          weights_lib.WeightLoadError, FileNotFoundError, ValueError)


# --------------------------------------------------------------------------- commands


def make_flags_parser(flag_values: flags.FlagValues, doc: str,
                      positional: bool = False) -> Callable[[list[str]], list[str]]:
  """An ``app.run`` flags parser for a command with its own ``FlagValues``."""

  def parse(argv):
    if any(a in ('-h', '--help', '--helpshort', '--helpfull', '-?') for a in argv[1:]):
      print(doc.strip() + '\n\n' + flag_values.get_help())
      sys.exit(0)

    def fail(msg):
      print(f'error: {msg}; see --help', file=sys.stderr)
      sys.exit(EXIT_USAGE)

    try:
      rest = flag_values(list(argv), known_only=True)
      rest = flags.FLAGS(rest, known_only=True)
    except flags.Error as e:
      fail(e)
    unknown = [a for a in rest[1:] if a.startswith('-')]
    if unknown:
      fail(f'unknown flag {unknown[0]}')
    if rest[1:] and not positional:
      fail(f'unexpected arguments {rest[1:]}')
    return rest

  return parse


def parse_argv(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses ``argv`` into the command's flags afresh (in-process calls, tests)."""
  flag_values.unparse_flags()
  try:
    rest = flag_values(list(argv), known_only=True)
  except flags.Error as e:
    raise UserError(str(e)) from None
  unknown = [a for a in rest[1:] if a.startswith('--')]
  if unknown:
    raise UserError(f'unknown flag {unknown[0]}; see --help')
  return rest


def cli_main(run: Callable[[list[str]], Any], argv: list[str]) -> None:
  """Runs ``run(argv)``; a user error prints ``error: ...`` and exits with status 2."""
  try:
    run(argv)
  except user_errors() as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_tta(value: str | None) -> tuple[str, ...]:
  """``--tta``: '' or 'none', 'flip', 'crop5' (= 'multicrop'), or both comma-separated."""
  if not value or value == 'none':
    return ()
  out = []
  for word in (w.strip() for w in value.split(',')):
    if word not in TTA_NAMES:
      raise UserError(f'--tta={value}: unknown view {word!r}; use flip, crop5 (four '
                      'corners and the centre) or flip,crop5')
    if TTA_NAMES[word] not in out:
      out.append(TTA_NAMES[word])
  return tuple(sorted(out))  # data.eval_views' names: ('flip', 'multicrop')


def tta_slug(tta: Sequence[str]) -> str:
  return '-'.join({'multicrop': 'crop5'}.get(t, t) for t in tta)


def split_list(value: str | Sequence[str] | None) -> list[str]:
  if value is None:
    return []
  items = value.split(',') if isinstance(value, str) else list(value)
  return [s.strip() for s in items if s.strip()]


def check_positive(name: str, value: int) -> None:
  if value is None or value < 1:
    raise UserError(f'--{name}={value} is invalid: use a positive number')


# ---------------------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
  """One model: a run at a checkpoint, or ported weights.

  Attributes:
    source: the run directory (absolute) or the weights tag / file as given.
    kind: 'run' or 'weights'.
    checkpoint: 'best', 'latest' or a step (runs).
    record: the run's flags and record (``runs.load_record``), None for weights.
    class_names: known before loading for a run's best model, else after ``load``.
    clf: the ``inception_jax.Classifier`` once loaded.
  """
  source: str
  kind: str
  checkpoint: str = 'best'
  record: dict[str, Any] | None = None
  class_names: tuple[str, ...] | None = None
  clf: Any = None

  @property
  def name(self) -> str:
    base = os.path.basename(os.path.normpath(self.source))
    return base if self.checkpoint == 'best' else f'{base}@{self.checkpoint}'

  @property
  def arch(self) -> str:
    if self.clf is not None:
      return self.clf.model.arch
    return self.record['flags']['arch'].partition('.')[0] if self.record else '?'

  @property
  def prep(self):
    return self.clf.preprocessing


def _check_checkpoint(value: str) -> str:
  value = str(value).strip()
  if value in ('best', 'latest'):
    return value
  try:
    step = int(value)
  except ValueError:
    raise UserError(f'--checkpoint={value}: use best (the run\'s best.safetensors), '
                    'latest or a step number') from None
  if step < 0:
    raise UserError(f'--checkpoint={value}: steps are >= 0')
  return str(step)


def resolve_run(path: str, checkpoint: str = 'best') -> Member:
  """A run directory at a checkpoint, checked without loading the model."""
  from inception_jax import inference  # pylint: disable=g-import-not-at-top
  checkpoint = _check_checkpoint(checkpoint)
  run_dir = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(run_dir):
    raise UserError(f'--run={path}: no such run directory. Give a directory made by '
                    'experiments.finetune (e.g. runs/inception_v3-flowers-20261201-101500; '
                    'ls runs/ lists them)')
  if not runs_lib.is_run_dir(run_dir):
    raise UserError(f'--run={path} is not a run directory of experiments.finetune (no '
                    f'{runs_lib.FLAGS_JSON}); for a weight file use --weights=FILE')
  record = runs_lib.load_record(run_dir)
  run_arch = record['flags'].get('arch', '').partition('.')[0]
  ckpt_dir = os.path.join(run_dir, 'checkpoints')
  names = record.get('class_names')
  if checkpoint == 'best':
    file = os.path.join(run_dir, inference.RUN_FILE)
    if not os.path.exists(file):
      why = ('it has training checkpoints but no evaluated model yet (killed before its '
             'first evaluation?): use --checkpoint=latest, or resume the run'
             if os.path.isdir(ckpt_dir) else 'the run was never trained to a checkpoint')
      raise UserError(f'{run_dir} has no {inference.RUN_FILE}: {why}')
    try:
      config = inference.read_config(file)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'{file} cannot be read ({e}); it is damaged: evaluate a training '
                      'checkpoint with --checkpoint=latest') from None
    if config.get('kind') != inference.KIND:
      raise UserError(f'{file} is not an inference file of a run; restore the run\'s own '
                      'file or use --checkpoint=latest')
    if run_arch and config.get('arch') != run_arch:
      raise UserError(
          f'{file} holds a {config.get("arch")} model but {run_dir} trained {run_arch} '
          f'({runs_lib.FLAGS_JSON}): the file was copied from another run. Put the '
          'run\'s own file back, or evaluate the run the file came from')
    if names and list(config['class_names']) != list(names):
      raise UserError(f'{file} has classes {config["class_names"]} but the run recorded '
                      f'{names}: the file was copied from another run')
    names = config['class_names']
  elif not os.path.isdir(ckpt_dir):
    raise UserError(f'{run_dir} has no checkpoints/ folder, so --checkpoint='
                    f'{checkpoint} cannot be read; use --checkpoint=best')
  return Member(run_dir, 'run', checkpoint, record, tuple(names) if names else None)


def resolve_weights(name: str) -> Member:
  """Ported weights: a tag (``inception_v3.tf_in1k``) or a converted file."""
  from inception_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(name)
  if os.path.isdir(path):
    raise UserError(f'--weights={name} is a directory; for a run use --run={name}')
  if not os.path.isfile(path):
    if os.sep in name or name.endswith('.safetensors'):
      raise UserError(f'--weights={name}: no such file')
    try:
      pretrained_lib.get_pretrained_cfg(name)
    except ValueError as e:
      raise UserError(f'--weights={name}: {e}') from None
  return Member(name, 'weights', 'best')


def resolve_members(runs: Sequence[str], weights: Sequence[str],
                    checkpoint: str = 'best') -> list[Member]:
  members = [resolve_run(r, checkpoint) for r in runs]
  members += [resolve_weights(w) for w in weights]
  if not members:
    raise UserError('give a model: --run=RUN_DIR (a run of experiments.finetune) or '
                    '--weights=TAG_OR_FILE (e.g. inception_v3.tf_in1k)')
  return members


def load_member(m: Member, **options: Any) -> Member:
  """Loads the model with ``inception_jax.load`` and checks it against its run."""
  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import inference  # pylint: disable=g-import-not-at-top
  from inception_jax import weights as weights_lib  # pylint: disable=g-import-not-at-top
  ckpt = None if m.checkpoint == 'best' else m.checkpoint
  t0 = time.time()
  try:
    m.clf = inception_jax.load(m.source, checkpoint=ckpt, **options)
  except weights_lib.WeightLoadError as e:
    raise UserError(f'{m.source}: the weights do not fit the network they claim to be '
                    f'({e}); the file is damaged or was written for another '
                    'architecture') from None
  except (FileNotFoundError, inference.RunLoadError) as e:
    raise UserError(f'{m.source}: {e}') from None
  if m.kind == 'run':
    run_arch = m.record['flags'].get('arch', '').partition('.')[0]
    if run_arch and m.clf.model.arch != run_arch:
      raise UserError(
          f'checkpoint {m.checkpoint} of {m.source} holds a {m.clf.model.arch} model but '
          f'the run trained {run_arch} ({runs_lib.FLAGS_JSON}): it was copied from '
          'another run. Evaluate the run it came from')
    rec_names = m.record.get('class_names')
    if rec_names and list(m.clf.class_names) != list(rec_names):
      raise UserError(f'checkpoint {m.checkpoint} of {m.source} has classes '
                      f'{list(m.clf.class_names)}, the run recorded {rec_names}')
  m.class_names = tuple(m.clf.class_names)
  logging.info('Loaded %s (%s, %d classes, %dx%d input) in %.1f s', m.name,
               m.clf.model.arch, len(m.class_names), m.prep.image_size, m.prep.image_size,
               time.time() - t0)
  return m


def check_same_classes(members: Sequence[Member]) -> None:
  """Refuses members whose class names (or their order) differ, naming the difference."""
  known = [m for m in members if m.class_names is not None]
  if not known:
    return
  ref = known[0]
  for m in known[1:]:
    if m.class_names == ref.class_names:
      continue
    extra = sorted(set(m.class_names) - set(ref.class_names))
    missing = sorted(set(ref.class_names) - set(m.class_names))
    if extra or missing:
      diff = '; '.join(p for p in (f'only in {m.name}: {_few(extra)}' if extra else '',
                                   f'only in {ref.name}: {_few(missing)}' if missing else '')
                       if p)
      raise UserError(f'{m.name} and {ref.name} have different classes ({diff}): their '
                      'probabilities cannot be averaged. Use models trained on the same '
                      'classes')
    raise UserError(f'{m.name} and {ref.name} have the same classes in a different order '
                    f'({list(m.class_names)[:5]}... vs {list(ref.class_names)[:5]}...); '
                    'use models with one label order')


def _few(names: Sequence[str], n: int = 10) -> str:
  names = list(names)
  return str(names[:n])[:-1] + f', ... ({len(names)} in all)]' if len(names) > n else str(names)


# ------------------------------------------------------------------------------- data


@dataclasses.dataclass
class DataChoice:
  """Which examples a command scores, decided before TensorFlow is imported.

  Attributes:
    spec: as given or chosen ('test', 'validation', 'train', 'folder:PATH', 'tfds:NAME').
    own: the run's split role when these are the run's own data, else None.
    description: what it is, for the console and the reports.
    slug: a short name for output directories.
    root: the folder of class folders (folders and own split folders).
    folder_classes: the class folders found there.
    files: every file found (for folders), in label order.
    run: the run whose splits ``own`` refers to.
  """
  spec: str
  own: str | None
  description: str
  slug: str
  root: str | None = None
  folder_classes: list[str] | None = None
  files: list[str] | None = None
  run: Member | None = None
  cache_dir: str | None = None
  skipped: list[str] = dataclasses.field(default_factory=list)

  @property
  def key(self) -> tuple:
    """Equal for two choices of the same examples."""
    if self.root is not None:
      return ('folder', os.path.realpath(self.root))
    return (self.own, self.spec, self.run.source if self.run else None)


def _common_run(members: Sequence[Member], what: str) -> Member:
  runs = [m for m in members if m.kind == 'run']
  if len(runs) != len(members) or not runs:
    raise UserError(f'{what} needs a run (ported weights have no splits of their own): '
                    'give --dataset=folder:PATH')
  ref = runs[0]
  for m in runs[1:]:
    a = {k: ref.record['flags'].get(k) for k in DATA_FLAGS}
    b = {k: m.record['flags'].get(k) for k in DATA_FLAGS}
    if a != b:
      diff = ', '.join(f'--{k} {a[k]!r} vs {b[k]!r}' for k in DATA_FLAGS if a[k] != b[k])
      raise UserError(f'{m.name} and {ref.name} were trained on different data ({diff}), '
                      f'so they share no {what}: give --dataset=folder:PATH')
  return ref


def resolve_data(spec: str | None, members: Sequence[Member], *, flag: str = '--dataset',
                 cache_dir: str | None = None, prefer: Sequence[str] = ('test', 'validation')
                 ) -> DataChoice:
  """Decides the examples to score (see ``DataChoice``); lists folders, no TensorFlow.

  Args:
    spec: the flag's value; None picks the first of ``prefer`` the run has.
    members: the models (their runs' splits for 'test' / 'validation' / 'train').
    flag: the flag's name, for messages.
    cache_dir: where converted copies of odd-format images go.
    prefer: split roles tried when ``spec`` is None.
  """
  if spec is None or spec in OWN_SPLITS:
    run = _common_run(members, f'{flag}={spec}' if spec else f'a default {flag}')
    rec = run.record
    have = {r: int(rec.get(f'{r}_images') or 0) for r in OWN_SPLITS}
    if spec is None:
      role = next((r for r in prefer if have[r]), None)
      if role is None:
        raise UserError(f'{run.source} has no {" or ".join(prefer)} split: give '
                        f'{flag}=folder:PATH')
      why = {'test': 'default: the run\'s test split',
             'validation': 'default: the run has no test split, so its validation split '
                           '(the split its best checkpoint was selected on: an optimistic '
                           'estimate; give --dataset=folder:TEST for an unbiased one)'}.get(
                               role, f'the run\'s {role} split')
    else:
      role, why = spec, f'the run\'s {spec} split'
      if not have[role]:
        raise UserError(f'{run.source} has no {role} split (trained with --dataset='
                        f'{rec["flags"].get("dataset")}); give {flag}=folder:PATH')
    layout = rec.get('layout') or {}
    where = layout.get(role)
    root = where if (role != 'train' and isinstance(where, str) and os.path.isdir(where)) \
        else None
    desc = (f'{role} split of {run.name}: {where or rec["flags"].get("dataset")} '
            f'({have[role]} images when trained; {why})')
    choice = DataChoice(role, role, desc, role, root=root, run=run,
                        cache_dir=rec['flags'].get('cache_dir'))
    if root is not None:
      _list_folder(choice, flag)
    return choice
  kind, sep, arg = spec.partition(':')
  if kind == 'tfds' and sep and arg:
    return DataChoice(spec, None, f'{spec} (its test split, else its validation split)',
                      runs_lib.dataset_slug(spec))
  if kind == 'digits' and not sep:
    return DataChoice(spec, None, 'digits (its fixed 20% validation split)', 'digits')
  path = arg if kind == 'folder' and sep else spec
  if not (kind == 'folder' and sep) and not os.path.isdir(os.path.expanduser(path)):
    raise UserError(f'{flag}={spec!r}: use folder:PATH (a folder of class folders), '
                    'test / validation / train (the run\'s own splits) or tfds:NAME')
  root = folders.resolve_class_folder(path, flag)
  real = os.path.realpath(root)
  desc = f'folder {root}'
  if os.path.realpath(os.path.expanduser(path)) != real:
    desc += f' (inside {path})'
  own, run = None, None
  for m in members:
    layout = (m.record or {}).get('layout') or {}
    for role in ('test', 'validation'):
      where = layout.get(role)
      if isinstance(where, str) and os.path.isdir(where) and os.path.realpath(where) == real:
        own, run = role, m
        desc += f': the {role} split of {m.name}'
    if own:
      break
  choice = DataChoice(spec, own if len(members) == 1 or _same_data(members) else None,
                      desc, runs_lib.dataset_slug(root), root=root, run=run,
                      cache_dir=cache_dir)
  _list_folder(choice, flag)
  return choice


def _same_data(members: Sequence[Member]) -> bool:
  try:
    _common_run(members, 'data')
  except UserError:
    return False
  return True


def _list_folder(choice: DataChoice, flag: str) -> None:
  names, files = folders.list_class_dirs(choice.root, min_classes=1)
  choice.folder_classes = names
  choice.files = [f for n in names for f in files[n]]


def check_data_classes(choice: DataChoice, class_names: Sequence[str], reference: str,
                       subset_ok: bool = False) -> None:
  """Refuses a folder whose class folders differ from the model's (names the difference).

  ``subset_ok``: a folder of some of the model's classes is fine (ImageNet weights
  on a folder of a few ImageNet classes).
  """
  if choice.folder_classes is None:
    return
  found = choice.folder_classes
  if subset_ok:
    extra = sorted(set(found) - set(class_names))
    if extra:
      raise UserError(f'class folders of {choice.root} that {reference} does not know: '
                      f'{_few(extra)}. Name the folders after its classes (e.g. '
                      f'{list(class_names)[:3]}) or remove them')
    return
  folders.check_class_names(list(class_names), found, f'{choice.root}', reference)


def scan_images(choice: DataChoice) -> None:
  """Decodes every file of a folder choice with PIL (cached); unreadable ones are
  listed in ``choice.skipped`` and logged; none readable is an error."""
  if not choice.files:
    return
  cache = choice.cache_dir or folders.default_cache_dir(choice.root)
  t0 = time.time()
  usable, counts, examples = folders.scan(choice.files, cache)
  n_bad = sum(u is None for u in usable)
  choice.skipped = [e for e in examples if ' (skipped: ' in e]
  if n_bad:
    logging.warning('%d of %d files in %s cannot be read and are left out (fix or remove '
                    'them): %s', n_bad, len(choice.files), choice.root,
                    '; '.join(choice.skipped[:10]))
  if n_bad == len(choice.files):
    raise UserError(f'no readable image in {choice.root} ({dict(counts)}): fix the files '
                    'or point the dataset at another folder')
  logging.info('%s: %d files checked in %.1f s', choice.root, len(choice.files),
               time.time() - t0)


@dataclasses.dataclass
class Loaded:
  """A split to score: the examples (``experiments.data.Split``) and their classes."""
  split: Any
  class_names: list[str]
  notes: list[str]


def load_split(choice: DataChoice, class_names: Sequence[str] | None, *,
               subset_ok: bool = False) -> Loaded:
  """The examples of ``choice`` labelled by ``class_names`` (imports TensorFlow).

  ``class_names`` None labels a folder by its own class folders.
  """
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  notes = []
  if choice.own is not None and choice.run is not None and choice.spec in OWN_SPLITS:
    rec = choice.run.record
    names = list(rec.get('class_names') or class_names)
    if choice.root is not None:
      split = data_lib.load_class_folder(choice.root, names, f'the {choice.own} split',
                                         cache_dir=choice.cache_dir, reference=choice.run.name)
    else:
      f = rec['flags']
      ds = data_lib.load_dataset(
          f['dataset'], validation_split=f.get('validation_split', 0.2),
          data_dir=f.get('data_dir'), cache_dir=f.get('cache_dir'),
          validation_dataset=f.get('validation_dataset'), test_dataset=f.get('test_dataset'))
      if list(ds.class_names) != names:
        folders.check_class_names(names, list(ds.class_names), f['dataset'], choice.run.name)
      split = {'test': ds.test, 'validation': ds.val, 'train': ds.train}[choice.own]
      if split is None:
        raise UserError(f'{f["dataset"]} has no {choice.own} split now; give '
                        '--dataset=folder:PATH')
    _check_count(choice, split, notes)
    return Loaded(split, names, notes)
  if choice.root is not None:
    names = list(class_names) if class_names is not None else list(choice.folder_classes)
    split = data_lib.load_class_folder(choice.root, names, '--dataset',
                                       cache_dir=choice.cache_dir, reference='the model',
                                       subset_ok=subset_ok)
    if choice.own is not None and choice.run is not None:
      _check_count(choice, split, notes)
    return Loaded(split, names, notes)
  ds = data_lib.load_dataset(choice.spec, validation_split=0.2 if choice.spec == 'digits'
                             else 0.0)
  split = ds.test if (ds.test is not None and choice.spec != 'digits') else ds.val
  if split is None:
    raise UserError(f'{choice.spec} has neither a test nor a validation split')
  if class_names is not None and list(ds.class_names) != list(class_names):
    if not (subset_ok and set(ds.class_names) <= set(class_names)):
      folders.check_class_names(list(class_names), list(ds.class_names), choice.spec,
                                'the model')
    remap = np.array([list(class_names).index(n) for n in ds.class_names])
    if split.labels is not None:
      split = dataclasses.replace(split, labels=remap[split.labels])
  return Loaded(split, list(class_names) if class_names is not None else
                list(ds.class_names), notes)


def _check_count(choice: DataChoice, split, notes: list[str]) -> None:
  """Notes a run's own split that no longer holds the images the run had."""
  then = int(choice.run.record.get(f'{choice.own}_images') or 0)
  if split.num_examples != then:
    notes.append(f'the {choice.own} split has {split.num_examples} readable images now, '
                 f'{then} when the run was trained (files added or removed since)')
    logging.warning('%s', notes[-1])


def image_loader(split) -> Callable[[int], np.ndarray | None]:
  """index -> uint8 image of a split, for thumbnails (files from their original path)."""

  def load(i):
    if split.kind == 'array':
      return split.images[i]
    if split.kind == 'files':
      from PIL import Image  # pylint: disable=g-import-not-at-top
      try:
        with Image.open(str(split.paths[i])) as im:
          return np.asarray(im.convert('RGB'))
      except (OSError, ValueError):
        return None
    return None

  return load


# --------------------------------------------------------------------- forward passes


def enable_compilation_cache() -> None:
  """finetune's persistent XLA cache: a second evaluation of a model skips compiling."""
  import jax  # pylint: disable=g-import-not-at-top
  from inception_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(pretrained_lib.cache_dir(), 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def make_mesh(num_devices: int | None = None):
  """A ``data`` mesh over the local devices (as the train step's)."""
  from inception_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  try:
    return train_lib.make_mesh(num_devices or None)
  except ValueError as e:
    raise UserError(f'--num_devices: {e}') from None


def global_batch(batch_size: int, num_examples: int, num_devices: int) -> int:
  """``batch_size`` rounded up to a multiple of the devices, no larger than the data needs."""
  per = -(-batch_size // num_devices)
  need = -(-num_examples // num_devices)
  return num_devices * max(1, min(per, need))


def _sharded_program(model, mesh, fn):
  """``x -> fn(model, x)`` jitted: parameters replicated, the batch sharded on 'data'."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(model)
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  state = jax.device_put(state, repl)
  jitted = jax.jit(lambda s, x: fn(nnx.merge(graphdef, s), x),
                   in_shardings=(repl, data), out_shardings=data)
  return lambda x: jitted(state, x)


def _log_probs(model, x):
  """Log-probabilities ``[B, C]`` of images ``[B, S, S, 3]``, or of views
  ``[B, V, S, S, 3]`` averaged in probability: ``log(mean_v softmax(logits_v))``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  lead = x.shape[:-3]
  logits = model(x.reshape((-1,) + x.shape[-3:])).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1).reshape(lead + logits.shape[-1:])
  if len(lead) == 2:
    logp = jax.nn.logsumexp(logp, axis=1) - math.log(lead[1])
  return logp


def _pooled(endpoint: str, pooling: str):
  def fn(model, x):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    h = model.features(x)[endpoint].astype(jnp.float32)
    if h.ndim == 4:
      h = h.mean(axis=(1, 2)) if pooling == 'avg' else h.max(axis=(1, 2))
    return h
  return fn


def _run(program, split, prep, mesh, batch_size: int, tta: tuple[str, ...], what: str
         ) -> np.ndarray:
  """``program`` over a split in order; padding rows dropped."""
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from inception_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  n = split.num_examples
  g = global_batch(batch_size, n, mesh.size)
  pipe = data_lib.Pipeline(split, prep, global_batch_size=g)
  total = pipe.eval_batches_count
  out, t0, t_first, done = [], time.perf_counter(), None, 0
  every = max(1, total // 10)
  for i, b in enumerate(pipe.eval_batches(tta=tta)):
    images, _ = train_lib.shard_batch(mesh, b.images, b.labels)
    y = np.asarray(program(images))
    out.append(y[b.mask > 0])
    done += int((b.mask > 0).sum())
    if t_first is None:
      t_first = time.perf_counter() - t0
    if (i + 1) % every == 0 or i + 1 == total:
      logging.info('%s: %d/%d images (%.1f s, first batch with compilation %.1f s)', what,
                   done, n, time.perf_counter() - t0, t_first)
  return np.concatenate(out)


def predict_log_probs(m: Member, split, mesh, *, batch_size: int = 32,
                      tta: tuple[str, ...] = ()) -> np.ndarray:
  """``[N, C]`` float32 log-probabilities of a member on a split, in the split's order
  (the member's own preprocessing; views of ``tta`` averaged in probability)."""
  program = _sharded_program(m.clf.model, mesh, _log_probs)
  return _run(program, split, m.prep, mesh, batch_size, tta, m.name)


def endpoint_names(model, image_size: int) -> list[str]:
  """The names ``model.features()`` returns (traced abstractly, nothing computed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return list(jax.eval_shape(model.features, x))


def extract_features(m: Member, split, mesh, endpoint: str, pooling: str = 'avg', *,
                     batch_size: int = 32) -> np.ndarray:
  """``[N, D]`` globally pooled (avg or max) features of ``endpoint``, in the split's order."""
  program = _sharded_program(m.clf.model, mesh, _pooled(endpoint, pooling))
  return _run(program, split, m.prep, mesh, batch_size, (), f'{m.name} {endpoint}')


# ------------------------------------------------------------------------- ensembles


def average_log_probs(log_probs: Sequence[np.ndarray], weights: Sequence[float] | None = None
                      ) -> np.ndarray:
  """``log(sum_i w_i p_i)`` with ``w`` normalised to sum 1 (default equal), in float64."""
  lp = np.stack([np.asarray(a, np.float64) for a in log_probs])
  w = np.ones(len(lp)) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (len(lp),) or (w < 0).any() or w.sum() <= 0:
    raise UserError(f'ensemble weights must be {len(lp)} non-negative numbers with a '
                    f'positive sum, got {list(w)}')
  keep = w > 0
  lp, w = lp[keep], w[keep] / w.sum()
  a = lp + np.log(w)[:, None, None]
  top = a.max(0)
  return top + np.log(np.exp(a - top).sum(0))


def _score(log_probs, labels, metric):
  from experiments import report  # pylint: disable=g-import-not-at-top
  m = report.topk_metrics(log_probs, labels)
  return (m['loss'],) if metric == 'loss' else (-m['top1'], m['loss'])


def greedy_select(log_probs: Sequence[np.ndarray], labels: np.ndarray, *, steps: int,
                  metric: str = 'loss') -> tuple[np.ndarray, list[dict[str, Any]]]:
  """Greedy forward selection with replacement (Caruana et al., ICML 2004).

  Starting from an empty ensemble, each step adds the member (possibly one
  already in) whose addition gives the best ensemble on the selection data:
  lowest loss, or for ``metric='top1'`` highest top-1 with the loss breaking ties;
  the lower member index wins exact ties. After ``steps`` additions the best
  ensemble seen along the way is returned (the earliest, i.e. smallest, on ties).
  Selecting with replacement makes the counts weights and keeps the ensemble from
  getting worse once the good members are in (the paper's Section 2.1).

  Returns:
    (counts per member, the ``best`` ensemble's weights are ``counts / counts.sum()``;
    one trace row per step: step, added member, counts, score).
  """
  if metric not in ('loss', 'top1'):
    raise UserError(f'--select_metric={metric}: use loss or top1')
  counts = np.zeros(len(log_probs), np.int64)
  best, best_counts, trace = None, None, []
  for step in range(1, steps + 1):
    scores = []
    for i in range(len(log_probs)):
      c = counts.copy()
      c[i] += 1
      scores.append(_score(average_log_probs(log_probs, c), labels, metric))
    i = min(range(len(scores)), key=lambda j: scores[j])
    counts[i] += 1
    trace.append(dict(step=step, added=i, counts=counts.tolist(), score=scores[i]))
    if best is None or scores[i] < best:
      best, best_counts = scores[i], counts.copy()
  return best_counts, trace


# ---------------------------------------------------------------------------- outputs


def output_dir(explicit: str | None, default: str, overwrite: bool) -> tuple[str, str]:
  """(directory, note): an explicit one that holds files needs ``--overwrite``; a
  default one that exists gets a numbered sibling (``-2``, ``-3``), never reused."""
  if explicit:
    path = os.path.abspath(os.path.expanduser(explicit))
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
      raise UserError(f'--output_dir={explicit} exists and holds files (an earlier '
                      'evaluation?): choose another directory, or add --overwrite to '
                      'replace its report')
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError(f'--output_dir={explicit} is a file')
    return path, ''
  parent, name = os.path.split(os.path.abspath(default))
  path = runs_lib.unique_dir(parent, name)
  note = (f'{os.path.join(parent, name)} holds an earlier evaluation: writing {path}'
          if path != os.path.join(parent, name) else '')
  return path, note


def output_file(explicit: str | None, default: str, overwrite: bool) -> str:
  """A file path by the same rule as ``output_dir``."""
  if explicit:
    path = os.path.abspath(os.path.expanduser(explicit))
    if os.path.exists(path) and not overwrite:
      raise UserError(f'--output={explicit} exists: choose another name, or add '
                      '--overwrite to replace it')
    return path
  stem, ext = os.path.splitext(os.path.abspath(default))
  path, n = stem + ext, 1
  while os.path.exists(path):
    n += 1
    path = f'{stem}-{n}{ext}'
  return path


def describe_prep(prep) -> str:
  return (f'{prep.image_size}x{prep.image_size} ({prep.crop_mode}, crop_pct '
          f'{prep.crop_pct:g}, {prep.interpolation}), mean {list(prep.mean)}, std '
          f'{list(prep.std)}')


def describe_member(m: Member) -> str:
  if m.kind == 'weights':
    return f'{m.source} ({m.clf.model.arch}, ported ImageNet weights)'
  info = m.clf.info
  sel = info.get('selected') or f'step {info.get("step")}'
  return (f'{m.source} ({m.clf.model.arch}; {m.checkpoint}: step {info.get("step")}, '
          f'{sel})')


def devices_fact(mesh) -> str:
  d = mesh.devices.flat[0]
  return f'{mesh.size} x {d.platform} (batch sharded over a data mesh)'
