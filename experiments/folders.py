"""Image folders without TensorFlow: split layouts, class folders, file checks.

Everything here runs before TensorFlow is imported, so a wrong folder is reported
within a second of starting a command.

Layouts (``resolve_folder_layout``):

* ``PATH/<class>/**/<image>``: one sub-folder per class (Keras
  ``flow_from_directory``).
* ``PATH/<split>/<class>/...``: split folders named ``train`` / ``training``,
  ``val`` / ``valid`` / ``validation`` / ``dev``, ``test`` / ``testing`` (any case,
  optionally with a prefix word: Kaggle's ``seg_train``, ``seg_test``); a
  ``pred`` / ``predict`` folder of unlabelled images is ignored.
* One redundant nesting level, at the top or inside a split: a folder that holds
  nothing but one sub-folder which itself holds folders (``seg_train/seg_train/``,
  an archive's wrapper folder) stands for that sub-folder.

Refused with an error that names the fix: class folders named like splits (a
``train`` + ``test`` pair would otherwise be learnt as two classes), fewer than
two classes, empty class folders, split folders mixed with other folders.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import threading

import numpy as np

# A file with a side below this has no usable content for a classifier.
MIN_IMAGE_SIDE = 4

_SPLIT_WORDS = {
    'train': 'train', 'training': 'train',
    'val': 'validation', 'valid': 'validation', 'validation': 'validation',
    'dev': 'validation',
    'test': 'test', 'testing': 'test',
    'pred': 'predict', 'predict': 'predict', 'prediction': 'predict',
}
_SPLIT_RE = re.compile(r'^(?:[a-z0-9]+[ _.-])?(' + '|'.join(_SPLIT_WORDS) + r')$')


class DataError(ValueError):
  """A dataset cannot be used as given (the message names the problem and the fix)."""


def split_role(name: str) -> str | None:
  """'train', 'validation', 'test', 'predict' for a split-like folder name, else None.

  ``train``, ``Validation``, ``seg_test``, ``data-val`` are split names; ``trains``
  or ``training_shoes`` are not.
  """
  m = _SPLIT_RE.match(name.strip().lower())
  return _SPLIT_WORDS[m.group(1)] if m else None


def _subdirs(d: str) -> list[str]:
  return sorted(x for x in os.listdir(d)
                if not x.startswith('.') and os.path.isdir(os.path.join(d, x)))


def _files(d: str) -> list[str]:
  return sorted(x for x in os.listdir(d)
                if not x.startswith('.') and os.path.isfile(os.path.join(d, x)))


def _unwrap(d: str, notes: list[str]) -> str:
  """``d``, or its only sub-folder when ``d`` is a redundant nesting level.

  A lone sub-folder named like a split is a split (``data/test/``), not a wrapper,
  unless it repeats its parent's name (``seg_test/seg_test/``).
  """
  subs = _subdirs(d)
  if len(subs) == 1 and split_role(subs[0]) and subs[0] != os.path.basename(
      os.path.normpath(d)):
    return d
  if len(subs) == 1 and not _files(d) and _subdirs(os.path.join(d, subs[0])):
    notes.append(f'{d}: one sub-folder only, using {os.path.join(d, subs[0])}')
    return os.path.join(d, subs[0])
  return d


def _check_dir(path: str, what: str) -> str:
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise DataError(f'{what} {path}: no such directory (give folder:PATH with one '
                    'sub-folder of images per class)')
  return path


def resolve_folder_layout(root: str, require_train: bool = True) -> dict[str, str]:
  """Where the splits of ``folder:root`` are.

  Returns:
    ``{'train': dir}`` for a plain class-folder layout, else the split folders
    found: ``train`` and optionally ``validation`` and ``test`` (each a folder of
    class folders), plus ``notes`` (what was unwrapped or ignored, for the log).

  Raises:
    DataError: split folders without a training split, two folders for one
      split, or split folders mixed with other folders.
  """
  root = _check_dir(root, 'folder:')
  notes: list[str] = []
  root = _unwrap(root, notes)
  subs = _subdirs(root)
  roles = {s: split_role(s) for s in subs}
  if not any(roles.values()):
    return dict(train=root, notes='; '.join(notes))
  by_role = collections.defaultdict(list)
  for s, r in roles.items():
    if r:
      by_role[r].append(s)
  others = [s for s in subs if not roles[s]]
  found = ', '.join(f'{s}/' for s in subs if roles[s])
  if others and 'train' not in by_role:  # class folders, some named like splits
    raise _split_named_error(root, [s for s in subs if roles[s]])
  if 'train' not in by_role and require_train:
    raise DataError(
        f'{root} holds split folders ({found}) but no training split: point '
        f'--dataset at the folder that holds train/ (or the class folders). If these '
        'are classes, rename them: class folders may not be named like splits '
        '(train, val, validation, test)')
  if others:
    raise DataError(
        f'{root} mixes split folders ({found}) with other folders '
        f'({", ".join(o + "/" for o in others)}): move the other folders out, or '
        'point --dataset at one folder of class folders')
  for r, dirs in by_role.items():
    if len(dirs) > 1:
      raise DataError(f'{root} has {len(dirs)} folders for the {r} split '
                      f'({", ".join(dirs)}); keep one')
  out = {}
  for r, (d,) in by_role.items():
    if r == 'predict':
      notes.append(f'{os.path.join(root, d)}: unlabelled, not used for training')
      continue
    out[r] = _unwrap(os.path.join(root, d), notes)
  out['notes'] = '; '.join(notes)
  return out


def resolve_class_folder(path: str, what: str) -> str:
  """A folder given as one split (``--validation_dataset``, ``evaluate --dataset``).

  Accepts ``folder:PATH`` or ``PATH``; unwraps one redundant level. When ``PATH``
  is a split layout, its test split (else validation) is used; the caller's log says
  which.
  """
  path = path[len('folder:'):] if path.startswith('folder:') else path
  layout = resolve_folder_layout(path, require_train=False)
  if set(layout) - {'notes'} == {'train'}:
    return layout['train']
  for role in ('test', 'validation'):
    if role in layout:
      return layout[role]
  raise DataError(f'{what} {path} is a split layout with only a training split; point '
                  'it at a folder of class folders')


def _split_named_error(root: str, split_named: list[str]) -> DataError:
  return DataError(
      f'{root} has class folders named like dataset splits ({", ".join(split_named)}): '
      f'a classifier would learn "{split_named[0]}" as a class. Point the dataset at '
      f'one split (e.g. folder:{os.path.join(root, split_named[0])}) or at the folder '
      'that holds the split folders, or move the split out of the class folders')


def list_class_dirs(root: str, *, min_classes: int = 2) -> tuple[list[str],
                                                                 dict[str, list[str]]]:
  """Class names (sorted) and their files under ``root``.

  Raises:
    DataError: no class folders, class folders named like splits, fewer than
      ``min_classes`` classes, or an empty class folder.
  """
  names = _subdirs(root)
  if not names:
    loose = _files(root)
    raise DataError(
        f'{root} has no class sub-folders (found {len(loose)} loose files). Expected '
        'one folder per class, like Keras flow_from_directory: PATH/<class>/<image>, or '
        'PATH/train/<class>/... and PATH/validation/<class>/...')
  split_named = [n for n in names if split_role(n)]
  if split_named:
    raise _split_named_error(root, split_named)
  if len(names) < min_classes:
    raise DataError(
        f'{root} has only one class folder ({names[0]}/): a classifier needs at least '
        'two classes. Point the dataset at the folder that holds all the class '
        'folders, or add classes')
  files = {}
  for name in names:
    found = []
    for d, subdirs, fnames in os.walk(os.path.join(root, name), followlinks=True):
      subdirs[:] = sorted(s for s in subdirs if not s.startswith('.'))
      found += [os.path.join(d, f) for f in sorted(fnames) if not f.startswith('.')]
    if not found:
      raise DataError(f'class folder {os.path.join(root, name)} is empty: add images or '
                      'remove the folder (every sub-folder is a class)')
    files[name] = found
  return names, files


def check_class_names(expected: list[str], found: list[str], where: str,
                      reference: str) -> None:
  """Refuses a split whose class names differ from ``expected``, naming the difference."""
  if list(found) == list(expected):
    return
  extra = sorted(set(found) - set(expected))
  missing = sorted(set(expected) - set(found))
  parts = []
  if extra:
    parts.append(f'not in {reference}: {extra}')
  if missing:
    parts.append(f'missing from {where}: {missing}')
  raise DataError(f'the class folders of {where} differ from {reference}\'s classes '
                  f'({"; ".join(parts)}). Use a folder with exactly the classes '
                  f'{list(expected)}')


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                    '.ppm', '.pgm')


def expand_paths(patterns: list[str]) -> tuple[list[str], list[str]]:
  """Image files from paths, folders (recursive) and globs, in order, de-duplicated.

  Returns:
    ``(files, problems)``: problems are arguments that matched nothing.
  """
  files, problems, seen = [], [], set()

  def add(p):
    p = os.path.abspath(p)
    if p not in seen:
      seen.add(p)
      files.append(p)

  for pat in patterns:
    pat = os.path.expanduser(pat)
    matches = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else (
        [pat] if os.path.exists(pat) else [])
    if not matches:
      problems.append(f'{pat}: no such file, folder or match')
    for m in matches:
      if os.path.isdir(m):
        for d, subdirs, fnames in os.walk(m, followlinks=True):
          subdirs[:] = sorted(s for s in subdirs if not s.startswith('.'))
          for f in sorted(fnames):
            if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS):
              add(os.path.join(d, f))
      else:
        add(m)
  return files, problems


_CONVERTED_NOTE = {
    'mode': 'unusual pixel format',
    'format': 'format TensorFlow does not decode',
}


def check_image(path: str, cache_dir: str) -> tuple[str | None, str]:
  """Validates one file; returns (usable path or None, status).

  status: 'ok', 'converted: <why>' or 'skipped: <why>'.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      fmt, mode = im.format, im.mode
      im.load()  # full decode: catches truncated and corrupt data
      w, h = im.size
      if min(w, h) < MIN_IMAGE_SIDE:
        return None, f'skipped: tiny ({w}x{h} px)'
      if fmt in ('JPEG', 'PNG') and mode in ('RGB', 'L'):
        return path, 'ok'  # TF decodes these directly (16-bit RGB PNGs included)
      why = f'{fmt} {mode}'
      if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        # 16/32-bit grayscale: PIL's convert('RGB') clips at 255; scale instead.
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if a.max() <= 65535 else a * (255.0 / max(a.max(), 1.0))
        rgb = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)).convert('RGB')
      elif mode == 'F':
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        rgb = Image.fromarray(np.round(a).astype(np.uint8)).convert('RGB')
      else:
        # RGBA/LA/P: alpha dropped like Keras load_img and timm (convert('RGB')).
        rgb = im.convert('RGB')
  except UnidentifiedImageError:
    return None, 'skipped: not an image'
  except Image.DecompressionBombError:
    return None, 'skipped: too large (decompression bomb check)'
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    return None, f'skipped: corrupt or truncated ({type(e).__name__})'
  st = os.stat(path)
  key = hashlib.sha1(f'{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}'.encode())
  out = os.path.join(cache_dir, key.hexdigest() + '.png')
  if not os.path.exists(out):
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{out}.{os.getpid()}.{threading.get_ident()}.tmp'
    rgb.save(tmp, format='PNG')
    os.replace(tmp, out)
  return out, f'converted: {why}'


