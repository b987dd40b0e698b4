"""inception_jax.summary: totals, multiply-adds, freeze marks, paper tables, CLI.

References are independent of the table walk under test: the parameter and
statistic counts of the built network (``nnx.eval_shape``, nothing initialised),
XLA's cost analysis of the unrolled network (lowered, not compiled), the train
step's actual updates, Keras' own layer names and shapes (in a subprocess),
torchvision's published GFLOPS and the numbers printed in the papers.
"""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import _dist_worker as tiny
import inception_jax as ij
from inception_jax import train
from inception_jax.summary import KERAS_NAMES, main, paper_tables, summary

ARCHS = ij.list_models()


def _has_aux(arch):
  return bool(ij.get_arch(arch).aux_heads)


@functools.cache
def _abstract(arch, **options):
  """The network, built abstractly (no initialiser runs), blocks unrolled."""
  return nnx.eval_shape(lambda: ij.create_model(arch, scan_blocks=False, **options))


def _count(state):
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state))


def _scope_params(model, top):
  return _count(nnx.state(getattr(model, top), nnx.Param))


# ------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('arch', ARCHS)
def test_totals_and_rows_equal_the_built_network(arch):
  """Totals, per-endpoint and per-block counts against the network's nnx state."""
  aux = _has_aux(arch)
  model = _abstract(arch, aux_logits=aux)
  s = summary(arch, aux_logits=aux)
  t = s.totals
  assert t.params == _count(nnx.state(model, nnx.Param))
  assert t.bn_stats == _count(nnx.state(model, nnx.BatchStat))
  assert t.trainable == t.params and t.frozen == 0
  assert list(s.endpoints) == list(model.layer_names)
  for name in model.layer_names + tuple(h for h, _ in model.aux_names) + ('Logits',):
    group = s.group(name)
    want = _scope_params(model, name)
    assert sum(r.params for r in group) == want, name
    if len(group) > 1:  # a Repeat: every block row holds 1/count of the stack
      assert [r.name for r in group] == [
          f'{name}/{getattr(model, name).block_name}_{i + 1}' for i in range(len(group))]
      assert all(r.params * len(group) == want for r in group), name
  # Level-0 rows add up; branches and ops add up to their module.
  for r in s.rows:
    kids = [k for k in s.rows if k.level == r.level + 1 and k.name.startswith(r.name + '/')]
    if kids:
      assert sum(k.params for k in kids) == r.params, r.name
      assert sum(k.macs for k in kids) == r.macs, r.name


@pytest.mark.parametrize('arch, options', [
    ('inception_v3', dict(bn_scale=False, include_top=False)),
    ('inception_v3', dict(batch_norm=False, num_classes=10, in_channels=1)),
    ('inception_v3', dict(conv_bias=True, pooling='max', include_top=False)),
    ('inception_v1_bn', dict(padding='symmetric', aux_logits=True)),
    ('inception_v1', dict(aux_logits=False, dropout_rate=0.5)),
    ('inception_resnet_v2', dict(bn_scale=False, num_classes=7, aux_logits=True)),
])
def test_options_change_counts_as_in_the_network(arch, options):
  model = _abstract(arch, **options)
  s = summary(arch, **options)
  assert s.totals.params == _count(nnx.state(model, nnx.Param))
  assert s.totals.bn_stats == _count(nnx.state(model, nnx.BatchStat))
  assert s.totals.layers == summary(arch).totals.layers - (
      0 if options.get('include_top', True) else 1)


def test_published_counts_and_compute():
  # torchvision metadata: GoogLeNet 6,624,904 params, 1.498 GFLOPS ("_ops", counted
  # as multiply-adds); Inception-v3 5.713 GFLOPS (27,161,264 params with AuxLogits).
  g = summary('inception_v1_bn', padding='symmetric')
  assert g.totals.params == 6_624_904 and round(g.totals.macs / 1e9, 3) == 1.498
  v3 = summary('inception_v3', aux_logits=True)
  assert v3.totals.params == 27_161_264 and round(v3.totals.macs / 1e9, 3) == 5.713
  assert v3.totals.flops == 2 * v3.totals.macs
  # Keras 3.15.1 InceptionV3 / InceptionResNetV2 (weights=None), trainable and
  # non-trainable counts; the tags' options give Keras' BN without scale.
  for tag, trainable, stats in (('inception_v3.keras', 23_817_352, 34_432),
                                ('inception_resnet_v2.keras', 55_813_192, 60_544)):
    t = summary(tag).totals
    assert (t.params, t.bn_stats) == (trainable, stats), tag
  # GoogLeNet: "22 layers deep when counting only layers with parameters" (Section 5).
  assert summary('inception_v1').totals.layers == 22
  # The model object gives its own options.
  model = _abstract('inception_v3', num_classes=5, bn_scale=False)
  assert summary(model).totals == summary('inception_v3', num_classes=5,
                                          bn_scale=False).totals


