"""Converts published Inception weights into the inception_jax format.

Convert a local file::

  python -m third_party_weights.convert --source timm --arch inception_v3.tf_in1k \\
      --input model.safetensors --output inception_v3.tf_in1k.safetensors

Download (from the manifest URL), verify the published hash, cache and convert::

  python -m third_party_weights.convert --tag inception_v3.tv_in1k

Sources: ``torchvision``, ``timm``, ``pytorch_fid``, ``torch_fidelity`` and
``facenet`` (facenet-pytorch) state dicts (``.pth``/``.pt`` read with
``torch.load(weights_only=True)``, or ``.safetensors``; pytorch_fid and
torch_fidelity publish the same FID Inception weights), ``keras`` legacy ``.h5``
files (``third_party_weights.keras_h5``), ``slim`` TensorFlow checkpoints of either
format, or their published ``.tar.gz`` (``third_party_weights.slim_ckpt``;
``--keep_background`` keeps TF-slim's 1001st class). The torch path never imports
tensorflow; the slim path never imports torch.
The output is a safetensors file whose metadata holds the tag's config; loading
it is ``create_model(TAG, pretrained=OUT)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from typing import Any

import numpy as np

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'manifest.json')
FORMAT_VERSION = 1
# Sources whose files are torch state dicts mapped by ``torch_maps``.
TORCH_SOURCES = ('timm', 'torchvision', 'pytorch_fid', 'torch_fidelity', 'facenet')
SOURCES = TORCH_SOURCES + ('keras', 'slim')
# torch-fidelity publishes pytorch-fid's FID Inception weights under its own name
# (``weights-inception-2015-12-05-6726825d.pth``, same layout and hash prefix).
SAME_FILES = {'torch_fidelity': 'pytorch_fid'}


class DownloadError(RuntimeError):
  """A download failed or its hash does not match the published one."""


def read_torch_state(path: str) -> dict[str, np.ndarray]:
  """A flat state dict of numpy arrays from a ``.pth``/``.bin`` or ``.safetensors``."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework='numpy') as f:
        return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
      raise ValueError(f'{path} is not a readable safetensors file (truncated or '
                       f'corrupt?): {e}') from e
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError...
    raise ValueError(f'{path} is not a readable torch state dict (truncated or '
                     f'corrupt, or not saved with torch.save): {e}') from e
  for wrapper in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not all(hasattr(v, 'numpy') for v in obj.values()):
    raise ValueError(f'{path} does not hold a state dict of tensors (got '
                     f'{type(obj).__name__})')
  return {k.removeprefix('module.'): v.detach().float().numpy() for k, v in obj.items()}


def convert_arrays(source: str, name: str, path: str, *, keep_background: bool = False
                   ) -> dict[str, np.ndarray]:
  """Flat project arrays from a source file for the weights ``name`` (arch.tag)."""
  arch = name.partition('.')[0]
  if keep_background and source != 'slim':
    raise ValueError('--keep_background applies to TF-slim checkpoints (--source slim) '
                     'only: other sources have no background class')
  if source == 'slim':
    from third_party_weights import slim_ckpt  # pylint: disable=g-import-not-at-top
    return slim_ckpt.convert(path, name, keep_background=keep_background)
  if source in TORCH_SOURCES:
    from third_party_weights import torch_maps  # pylint: disable=g-import-not-at-top
    if arch not in torch_maps.MAPS:
      raise ValueError(f'no torch key map for {arch}; torch maps exist for '
                       f'{sorted(torch_maps.MAPS)}')
    state = read_torch_state(path)
    main, aux = torch_maps.MAPS[arch]
    has_aux = aux and any(k.startswith(aux[0].torch[0].split('.')[0] + '.') for k in state)
    rows = main + (aux if has_aux else [])
    return torch_maps.apply(rows, state, what=f'{source} {arch}',
                            drop=torch_maps.DROP.get(arch, ()))
  if source == 'keras':
    # Written by the Keras converter helper; imports tensorflow-free h5py code.
    from third_party_weights import keras_h5  # pylint: disable=g-import-not-at-top
    return keras_h5.convert(path, name)
  raise ValueError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")


