"""Torch-side parity worker, run by tests/test_parity_torch.py in a subprocess.

It never imports tensorflow (importing tensorflow and then torch._dynamo/triton
crashes the process). For each weight tag it builds the reference network
(torchvision or timm) with random weights and randomised BatchNorm statistics and
affine parameters, saves it in the published file format (``.pth`` state dict;
``.safetensors`` too for timm, the Hugging Face format), converts the file (with
the CLI in a subprocess for the first tag of each source), loads it with ``create_model(TAG, pretrained=OUT)`` and
compares logits, pooled features and auxiliary logits on one batch; the logits
also on the other kernel choice (``kernels='xla'``: the default resolves to 'cpu'
here) against the same reference outputs. FaceNet tags (facenet-pytorch ``InceptionResnetV1``) compare
logits (per kernel choice too), embeddings and distances.

Usage: python tests/parity_torch_worker.py OUT_DIR TAG [TAG ...]
Writes OUT_DIR/parity.json: tag -> measurements (or the error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 2

# tag -> (builder, last feature module, aux module or None, Mixed feeding aux)
REFERENCE = {
    'inception_v1_bn.tv_in1k': ('tv_googlenet', 'inception5b', None),
    'inception_v3.tv_in1k': ('tv_inception_v3', 'Mixed_7c', ('AuxLogits', 'Mixed_6e')),
    'inception_v3.tf_in1k': ('timm:inception_v3', 'Mixed_7c', None),
    'inception_v3.tf_adv_in1k': ('timm:inception_v3', 'Mixed_7c', None),
    'inception_v3.gluon_in1k': ('timm:inception_v3', 'Mixed_7c', None),
    'inception_v4.tf_in1k': ('timm:inception_v4', 'features', None),
    'inception_resnet_v2.tf_in1k': ('timm:inception_resnet_v2', 'conv2d_7b', None),
    'inception_resnet_v2.tf_ens_adv_in1k': ('timm:inception_resnet_v2', 'conv2d_7b', None),
}


def build_reference(builder: str) -> torch.nn.Module:
  if builder == 'tv_googlenet':
    import torchvision  # pylint: disable=g-import-not-at-top
    # As torchvision builds it for its weights: aux heads in the file, transform_input.
    return torchvision.models.googlenet(weights=None, aux_logits=True,
                                        transform_input=True, init_weights=False)
  if builder == 'tv_inception_v3':
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision.models.inception_v3(weights=None, aux_logits=True,
                                           transform_input=True, init_weights=False)
  import timm  # pylint: disable=g-import-not-at-top
  return timm.create_model(builder.split(':')[1], pretrained=False)


@torch.no_grad()
def randomise(model: torch.nn.Module, x: torch.Tensor, seed: int) -> None:
  """Random weights, random BN affine params and randomised running statistics.

  Running statistics start from the batch statistics of a calibration batch of
  dissimilar images (so activations stay O(1) through 100+ layers, and no channel
  has a near-zero variance that would amplify rounding) and are then perturbed
  per channel.
  """
  g = torch.Generator().manual_seed(seed)
  bns = []
  for m in model.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
      m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
      m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one batch -> its statistics
      bns.append(m)
  model.train()
  model(x)
  for m in bns:
    m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1
                        * m.running_var.sqrt())
    m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    # A floor: a channel that the calibration batch leaves (almost) constant would
    # divide by sqrt(eps) in eval and amplify float32 rounding 30x (Inception-v4
    # reached 1e-4 in torch itself against float64 without this).
    m.running_var.add_(0.1 * m.running_var.mean())
    m.momentum = 0.1
  model.eval()


_CLI_SOURCES = set()  # sources converted once through the CLI in this process


def start_convert(source: str, tag: str, src: str, out: str) -> subprocess.Popen | None:
  """Converts ``src``: the first file of each source through the CLI, in a subprocess
  (it overlaps with the reference forward pass); the others with the same
  ``convert.convert`` in this process (a subprocess costs a Python start and the
  torch and JAX imports; the CLI's own failure modes are tested in
  test_parity_torch.py). Returns the subprocess, or None when done here.
  """
  if source in _CLI_SOURCES:
    from third_party_weights import convert  # pylint: disable=g-import-not-at-top
    convert.convert(source, tag, src, out)
    return None
  _CLI_SOURCES.add(source)
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  return subprocess.Popen([sys.executable, '-m', 'third_party_weights.convert', '--source',
                           source, '--arch', tag, '--input', src, '--output', out],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish_convert(proc: subprocess.Popen | None) -> None:
  if proc is None:
    return
  _, err = proc.communicate(timeout=600)
  if proc.returncode != 0:
    raise RuntimeError(f'convert failed ({proc.returncode}): {err[-2000:]}')


def run_tag(tag: str, out_dir: str, batch: np.ndarray, models: dict) -> dict:
  """Builds, randomises, saves, converts, loads and compares one tag.

  ``batch``: 4 images in [0, 1]; all four calibrate BN, the first BATCH are compared.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import pretrained  # pylint: disable=g-import-not-at-top

  cfg = pretrained.get_pretrained_cfg(tag)
  builder, last, aux = REFERENCE[tag]
  rec = {'source': cfg.source}
  t0 = time.time()
  times = rec['phase_seconds'] = {}
  last_lap = [t0]

  def lap(name):
    now = time.time()
    times[name] = round(now - last_lap[0], 1)
    last_lap[0] = now

  size = cfg.input_size
  x01 = batch[:, :size, :size]
  mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
  x_ours = (x01 - mean) / std  # NHWC, the cfg's normalisation
  if cfg.source == 'torchvision':
    # torchvision weights expect ImageNet mean/std input and apply transform_input.
    x_ref = (x01 - np.array(pretrained.IMAGENET_MEAN, np.float32)) / np.array(
        pretrained.IMAGENET_STD, np.float32)
  else:
    x_ref = x_ours
  x_cal_t = torch.from_numpy(np.ascontiguousarray(x_ref.transpose(0, 3, 1, 2)))
  x_ref_t, x_ours = x_cal_t[:BATCH], x_ours[:BATCH]

  ref = models.get(builder)
  if ref is None:
    ref = models[builder] = build_reference(builder)
  seed = sum(map(ord, tag))
  randomise(ref, x_cal_t, seed)
  lap('build_randomise')

  # Published file formats.
  state = {k: v.contiguous() for k, v in ref.state_dict().items()}
  pth = os.path.join(out_dir, f'{tag}.pth')
  torch.save(state, pth)
  src = pth
  if cfg.source == 'timm':
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    src = os.path.join(out_dir, f'{tag}.safetensors')
    save_file(state, src)
  out = os.path.join(out_dir, f'{tag}.converted.safetensors')
  proc = start_convert(cfg.source, tag, src, out)
  lap('save')

  feats = {}
  hooks = [getattr(ref, last).register_forward_hook(
      lambda m, i, o: feats.__setitem__('last', o))]
  if aux:
    hooks.append(getattr(ref, aux[1]).register_forward_hook(
        lambda m, i, o: feats.__setitem__('aux_in', o)))
  with torch.no_grad():
    ref_logits = ref(x_ref_t).numpy()
    ref_pooled = feats['last'].mean(dim=(2, 3)).numpy()
    ref_aux = getattr(ref, aux[0])(feats['aux_in']).numpy() if aux else None
  for h in hooks:
    h.remove()
  lap('reference_forward')
  finish_convert(proc)
  lap('convert_cli_wait')

  fwd = nnx.jit(lambda m, x: m(x))
  model = inception_jax.create_model(tag, pretrained=out, aux_logits=bool(aux))
  lap('load')
  ours = np.asarray(fwd(model, x_ours))
  lap('jax_forward')
  rec['logits_max_abs_diff'] = float(np.max(np.abs(ours - ref_logits)))
  rec['logits_max_abs'] = float(np.max(np.abs(ref_logits)))
  rec['top1_ref'] = ref_logits.argmax(-1).tolist()
  rec['top1_ours'] = ours.argmax(-1).tolist()
  if aux:
    aux_fn = nnx.jit(lambda m, x: getattr(m, aux[0])(m.features(x)[aux[1]]))
    ours_aux = np.asarray(aux_fn(model, x_ours))
    rec['aux_max_abs_diff'] = float(np.max(np.abs(ours_aux - ref_aux)))
    rec['aux_max_abs'] = float(np.max(np.abs(ref_aux)))
    lap('jax_aux')
  del model
  rec['kernels'] = logits_by_kernels(tag, out, x_ours, ref_logits, ours)
  lap('jax_forward_per_kernels')

  notop = inception_jax.create_model(tag, pretrained=out, include_top=False)
  pooled = np.asarray(fwd(notop, x_ours))
  rec['pooled_max_abs_diff'] = float(np.max(np.abs(pooled - ref_pooled)))
  rec['pooled_max_abs'] = float(np.max(np.abs(ref_pooled)))
  lap('notop_load_forward')
  rec['seconds'] = round(time.time() - t0, 1)
  jax.clear_caches()
  return rec