# ------------------------------------------------------ multiply-adds against XLA


def _xla_flops(module, shape):
  graphdef, state = nnx.split(module)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x)
  return lowered.cost_analysis()['flops']


def _elementwise_allowance(rows):
  """What XLA also counts beside the convolutions, bounded per output element.

  BatchNorm applied as ``x * a + b`` and ReLU are 3 flops per conv output (bias +
  ReLU without BN), plus per-channel work for ``a`` and ``b`` (5 per element covers
  it down to a 1x1 map); a k x k pool window k^2; LRN's square, window sum and
  power 10; a residual block's scale, sum and ReLU 3; a global pool 1 per input
  element (an adaptive one 2); a linear layer's bias and ReLU 2.
  """
  names = [r.name for r in rows]
  total = 0
  for r in rows:
    n = int(np.prod(r.shape))
    if r.kind.startswith('residual'):
      total += 3 * n
    if any(o.startswith(r.name + '/') for o in names):
      continue  # not a leaf: its ops are counted
    if 'conv' in r.kind:
      total += 5 * n
    elif 'global' in r.kind:
      total += int(np.prod(r.input)) + n
    elif 'adaptive' in r.kind:  # PyTorch's bins overlap: 14 -> 4 sums 16 of 14 rows
      total += 2 * int(np.prod(r.input)) + n
    elif 'pool' in r.kind:
      k = [int(v) for v in re.search(r'(\d+)x(\d+)', r.kind).groups()]
      total += (k[0] * k[1] + 1) * n
    elif r.kind.startswith('LRN'):
      total += 10 * n
    elif r.kind == 'linear':
      total += 2 * n
  return total


@pytest.mark.parametrize('arch', ARCHS)
def test_macs_against_xla_cost_analysis(arch):
  """Every row's multiply-adds against XLA's count for that part of the network.

  XLA's HloCostAnalysis counts 2 flops per multiply-add of a convolution but skips
  kernel taps that fall on zero padding, and counts elementwise work too. So per
  row: 2 * macs_valid <= XLA <= 2 * macs_valid + the elementwise allowance above
  (at most 5.3% of a row: Conv2d_1a_3x3, 3 input channels). ``macs`` (padding
  taps included, the papers' convention) is at least ``macs_valid``.
  """
  aux = _has_aux(arch)
  model = _abstract(arch, aux_logits=aux)
  s = summary(arch, aux_logits=aux)
  heads = [h for h, _ in model.aux_names]
  for name in model.layer_names + tuple(heads) + ('Logits',):
    group = s.group(name)
    rows = [r for r in s.rows if r.endpoint == name]
    shape = group[0].input if name != 'Logits' else group[0].input[2:]
    xla = _xla_flops(getattr(model, name), shape)
    valid = 2 * sum(r.macs_valid for r in group)
    assert valid <= xla <= valid + _elementwise_allowance(rows), (name, xla, valid)
    assert all(r.macs >= r.macs_valid for r in rows)
  # Padding taps are a few percent of the total, no more.
  t = s.totals
  valid = sum(r.macs_valid for r in s.rows if r.level == 0 and not r.train_only)
  assert 0.9 * t.macs <= valid <= t.macs


def test_valid_macs_by_hand():
  # Conv2d_2b_3x3 of v3: 3x3 SAME on 147x147x32 -> 64. Padding taps per axis: the
  # first and last output rows miss one kernel row each: 147*3 - 2 = 439 of 441.
  r = summary('inception_v3').row('Conv2d_2b_3x3')
  assert r.macs == 147 * 147 * 9 * 32 * 64
  assert r.macs_valid == 439 * 439 * 32 * 64
  assert r.params == 9 * 32 * 64 + 2 * 64 and r.bn_stats == 2 * 64


# ---------------------------------------------------------------- freeze marks


