"""Pictures for the architecture study: module diagrams and top-1 against GFLOPs.

matplotlib is imported only here, when a picture is asked for; it is not a
dependency of the library (``pip install matplotlib``).
"""

from __future__ import annotations

import os
from typing import Sequence

from inception_jax import specs

# Box colours by what the box does.
_COLORS = {'conv': '#cfe2f3', 'pool': '#fce5cd', 'concat': '#d9ead3', 'input': '#eeeeee',
           'residual': '#ead1dc'}
_COL_W = 2.3  # inches per branch column
_ROW_H = 0.95  # inches per op
_BOX_W = 2.0
_BOX_H = 0.62


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('pictures need matplotlib, which inception_jax does not install: '
                      'pip install matplotlib') from e
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _check_path(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in ('.png', '.svg', '.pdf'):
    raise ValueError(f'picture path {path!r} must end in .png, .svg or .pdf')
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ValueError(f'folder {parent} does not exist (for {path})')
  return ext


# ------------------------------------------------------------- module diagrams


def _op_signature(op):
  if isinstance(op, specs.Fork):
    return ('fork', tuple(_op_signature(o) for o in op.ops))
  if isinstance(op, specs.Pool):
    return ('pool', op.kind, op.kernel, op.stride, op.padding)
  return ('conv', type(op).__name__, op.kernel, op.stride, op.padding)


def module_kinds(spec: specs.ArchSpec) -> list[tuple[str, list[str]]]:
  """(first instance, all instances) for each distinct module structure of a table.

  Two modules are of one kind when their branches hold the same ops (kernels,
  strides, padding), whatever the widths: Inception-v3's Mixed_6b..6e are one kind.
  """
  kinds: dict[tuple, list[str]] = {}
  for layer in spec.layers:
    if isinstance(layer, specs.Repeat):
      block, names = layer.block, [f'{layer.name}/{layer.block.name}_{i + 1}'
                                   for i in range(layer.count)]
    elif isinstance(layer, specs.Mixed):
      block, names = layer, [layer.name]
    else:
      continue
    key = (isinstance(block, specs.Residual),
           tuple(tuple(_op_signature(op) for op in b) for b in block.branches))
    kinds.setdefault(key, []).extend(names)
  return [(names[0], names) for names in kinds.values()]


def _short_names(names: Sequence[str]) -> str:
  if len(names) <= 3:
    return ', '.join(names)
  return f'{names[0]} ... {names[-1]} ({len(names)})'


def _box(ax, x, y, w, text, sub, kind):
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  ax.add_patch(patches.FancyBboxPatch(
      (x - w / 2, y - _BOX_H / 2), w, _BOX_H, boxstyle='round,pad=0.02,rounding_size=0.08',
      linewidth=0.8, edgecolor='#444444', facecolor=_COLORS[kind]))
  if sub:
    ax.text(x, y + 0.1, text, ha='center', va='center', fontsize=9.5)
    ax.text(x, y - 0.16, sub, ha='center', va='center', fontsize=8, color='#555555')
  else:
    ax.text(x, y, text, ha='center', va='center', fontsize=9.5)


def _arrow(ax, x0, y0, x1, y1):
  ax.annotate('', xy=(x1, y1 + _BOX_H / 2), xytext=(x0, y0 - _BOX_H / 2),
              arrowprops=dict(arrowstyle='-|>', color='#666666', lw=0.8,
                              shrinkA=0, shrinkB=0))


def _op_label(row) -> tuple[str, str]:
  kind = row.kind.replace(' (fork)', '').replace(' (up-projection)', '')
  h, w, c = row.shape
  if 'pool' in kind:
    return kind, f'{h}x{w}x{c}'
  return f'{kind}, {c}', f'{h}x{w}x{c}'


def _panel_layout(summ, name):
  """Branch op rows (forks grouped) and the module row, from the summary."""
  module = summ.row(name)
  branches: list[list[list]] = []
  for r in summ.rows:
    parts = r.name[len(name) + 1:].split('/') if r.name.startswith(name + '/') else None
    if not parts:
      continue
    if r.level == module.level + 1 and parts[0].startswith('Branch_'):
      branches.append([])
    elif r.level == module.level + 2 and branches:
      step = branches[-1]
      if r.kind.endswith('(fork)') and step and step[-1][0].kind.endswith('(fork)'):
        step[-1].append(r)
      else:
        step.append([r])
  up = [r for r in summ.rows if r.name == f'{name}/Conv2d_1x1' or (
      r.level == module.level + 1 and r.kind.endswith('(up-projection)') and
      r.name.startswith(name + '/'))]
  return module, branches, up[:1]


def _draw_panel(ax, summ, name, instances):
  module, branches, up = _panel_layout(summ, name)
  n = len(branches)
  depth = max(len(b) for b in branches)
  residual = bool(up)
  width = n * _COL_W + (0.6 if residual else 0)
  x0 = 0.6 if residual else 0.0
  xs = [x0 + (i + 0.5) * _COL_W for i in range(n)]
  mid = x0 + n * _COL_W / 2
  y_in = 0.0
  h, w, c = module.input
  _box(ax, mid, y_in, min(width - 0.2, 3.2), 'input', f'{h}x{w}x{c}', 'input')
  y_cat = -(depth + 1) * _ROW_H
  for x, steps in zip(xs, branches):
    prev = [(mid, y_in)]
    y = y_in
    for step in steps:
      y -= _ROW_H
      k = len(step)
      bw = _BOX_W / k - 0.05 * (k - 1)
      cur = []
      for j, r in enumerate(step):
        bx = x + (j - (k - 1) / 2) * (bw + 0.08)
        text, sub = _op_label(r)
        if k > 1:
          text = text.replace('conv ', '')
        _box(ax, bx, y, bw, text, sub, 'pool' if 'pool' in r.kind else 'conv')
        cur.append((bx, y))
      for px, py in prev[-1:] if len(prev) == 1 else prev:
        for bx, by in cur:
          _arrow(ax, px, py, bx, by)
      prev = cur
    for px, py in prev:
      _arrow(ax, px, py, px, y_cat)
  cat_w = n * _COL_W - 0.3
  ch = sum(b[-1][0].shape[2] if len(b[-1]) == 1 else sum(r.shape[2] for r in b[-1])
           for b in branches)
  oh, ow, _ = (branches[0][-1][0].shape)
  _box(ax, mid, y_cat, cat_w, 'concat', f'{oh}x{ow}x{ch}', 'concat')
  y_end = y_cat
  if residual:
    text, sub = _op_label(up[0])
    y_up = y_cat - _ROW_H
    _box(ax, mid, y_up, 3.2, text + ' (linear)' if 'linear' not in text else text, sub,
         'conv')
    _arrow(ax, mid, y_cat, mid, y_up)
    y_end = y_up - _ROW_H
    spec_kind = module.kind.split(' (')[0]  # 'residual x0.17' / 'residual x1, no ReLU'
    scale = spec_kind.split()[1].rstrip(',').lstrip('x')
    relu = '' if 'no ReLU' in spec_kind else ', ReLU'
    _box(ax, mid, y_end, 3.6, f'input + {scale} x up{relu}',
         _op_label(module)[1], 'residual')
    _arrow(ax, mid, y_up, mid, y_end)
    # The skip connection, down the left side.
    ax.plot([mid - 1.6, 0.25, 0.25], [y_in, y_in, y_end], color='#aa3377', lw=1.0)
    ax.annotate('', xy=(mid - 1.8, y_end), xytext=(0.25, y_end),
                arrowprops=dict(arrowstyle='-|>', color='#aa3377', lw=1.0,
                                shrinkA=0, shrinkB=0))
  kind = module.kind.split(' (')[0]
  title = f'{name}: {kind}'
  if len(instances) > 1:
    variants = [f"{n}: {summ.row(n).kind.split(' (')[0]}" for n in instances
                if summ.row(n).kind != module.kind]
    title += f"\n(as {_short_names(instances)}{'; ' if variants else ''}{'; '.join(variants)})"

  ax.set_title(title, fontsize=11, loc='left')
  ax.set_xlim(-0.1, width + 0.1)
  ax.set_ylim(y_end - 0.5, y_in + 0.5)
  ax.set_aspect('equal')
  ax.axis('off')
  return width + 0.2, y_in - y_end + 1.0


def _panel_size(summ, name) -> tuple[float, float]:
  _, branches, up = _panel_layout(summ, name)
  depth = max(len(b) for b in branches)
  width = len(branches) * _COL_W + (0.6 if up else 0) + 0.2
  height = (depth + 1 + (2 if up else 0)) * _ROW_H + 1.0
  return width, height + 0.6  # title


def draw_modules(summ, path: str, modules: Sequence[str] | None = None) -> list[str]:
  """Draws one module of each kind of ``summ``'s network (branches, convs, widths).

  Args:
    summ: a ``Summary`` (its rows give every op's output shape at its input size).
    path: output file, .png, .svg or .pdf.
    modules: module names to draw (default: the first of each kind).

  Returns:
    The names of the drawn modules.
  """
  _check_path(path)
  kinds = module_kinds(summ.spec)
  if modules:
    known = {n for _, names in kinds for n in names}
    bad = [m for m in modules if m not in known]
    if bad:
      raise ValueError(f'{bad} are not modules of {summ.arch}; modules: '
                       f'{", ".join(sorted(known))}')
    kinds = [(m, next(names for _, names in kinds if m in names)) for m in modules]
  if not kinds:
    raise ValueError(f'{summ.arch} has no Inception modules to draw')
  plt = _pyplot()
  sizes = [_panel_size(summ, name) for name, _ in kinds]
  # Panels in rows no wider than ~21 inches.
  rows, cur, cur_w = [], [], 0.0
  for i, (w, _) in enumerate(sizes):
    if cur and cur_w + w > 21:
      rows.append(cur)
      cur, cur_w = [], 0.0
    cur.append(i)
    cur_w += w
  rows.append(cur)
  fig_w = max(sum(sizes[i][0] for i in r) for r in rows) + 0.4
  row_h = [max(sizes[i][1] for i in r) for r in rows]
  header = 0.7
  fig_h = sum(row_h) + header
  fig = plt.figure(figsize=(fig_w, fig_h))
  h, w, c = summ.input_shape
  fig.text(0.01, 1 - 0.35 / fig_h, f'{summ.arch}: one module of each kind at {h}x{w}x{c} '
           'input (op, output channels; output H x W x C below)', fontsize=12,
           va='center')
  top = fig_h - header
  for r, rh in zip(rows, row_h):
    left = 0.2
    for i in r:
      name, instances = kinds[i]
      pw, ph = sizes[i]
      ax = fig.add_axes([left / fig_w, (top - ph) / fig_h, pw / fig_w, (ph - 0.6) / fig_h])
      _draw_panel(ax, summ, name, instances)
      left += pw
    top -= rh
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [name for name, _ in kinds]


# ------------------------------------------------------------- family plot


def plot_family(rows, path: str) -> None:
  """Reported ImageNet top-1 against inference GFLOPs, one point per weight set.

  Args:
    rows: ``summary.family()`` rows.
    path: output file, .png, .svg or .pdf.
  """
  _check_path(path)
  plt = _pyplot()
  points = [(r.arch, p) for r in rows for p in r.weights]
  if not points:
    raise ValueError('no architecture has pretrained weights with a reported top-1')
  fig, ax = plt.subplots(figsize=(10, 7.5))
  cmap = plt.get_cmap('tab10')
  archs = sorted({a for a, _ in points})
  color = {a: cmap(i % 10) for i, a in enumerate(archs)}
  for a in archs:
    ps = [p for b, p in points if b == a]
    ax.scatter([p.gflops for p in ps], [p.top1 for p in ps], s=50, color=color[a],
               label=a, zorder=3, edgecolor='black', linewidth=0.5)
  # Labels to the right of each cluster of nearby points, spread vertically so
  # that none overlap (several weights share one architecture's GFLOPs).
  clusters: list[list] = []
  for a, p in sorted(points, key=lambda ap: ap[1].gflops):
    if clusters and p.gflops - clusters[-1][-1][1].gflops < 3.0:
      clusters[-1].append((a, p))
    else:
      clusters.append([(a, p)])
  all_y = [p.top1 for _, p in points]
  gap = 0.028 * max(max(all_y) - min(all_y), 4.0)  # ~13 points at this figure height
  placed = []
  for group in clusters:
    group.sort(key=lambda ap: ap[1].top1)
    ys = []
    for _, p in group:
      ys.append(p.top1 if not ys else max(p.top1, ys[-1] + gap))
    shift = (sum(ys) - sum(p.top1 for _, p in group)) / len(group)
    x_text = max(p.gflops for _, p in group) + 1.0
    for (a, p), y in zip(group, ys):
      placed.append(y - shift)
      ax.annotate(f'{p.name} ({p.top1:.2f})', xy=(p.gflops, p.top1),
                  xytext=(x_text, y - shift), fontsize=9, va='center',
                  arrowprops=dict(arrowstyle='-', color='#999999', lw=0.6))
  xs = [p.gflops for _, p in points]
  ax.set_xlim(0, max(xs) * 1.55)
  ax.set_ylim(min(all_y + placed) - 2 * gap, max(all_y + placed) + 2 * gap)
  ax.set_xlabel('inference GFLOPs per image (2 x multiply-adds, at the weights\' input size)')
  ax.set_ylabel('reported ImageNet-1k top-1 (%)')
  ax.set_title('Inception family: reported top-1 of the available weights against compute')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