def scan(files: list[str], cache_dir: str, num_threads: int | None = None
         ) -> tuple[list[str | None], collections.Counter, list[str]]:
  """Checks every file in a thread pool; results are cached in a manifest.

  Returns:
    ``(usable, counts, examples)``: per file the path to read (the file, a converted
    copy, or None when skipped), counts per status, and 'path (status)' lines of
    the files that were not plain ok.
  """
  os.makedirs(cache_dir, exist_ok=True)
  manifest_path = os.path.join(cache_dir, 'scan_manifest.json')
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    manifest = {}

  def key(p):
    st = os.stat(p)
    return f'{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}'

  def check(p):
    try:
      k = key(p)
    except OSError as e:
      return p, (None, f'skipped: cannot read ({type(e).__name__})')
    hit = manifest.get(k)
    if hit is not None and (hit[0] is None or os.path.exists(hit[0])):
      return k, tuple(hit)
    return k, check_image(p, cache_dir)

  workers = num_threads or min(32, 2 * (os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(check, files))
  manifest.update({k: list(v) for k, v in results})
  tmp = f'{manifest_path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f)
  os.replace(tmp, manifest_path)
  counts = collections.Counter(status for _, (_, status) in results)
  examples = [f'{p} ({s})' for p, (_, (_, s)) in zip(files, results) if s != 'ok']
  return [usable for _, (usable, _) in results], counts, examples


def default_cache_dir(root: str) -> str:
  """Where converted copies of ``root``'s odd-format images and its scan manifest go."""
  base = os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache'))
  h = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
  return os.path.join(base, 'inception_jax', 'folders', h)