def _changed_tops(before, after, spec_rows):
  """Row name -> whether the train step changed any of its parameters."""
  changed = {}
  flat_b = dict(nnx.to_flat_state(before))
  for path, var in nnx.to_flat_state(after):
    old, new = np.asarray(flat_b[path].get_value()), np.asarray(var.get_value())
    top = str(path[0])
    blocks = [r.name for r in spec_rows if r.endpoint == top and r.level == 0]
    if len(blocks) > 1:  # stacked: axis 0 is the block
      for i, name in enumerate(blocks):
        changed[name] = changed.get(name, False) or not np.array_equal(old[i], new[i])
    else:
      changed[top] = changed.get(top, False) or not np.array_equal(old, new)
  return changed


def test_freeze_marks_match_what_the_train_step_updates():
  """The marks of summary(freeze=...) against two real SGD steps on the tiny table.

  freeze='Mixed_6a' freezes Conv2d_1a_3x3, Mixed_5b and Mixed_6a; the stacked
  blocks after it, the classifier and the aux head (which hangs on the frozen
  Mixed_5b) train.
  """
  freeze = 'Mixed_6a'
  cfg = train.TrainConfig(optimizer='sgd', learning_rate=0.1, schedule='constant',
                          freeze=freeze, aux_loss_weight=0.4)  # the tiny table is unregistered
  mesh = train.make_mesh(1)
  graphdef, state = train.create_train_state(tiny.tiny_model(), cfg, mesh)
  step = train.make_train_step(graphdef, cfg, mesh)
  before = jax.tree.map(np.array, state.params)
  images, labels = tiny.global_batch()
  for _ in range(2):
    state, metrics = step(state, images, labels)
    assert bool(metrics['finite'])
  s = summary(tiny.tiny_spec(), freeze=freeze, aux_logits=True, num_classes=tiny.NUM_CLASSES,
              bn_momentum=0.9)
  changed = _changed_tops(before, state.params, s.rows)
  marks = {r.name: r.trainable for r in s.rows if r.level == 0 and r.params}
  assert marks == changed
  assert marks == {'Conv2d_1a_3x3': False, 'Mixed_5b': False, 'Mixed_6a': False,
                   'Repeat/block8_1': True, 'Repeat/block8_2': True, 'Logits': True,
                   'AuxLogits': True}
  t = s.totals
  assert t.frozen == sum(r.params for r in s.rows if r.level == 0 and r.trainable is False)
  assert t.trainable + t.frozen == t.params


def test_freeze_errors_and_table_column():
  with pytest.raises(ValueError, match="unknown freeze 'Mixed_9z'.*Mixed_7c"):
    summary('inception_v3', freeze='Mixed_9z')
  s = summary('inception_resnet_v2', freeze='Repeat', depth=1)
  text = s.table()
  assert 'freeze=Repeat' in text
  assert s.row('Repeat/block35_10').trainable is False
  assert s.row('Mixed_6a').trainable is True and s.row('Logits').trainable is True
  assert s.row('MaxPool_3a_3x3').trainable is None  # nothing to train


# ------------------------------------------------------------------ row layout


def test_rows_levels_and_repeat_blocks():
  s = summary('inception_resnet_v2', depth=2)
  top = [r.name for r in s.rows if r.level == 0]
  assert top[:9] == ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'MaxPool_3a_3x3',
                     'Conv2d_3b_1x1', 'Conv2d_4a_3x3', 'MaxPool_5a_3x3', 'Mixed_5b',
                     'Repeat/block35_1']
  assert sum(1 for n in top if n.startswith('Repeat_1/block17_')) == 20
  assert top[-3:] == ['global_pool', 'dropout', 'Logits']
  b = [r for r in s.rows if r.name.startswith('Repeat/block35_1/')]
  assert [(r.name.split('/', 2)[2], r.level) for r in b][:3] == [
      ('Branch_0', 1), ('Branch_0/Conv2d_1x1', 2), ('Branch_1', 1)]
  assert s.row('Repeat/block35_1/Conv2d_1x1').kind == 'conv 1x1 linear (up-projection)'
  assert s.row('Repeat/block35_1').kind == 'residual x0.17 (3 branches)'
  assert s.row('Block8').kind == 'residual x1, no ReLU (2 branches)'
  # Table text: depth 0 has no branch rows, depth 1 has them.
  assert 'Branch_0' not in s.table(0) and 'Branch_0' in s.table(1)
  assert str(s) == s.table(2)
  # Fork convs sit side by side in Inception-v3's 8x8 modules.
  v3 = summary('inception_v3', depth=1)
  assert v3.row('Mixed_7b/Branch_1').kind == '1x1 384 > {1x3 384, 3x1 384}'
  assert v3.row('Mixed_7b/Branch_1').shape == (8, 8, 768)
  # Non-square input and the input-size check.
  assert summary('inception_v3', (299, 399)).endpoints['Mixed_7c'] == (8, 11, 2048)
  with pytest.raises(ValueError, match='at least 75x75, got 74x74'):
    summary('inception_v3', 74)