def logits_by_kernels(name, pretrained, x, ref_logits, default_logits) -> dict:
  """Max |logit difference| and top-1 per kernel choice.

  The default (``kernels='auto'``) is the choice it resolves to here ('cpu' on a
  CPU machine, measured above as the tag's logits); the other choice is built
  and run.
  """
  import inception_jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from inception_jax import kernels  # pylint: disable=g-import-not-at-top
  default = kernels.resolve('auto')
  other = 'xla' if default == 'cpu' else 'cpu'
  model = inception_jax.create_model(name, pretrained=pretrained, kernels=other)
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))
  return {choice: {'logits_max_abs_diff': float(np.max(np.abs(l - ref_logits))),
                   'top1_ours': l.argmax(-1).tolist()}
          for choice, l in ((default, default_logits), (other, logits))}


FACENET_TAGS = ('inception_resnet_v1.vggface2', 'inception_resnet_v1.casia_webface')


def run_facenet(tag: str, out_dir: str, batch: np.ndarray) -> dict:
  """facenet-pytorch ``InceptionResnetV1`` vs ours: logits, embeddings, distances.

  The reference is built as facenet-pytorch builds it for its weights (classifier
  of the tag's width, dropout 0.6), randomised like the others, and saved as the
  published ``.pt`` (its state dict, with ``logits``). The compared batch is three
  dissimilar faces-to-be (noise, waves, blobs) and a copy of the first with 2%
  noise: the verification-style distances must agree with facenet-pytorch's and
  put the noisy copy nearest to its original.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import inception_jax  # pylint: disable=g-import-not-at-top
  from inception_jax import pretrained  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  cfg = pretrained.get_pretrained_cfg(tag)
  size = cfg.input_size
  x01 = batch[:, :size, :size]
  rng = np.random.default_rng(7)
  noisy = np.clip(x01[0] + rng.normal(0, 0.02, x01[0].shape), 0, 1).astype(np.float32)
  test01 = np.stack([x01[0], x01[1], x01[2], noisy])
  # facenet-pytorch's fixed_image_standardization on 0..255 pixels ...
  norm_ref = lambda a: (a * 255.0 - 127.5) / 128.0
  # ... and ours: the tag's mean/std on [0, 1] (the same numbers).
  norm_ours = lambda a: (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std,
                                                                           np.float32)
  to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

  ref = InceptionResnetV1(classify=True, num_classes=cfg.num_classes)
  randomise(ref, to_t(norm_ref(x01)), sum(map(ord, tag)))
  src = os.path.join(out_dir, cfg.file_name)
  torch.save({k: v.contiguous() for k, v in ref.state_dict().items()}, src)
  out = os.path.join(out_dir, f'{tag}.converted.safetensors')
  proc = start_convert('facenet', tag, src, out)
  with torch.no_grad():
    ref_logits = ref(to_t(norm_ref(test01))).numpy()
    ref.classify = False
    ref_emb = ref(to_t(norm_ref(test01))).numpy()
  finish_convert(proc)

  x = norm_ours(test01)
  model = inception_jax.create_model(tag, pretrained=out)
  logits, emb = nnx.jit(lambda m, x: (m(x), m.embed(x)))(model, x)
  logits, emb = np.asarray(logits), np.asarray(emb)
  notop = inception_jax.create_model(tag, pretrained=out, include_top=False)
  emb_notop = np.asarray(nnx.jit(lambda m, x: m(x))(notop, x))

  sq_dist = lambda e: ((e[:, None] - e[None]) ** 2).sum(-1)  # squared L2, [4, 4]
  rec = {'source': cfg.source, 'num_classes': int(logits.shape[-1])}
  rec['logits_max_abs_diff'] = float(np.max(np.abs(logits - ref_logits)))
  rec['logits_max_abs'] = float(np.max(np.abs(ref_logits)))
  rec['top1_ref'] = ref_logits.argmax(-1).tolist()
  rec['top1_ours'] = logits.argmax(-1).tolist()
  rec['embedding_max_abs_diff'] = float(np.max(np.abs(emb - ref_emb)))
  rec['embedding_notop_max_abs_diff'] = float(np.max(np.abs(emb_notop - ref_emb)))
  rec['embedding_norms'] = np.linalg.norm(emb, axis=1).tolist()
  rec['sq_l2_ours'], rec['sq_l2_ref'] = sq_dist(emb).tolist(), sq_dist(ref_emb).tolist()
  rec['cosine_max_abs_diff'] = float(np.max(np.abs(emb @ emb.T - ref_emb @ ref_emb.T)))
  rec['kernels'] = logits_by_kernels(tag, out, x, ref_logits, logits)
  rec['seconds'] = round(time.time() - t0, 1)
  jax.clear_caches()
  return rec


def preprocessing_check(out_dir: str) -> dict:
  """Our eval transform vs torchvision's / timm's on a synthetic photo-like image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from timm.data import create_transform  # pylint: disable=g-import-not-at-top
  from torchvision import transforms as T  # pylint: disable=g-import-not-at-top

  from inception_jax import preprocessing, pretrained  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500]
  img = np.stack([(xx * 0.5) % 256, (yy * 0.7) % 256, (xx + yy) % 256], -1)
  img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
  pil = Image.fromarray(img)
  res = {}
  # torchvision's published eval transform for its v3 weights (then transform_input).
  cfg = pretrained.get_pretrained_cfg('inception_v3.tv_in1k')
  tv = T.Compose([T.Resize(342, interpolation=T.InterpolationMode.BILINEAR),
                  T.CenterCrop(299), T.ToTensor(),
                  T.Normalize(pretrained.INCEPTION_MEAN, pretrained.INCEPTION_STD)])
  ref = tv(pil).numpy().transpose(1, 2, 0)
  ours = preprocessing.eval_transform(pil, cfg)
  res['tv_inception_v3'] = float(np.max(np.abs(ours - ref)))
  for tag in ('inception_v3.gluon_in1k', 'inception_resnet_v2.tf_in1k'):
    cfg = pretrained.get_pretrained_cfg(tag)
    t = create_transform(input_size=(3, cfg.input_size, cfg.input_size),
                         interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
                         crop_pct=cfg.crop_pct)
    ref = t(pil).numpy().transpose(1, 2, 0)
    ours = preprocessing.eval_transform(pil, cfg)
    res['timm_' + tag] = float(np.max(np.abs(ours - ref)))
  return res