def check_against_model(name: str, arrays: dict[str, np.ndarray]) -> None:
  """Verifies keys and shapes against the (abstract) network of the tag.

  Raises:
    inception_jax.weights.WeightLoadError: the one strict check's error (missing,
      unexpected and mis-shaped keys, the likely cause).
  """
  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import factory, pretrained, weights  # pylint: disable=g-import-not-at-top

  cfg = pretrained.get_pretrained_cfg(name)
  has_aux = any(k.startswith(weights.AUX_PREFIXES) for k in arrays)
  include_top = 'Logits/kernel' in arrays
  num_classes = arrays['Logits/kernel'].shape[-1] if include_top else cfg.num_classes
  spec = inception_jax.get_arch(cfg.arch)
  model = factory.abstract_model(spec, dict(
      cfg.options, num_classes=num_classes, include_top=include_top, aux_logits=has_aux))
  weights.check(model, arrays, source=f'the arrays converted for {name}')


def file_config(name: str, arrays: dict[str, np.ndarray], *, input_path: str,
                input_sha256: str, keep_background: bool = False) -> dict[str, Any]:
  """The config stored in the converted file (tag facts + what the file holds)."""
  from inception_jax import pretrained, weights  # pylint: disable=g-import-not-at-top
  cfg = pretrained.get_pretrained_cfg(name)
  include_top = 'Logits/kernel' in arrays
  return {
      **cfg.to_dict(),
      'format_version': FORMAT_VERSION,
      'num_classes': int(arrays['Logits/kernel'].shape[-1]) if include_top
                     else cfg.num_classes,
      # TF-slim's background class kept: ImageNet class i is output i + 1.
      'label_offset': cfg.label_offset + int(keep_background),
      'include_top': include_top,
      'aux_in_file': any(k.startswith(weights.AUX_PREFIXES) for k in arrays),
      'converted_from': {'file': os.path.basename(input_path), 'sha256': input_sha256},
  }


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _hash_of(path: str, algo: str) -> str:
  h = hashlib.new(algo)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _digest_file(source: str, input_path: str) -> str:
  """The file whose sha256 is recorded: the input, or a TF checkpoint prefix's index."""
  if source == 'slim' and not os.path.isfile(input_path):
    from third_party_weights import slim_ckpt  # pylint: disable=g-import-not-at-top
    prefix = slim_ckpt.find_checkpoint(input_path)
    return prefix + '.index' if os.path.exists(prefix + '.index') else prefix
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f'no input file {input_path}')
  return input_path


def convert(source: str, name: str, input_path: str, output_path: str, *,
            keep_background: bool = False) -> dict[str, Any]:
  """Converts ``input_path`` (weights ``name`` from ``source``) to ``output_path``.

  ``keep_background`` (TF-slim only): keep the checkpoint's 1001st (background)
  class; by default it is dropped.

  Returns:
    The config written into the output file.
  """
  from inception_jax import pretrained, weights  # pylint: disable=g-import-not-at-top
  cfg = pretrained.get_pretrained_cfg(name)
  if SAME_FILES.get(source, source) != cfg.source:
    raise ValueError(f'{name} is published by {cfg.source}, not {source}; use '
                     f'--source {cfg.source}')
  digest_of = _digest_file(source, input_path)
  arrays = convert_arrays(source, name, input_path, keep_background=keep_background)
  check_against_model(name, arrays)
  config = file_config(name, arrays, input_path=digest_of,
                       input_sha256=sha256_of(digest_of),
                       keep_background=keep_background)
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  tmp = output_path + '.tmp'
  weights.save(tmp, arrays, config)
  os.replace(tmp, output_path)
  return config


def load_manifest(path: str = MANIFEST) -> dict[str, dict[str, Any]]:
  """Manifest entries by ``arch.tag``."""
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  return {e['name']: e for e in data['weights']}