# ---------------------------------------------------------------- paper tables

def _by_last_endpoint(comps):
  return {c.paper.endpoints[-1]: c for c in comps if c.paper.endpoints}


@pytest.mark.parametrize('arch', [a for a in ARCHS if paper_tables.paper_table(a)])
def test_every_paper_difference_is_explained(arch):
  """No unexplained mismatch; every model row is in the paper table or explained."""
  s = summary(arch)
  table = paper_tables.paper_table(arch)
  comps = s.paper_comparison()
  assert [c.status for c in comps if c.status == 'unexplained'] == []
  covered = {e for row in table.rows for e in row.endpoints}
  extra = dict(table.extra)
  top = {r.endpoint for r in s.rows if r.level == 0 and not r.train_only}
  assert top == covered | set(extra), arch
  assert not covered & set(extra) and all(extra.values())
  assert 'UNEXPLAINED' not in s.paper_text()


def test_paper_tables_exist_for_the_papers_networks():
  have = {a for a in ARCHS if paper_tables.paper_table(a)}
  assert have >= {'inception_v1', 'inception_v1_bn', 'inception_v2', 'inception_v3',
                  'inception_v4', 'inception_resnet_v1', 'inception_resnet_v2',
                  'inception_resnet_v2_paper'}


def test_v3_table1_and_inception_resnet_figures():
  v3 = {c.paper.endpoints[0] if c.paper.endpoints else c.paper.label: c
        for c in summary('inception_v3').paper_comparison()}
  # Table 1 prints row inputs; the released stem differs from row 5 on.
  assert [v3[n].status for n in ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3',
                                 'MaxPool_3a_3x3')] == ['same'] * 4
  assert v3['Conv2d_3b_1x1'].mismatches == ('patch',)  # 1x1 where Table 1 has 3x3
  assert v3['Conv2d_4a_3x3'].mismatches == ('size', 'patch')
  assert v3['Mixed_5b'].model['size'] == (35, 35, 192)  # Table 1: 35x35x288
  assert v3['Mixed_6b'].mismatches == ('count',) and v3['Mixed_6b'].model['count'] == 4
  assert v3['Mixed_7b'].status == 'same'
  # The comparison is of the architecture: other sizes and options change nothing.
  other = summary('inception_v3', 331, num_classes=5, bn_scale=False)
  assert other.paper_comparison() == list(v3.values())
  assert "compared at the paper's input size" in other.paper_text()
  # Inception-ResNet-v2 as in the paper: the figures' 1154 and 2048 are not the
  # concatenation widths 1152 and 2144.
  ir = _by_last_endpoint(summary('inception_resnet_v2_paper').paper_comparison())
  assert ir['Repeat_1'].model['size'] == (17, 17, 1152) and ir['Repeat_1'].mismatches == (
      'size',)
  assert ir['Repeat_2'].model['size'] == (8, 8, 2144)
  assert ir['Repeat'].status == 'same'
  released = _by_last_endpoint(summary('inception_resnet_v2').paper_comparison())
  assert released['Repeat'].mismatches == ('size', 'count')  # 320 wide, 10 blocks
  assert released['Block8'].model['count'] == 10
  # BN-Inception Figure 5: the stride-2 rows are printed at their input size, and
  # 'avg + 128' in 4c/4d is 96 in TF-slim.
  v2 = _by_last_endpoint(summary('inception_v2').paper_comparison())
  assert v2['Mixed_4a'].mismatches == ('size',) and v2['Mixed_5a'].mismatches == ('size',)
  assert v2['Mixed_4d'].model['filters'][-1] == 'avg + 96'
  assert v2['Mixed_4d'].mismatches == ('filters',) and v2['Mixed_4d'].status == 'paper error'
  v4 = summary('inception_v4').paper_comparison()
  assert all(not c.mismatches for c in v4)


# --------------------------------------------------------------- Keras names

