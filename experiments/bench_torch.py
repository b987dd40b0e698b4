"""Benchmark worker for timm (and torchvision's GoogLeNet) on PyTorch.

Started by ``experiments.benchmark`` in its own process: it imports torch and
never tensorflow (importing tensorflow, then triton, segfaults).
"""

from __future__ import annotations

import time

from experiments.bench import measure

# Architectures that timm does not have but torchvision does.
TORCHVISION_MODELS = {'inception_v1': 'googlenet', 'googlenet': 'googlenet'}


def _build(arch: str):
  import timm  # pylint: disable=g-import-not-at-top
  if arch in timm.list_models():
    return timm.create_model(arch, pretrained=False, num_classes=1000), f'timm {arch}'
  if arch in TORCHVISION_MODELS:
    import torchvision  # pylint: disable=g-import-not-at-top
    name = TORCHVISION_MODELS[arch]
    m = getattr(torchvision.models, name)(weights=None, aux_logits=False,
                                          init_weights=False, num_classes=1000)
    return m, f'torchvision {name}'
  return None, None


def run(cfg: dict, emit) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  info = {'platform': 'gpu' if cuda else 'cpu',
          'device_kind': torch.cuda.get_device_name(0) if cuda else 'cpu',
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}
  variants = [('timm', False)] + ([('timm_compiled', True)] if cfg.get('torch_compile') else [])
  for arch in cfg['archs']:
    size = cfg['image_size'] or cfg['default_sizes'][arch]
    model, source = _build(arch)
    if model is None:
      continue
    for fw, compiled in variants:
      for dtype in cfg['dtypes']:
        for batch in cfg['batch_sizes']:
          if source.startswith('torchvision'):
            fw = fw.replace('timm', 'torchvision')
          base = {'framework': fw, 'arch': arch, 'dtype': dtype, 'batch': batch,
                  'image_size': size, 'source': source, **info}
          try:
            emit({**base, **_bench_one(torch, model, dev, dtype, batch, size, cfg,
                                       compiled)})
          except Exception as e:  # pylint: disable=broad-except
            emit(measure.error_record(base, e))


def _bench_one(torch, model, dev, dtype, batch, size, cfg, compiled) -> dict:
  import copy  # pylint: disable=g-import-not-at-top
  rec = {}
  cuda = dev.type == 'cuda'
  m = copy.deepcopy(model).to(dev)
  fmt = torch.channels_last if cfg.get('channels_last') else torch.contiguous_format
  m = m.to(memory_format=fmt)
  gen = torch.Generator().manual_seed(0)
  x = torch.rand(batch, 3, size, size, generator=gen).mul(2).sub(1).to(dev)
  x = x.contiguous(memory_format=fmt)
  y = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
  amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def reset():
    measure.reset_peak_rss()
    if cuda:
      torch.cuda.reset_peak_memory_stats()

  fwd_model = torch.compile(m) if compiled else m
  if 'infer' in cfg['modes']:
    reset()
    m.eval()

    def infer():
      with torch.inference_mode(), amp:
        fwd_model(x)
      sync()

    t = time.perf_counter()
    infer()  # first call: torch.compile compiles here
    rec['first_call_infer_s'] = time.perf_counter() - t
    rec['infer'] = measure.median_step(infer, cfg['warmup'], cfg['repeats'])
    rec['infer_images_per_s'] = batch / rec['infer']['median_s']
    rec['peak_rss_infer_bytes'] = measure.peak_rss_bytes()
    if cuda:
      rec['device_peak_bytes'] = torch.cuda.max_memory_allocated()
  if 'train' in cfg['modes']:
    reset()
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    train_model = torch.compile(m) if compiled else m

    def train():
      opt.zero_grad(set_to_none=True)
      with amp:
        out = train_model(x)
        if isinstance(out, tuple):
          out = out[0]
        loss = loss_fn(out.float(), y)
      loss.backward()
      opt.step()
      sync()

    t = time.perf_counter()
    train()
    rec['first_call_train_s'] = time.perf_counter() - t
    rec['train'] = measure.median_step(train, cfg['warmup'], cfg['repeats'])
    rec['train_images_per_s'] = batch / rec['train']['median_s']
    rec['peak_rss_train_bytes'] = measure.peak_rss_bytes()
    if cuda:
      rec['device_peak_bytes'] = torch.cuda.max_memory_allocated()
  rec['process_maxrss_bytes'] = measure.process_maxrss_bytes()
  return rec


if __name__ == '__main__':
  measure.worker_main(run)