def download(url: str, dest: str, file_hash: str | None, algo: str) -> str:
  """Downloads ``url`` to ``dest`` (unless cached) and verifies the hash.

  A published hash may be a prefix (torchvision's 8 hex digits of the sha256).

  Raises:
    DownloadError: on network failure or hash mismatch (the bad file is removed).
  """
  if not os.path.exists(dest):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), suffix='.part')
    try:
      with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=60) as r:
        shutil.copyfileobj(r, out)
    except Exception as e:
      os.unlink(tmp)
      raise DownloadError(f'could not download {url}: {e}') from e
    os.replace(tmp, dest)
  if file_hash:
    got = _hash_of(dest, algo)
    if not got.startswith(file_hash.lower()):
      os.unlink(dest)
      raise DownloadError(f'{algo} of {url} is {got}, the published hash is '
                          f'{file_hash}: the download is corrupt or the upstream file '
                          'changed; the file was deleted, retry or check the manifest')
  else:
    print(f'note: {url} has no published hash; sha256 {sha256_of(dest)}',
          file=sys.stderr)
  return dest


def fetch_and_convert(name: str, *, manifest: str = MANIFEST, cache: str | None = None,
                      notop: bool = False, output: str | None = None,
                      keep_background: bool = False) -> str:
  """Downloads, verifies, caches and converts the weights ``name``; returns the path.

  A ``.tar.gz`` (TF-slim) is kept as downloaded; its checkpoint is extracted to a
  temporary folder for the conversion.
  """
  from inception_jax import pretrained  # pylint: disable=g-import-not-at-top
  entries = load_manifest(manifest)
  if name not in entries:
    raise ValueError(f'{name} is not in the manifest {manifest}; valid: '
                     f'{", ".join(sorted(entries))}')
  e = entries[name]
  cache = cache or pretrained.cache_dir()
  if notop:
    if not e.get('url_notop'):
      raise ValueError(f'{name} has no published no-top file')
    url, file_hash = e['url_notop'], e.get('file_hash_notop')
  else:
    url, file_hash = e['url'], e.get('file_hash')
  upstream = os.path.join(cache, 'downloads', name, os.path.basename(url))
  download(url, upstream, file_hash, e.get('hash_algo', 'sha256'))
  cfg = pretrained.get_pretrained_cfg(name)
  out = output or os.path.join(
      cache, cfg.converted_file_notop if notop else cfg.converted_file)
  convert(e['source'], name, upstream, out, keep_background=keep_background)
  return out


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog='python -m third_party_weights.convert', description=__doc__.split('\n')[0])
  p.add_argument('--tag', help='download, verify, cache and convert this arch.tag')
  p.add_argument('--source', choices=SOURCES)
  p.add_argument('--arch', help='weights name arch.tag of --input (e.g. '
                 'inception_v3.tf_in1k)')
  p.add_argument('--input', help='local source file')
  p.add_argument('--output', help='converted file (default: the cache directory)')
  p.add_argument('--notop', action='store_true', help='with --tag: the no-top file')
  p.add_argument('--keep_background', action='store_true',
                 help='TF-slim: keep the 1001st "background" class (label_offset=1); '
                      'by default it is dropped, leaving the 1000 ImageNet classes')
  p.add_argument('--manifest', default=MANIFEST, help=argparse.SUPPRESS)
  p.add_argument('--cache', default=None,
                 help='cache directory (default $INCEPTION_JAX_CACHE or '
                      '~/.cache/inception_jax)')
  a = p.parse_args(argv)
  try:
    if a.tag:
      if a.input or a.source:
        p.error('--tag downloads the file itself; do not combine it with --input/--source')
      out = fetch_and_convert(a.tag, manifest=a.manifest, cache=a.cache,
                              notop=a.notop, output=a.output,
                              keep_background=a.keep_background)
    else:
      if not (a.source and a.arch and a.input):
        p.error('give --tag TAG, or --source, --arch and --input')
      from inception_jax import pretrained  # pylint: disable=g-import-not-at-top
      out = a.output or os.path.join(
          a.cache or pretrained.cache_dir(),
          pretrained.get_pretrained_cfg(a.arch).converted_file)
      convert(a.source, a.arch, a.input, out, keep_background=a.keep_background)
  except (ValueError, FileNotFoundError, DownloadError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