_KERAS_LAYERS = textwrap.dedent('''
    import json
    import keras
    out = {}
    for name, build in (('inception_v3', keras.applications.InceptionV3),
                        ('inception_resnet_v2', keras.applications.InceptionResNetV2)):
      # Variables stay uninitialised (initialising them eagerly compiles one XLA
      # program per shape: ~50 s on a 2-core CPU); names and shapes are symbolic.
      with keras.StatelessScope(initialize_variables=False):
        model = build(weights=None, input_shape=(299, 299, 3))
      out[name] = {l.name: list(l.output.shape[1:]) for l in model.layers}
    print(json.dumps(out))
''')


def test_keras_layer_names_of_the_endpoints():
  """The --endpoints mapping against keras.applications built with weights=None."""
  env = {**os.environ, 'KERAS_BACKEND': 'jax', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', _KERAS_LAYERS], capture_output=True,
                        text=True, timeout=600, env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  keras_layers = json.loads(proc.stdout.strip().splitlines()[-1])
  named = {'inception_v3': r'mixed\d+$',
           'inception_resnet_v2': r'(mixed_\w+|block\d+_\d+_ac|conv_7b_ac)$'}
  for arch, mapping in KERAS_NAMES.items():
    s = summary(arch)
    layers = keras_layers[arch]
    for ours, theirs in mapping.items():
      assert tuple(layers[theirs]) == s.row(ours).shape, (arch, ours, theirs)
    # Every named Keras endpoint is mapped.
    assert {n for n in layers if re.match(named[arch], n)} == set(mapping.values()), arch
  text = summary('inception_v3').endpoints_text()
  assert re.search(r'Mixed_5b\s+35x35x256\s+255,904\s+mixed0', text)


# ------------------------------------------------------------------------ CLI


def test_cli_tables(capsys):
  assert main(['inception_v3']) == 0
  out = capsys.readouterr().out
  assert 'Mixed_7c' in out and '5,713,216,096 multiply-adds' in out
  assert main(['inception_v1', '--paper']) == 0
  out = capsys.readouterr().out
  assert 'GoogLeNet, arXiv 1409.4842 Table 1' in out and 'paper error [1]' in out
  assert main(['inception_resnet_v2', '--endpoints']) == 0
  assert 'block35_10_ac' in capsys.readouterr().out
  assert main(['inception_v3.keras', '--freeze=Mixed_6e', '--depth=1',
               '--option', 'num_classes=10']) == 0
  out = capsys.readouterr().out
  assert 'frozen' in out and 'Branch_3' in out and 'without scale' in out
  assert main(['--all']) == 0
  out = capsys.readouterr().out
  for arch in ARCHS:
    assert arch in out
  assert '80.434 tf_in1k' in out


def test_cli_errors_without_traceback(capsys):
  for argv, message in ((['inception_v9'], "unknown architecture 'inception_v9'"),
                        (['inception_v3', '--input_size=40'], 'at least 75x75'),
                        (['inception_v3', '--freeze=Mixed_9'], "unknown freeze 'Mixed_9'"),
                        (['inception_v3', '--option', 'bn_scal=false'], 'unknown option'),
                        (['inception_v3', '--diagram=/no/such/dir/x.png'], 'does not exist'),
                        (['inception_v3', '--diagram=x.jpg'], 'must end in .png'),
                        ([], 'name an architecture')):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and 'Traceback' not in err, argv


def test_cli_module_entry_point():
  proc = subprocess.run([sys.executable, '-m', 'inception_jax.summary', 'inception_v4'],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '12,253,974,624 multiply-adds' in proc.stdout
  assert 'Warning' not in proc.stderr  # runpy's double-import warning, for one


def test_pictures(tmp_path, capsys):
  png, svg = tmp_path / 'v3.png', tmp_path / 'all.svg'
  assert main(['inception_v3', f'--diagram={png}']) == 0
  assert 'Mixed_5b, Mixed_6a, Mixed_6b, Mixed_7a, Mixed_7b' in capsys.readouterr().out
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert main(['--all', f'--plot={svg}']) == 0
  assert 'inception_resnet_v2.tf_in1k' in svg.read_text()
  from inception_jax.summary import plots
  kinds = dict(plots.module_kinds(ij.get_arch('inception_v4')))
  assert kinds['Mixed_6b'] == [f'Mixed_6{c}' for c in 'bcdefgh']


def test_pictures_without_matplotlib(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib fails
  assert main(['inception_v3', f'--diagram={tmp_path / "x.png"}']) == 2
  assert 'pip install matplotlib' in capsys.readouterr().err