def images(seed: int) -> np.ndarray:
  """Four dissimilar 299x299 RGB images in [0, 1] (NHWC): noise, waves, blobs, ramp."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:299, 0:299].astype(np.float32) / 299
  noise = rng.random((299, 299, 3), dtype=np.float32)
  f = rng.uniform(2, 12, 3)
  waves = 0.5 + 0.5 * np.stack([np.sin(2 * np.pi * f[c] * (xx + c * yy)) for c in range(3)], -1)
  k = np.ones(15, np.float32) / 15
  blur = np.apply_along_axis(np.convolve, 0, rng.random((299, 299, 3)), k, 'same')
  blobs = np.apply_along_axis(np.convolve, 1, blur, k, 'same')
  blobs = (blobs - blobs.min()) / (blobs.max() - blobs.min())
  ramp = np.stack([xx, yy, 1 - xx * yy], -1)
  return np.stack([noise, waves, blobs, ramp]).astype(np.float32)


def main() -> int:
  out_dir, tags = sys.argv[1], sys.argv[2:]
  torch.set_num_threads(2)
  # Programs repeat (the tags of one architecture run the same programs): a
  # persistent compilation cache compiles each once.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.path.join(out_dir, 'xla_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  batch = images(0)
  results, models = {}, {}
  for tag in tags:
    try:
      if tag in FACENET_TAGS:
        results[tag] = run_facenet(tag, out_dir, batch)
      else:
        results[tag] = run_tag(tag, out_dir, batch, models)
    except Exception:  # recorded per tag; the test reports it
      results[tag] = {'error': traceback.format_exc()[-3000:]}
    print(tag, json.dumps(results[tag]), flush=True)
  try:
    results['preprocessing'] = preprocessing_check(out_dir)
  except Exception:
    results['preprocessing'] = {'error': traceback.format_exc()[-3000:]}
  print('preprocessing', json.dumps(results['preprocessing']), flush=True)
  with open(os.path.join(out_dir, 'parity.json'), 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
