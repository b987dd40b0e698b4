"""Tests of inception_jax.train and inception_jax.checkpoint on a tiny Inception table.

The data-parallel checks compare the 8-fake-device mesh (conftest) with a
1-device mesh and with a two-process ``jax.distributed`` run on 127.0.0.1:
expected values are those of the single-device computation. Compiled steps are
cached per (config, mesh size) so the file compiles each configuration once.
"""

import dataclasses
import functools
import json
import math
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import _dist_worker as tiny
from inception_jax import checkpoint
from inception_jax import create_model
from inception_jax import train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The tiny table is not registered, so its aux head's weight is given here.
ADAM = train.TrainConfig(optimizer='adam', learning_rate=1e-2, schedule='constant',
                         label_smoothing=0.1, aux_loss_weight=0.4)


def host(tree):
  """Host copy of a state (keys as raw data) that survives donation."""
  def get(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.array(x)
  return jax.tree.map(get, tree)


def flat(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@functools.cache
def setup(cfg, num_devices):
  """(graphdef, step, eval_step, mesh) for the tiny model; compiled once per key."""
  mesh = train.make_mesh(num_devices)
  graphdef, _ = train.create_train_state(tiny.tiny_model(), cfg, mesh)
  return graphdef, train.make_train_step(graphdef, cfg, mesh), train.make_eval_step(
      graphdef, mesh), mesh


def fresh_state(cfg, num_devices, seed=0):
  _, _, _, mesh = setup(cfg, num_devices)
  return train.create_train_state(tiny.tiny_model(seed), cfg, mesh)[1]


def dataset(n=40):
  return tiny.global_batch(n, seed=1)


# ------------------------------------------------------------------ data parallel


def test_eight_devices_equal_one_device():
  cfg = tiny.dist_config()
  images, labels = tiny.global_batch()
  results = {}
  for n in (1, 8):
    _, step, _, _ = setup(cfg, n)
    state = fresh_state(cfg, n)
    before = host(state)
    state, metrics = step(state, images, labels)
    state, metrics = step(state, images, labels)
    results[n] = host(state), jax.device_get(metrics)
  (s1, m1), (s8, m8) = results[1], results[8]
  for k in ('loss', 'ce_loss', 'aux_loss', 'accuracy', 'grad_norm', 'lr'):
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, err_msg=k)
  assert m1['aux_loss'] > 0  # the aux head took part in the loss
  for part in ('params', 'batch_stats', 'opt_state'):
    a, b = flat(getattr(s1, part)), flat(getattr(s8, part))
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=f'{part}{k}')
  np.testing.assert_array_equal(flat(s8.rng_state)["['dropout']['rngs']['count'].value"], 2)
  # BN running statistics moved away from their initial values (0 mean, 1 var).
  bs0, bs1 = flat(before.batch_stats), flat(s1.batch_stats)
  assert all(not np.allclose(bs0[k], bs1[k]) for k in bs0)
  assert int(s8.step) == 2


def test_loss_is_ce_plus_weighted_aux():
  _, step, _, _ = setup(ADAM, 8)
  images, labels = tiny.global_batch()
  _, m = step(fresh_state(ADAM, 8), images, labels)
  np.testing.assert_allclose(m['loss'], m['ce_loss'] + 0.4 * m['aux_loss'], rtol=1e-6)
  # Label-smoothed CE of near-uniform logits over 5 classes is close to log(5).
  assert abs(float(m['ce_loss']) - math.log(5)) < 0.5


def test_aux_weights_come_from_the_table(monkeypatch):
  # GoogLeNet paper Section 5: each aux loss "with a discount weight (0.3)"; TF-slim's
  # train_image_classifier.py: the AuxLogits loss with weights=0.4.
  want = {'inception_v1': {'aux1': 0.3, 'aux2': 0.3},
          'inception_v1_bn': {'aux1': 0.3, 'aux2': 0.3},
          'inception_v3': {'AuxLogits': 0.4}, 'inception_v4': {'AuxLogits': 0.4},
          'inception_resnet_v2': {'AuxLogits': 0.4}}
  from inception_jax import get_arch
  for arch, weights in want.items():
    assert {h.name: h.loss_weight for h in get_arch(arch).aux_heads} == weights, arch
  model = nnx.eval_shape(lambda: create_model('inception_v1', num_classes=5))
  assert train.aux_loss_weights(model) == want['inception_v1']
  assert train.aux_loss_weights(model, 1.0) == {'aux1': 1.0, 'aux2': 1.0}
  no_aux = nnx.eval_shape(lambda: create_model('inception_v1', num_classes=5,
                                               aux_logits=False))
  assert train.aux_loss_weights(no_aux) == {}
  with pytest.raises(ValueError, match="not a registered architecture.*aux_loss_weight"):
    train.aux_loss_weights(tiny.tiny_model())
  # The train step reads the table: register the tiny table (for this test only)
  # with a head weight of 0.25.
  from inception_jax import registry
  from inception_jax.specs import AuxHead
  spec = tiny.tiny_spec()
  spec = dataclasses.replace(spec, aux_heads=(
      dataclasses.replace(spec.aux_heads[0], loss_weight=0.25),))
  assert isinstance(spec.aux_heads[0], AuxHead)
  monkeypatch.setitem(registry._ARCHS, spec.name, spec)  # pylint: disable=protected-access
  cfg = dataclasses.replace(ADAM, aux_loss_weight=None)
  mesh = train.make_mesh(1)
  graphdef, state = train.create_train_state(tiny.tiny_model(), cfg, mesh)
  _, m = train.make_train_step(graphdef, cfg, mesh)(state, *tiny.global_batch())
  assert float(m['aux_loss']) > 0
  np.testing.assert_allclose(m['loss'], m['ce_loss'] + 0.25 * m['aux_loss'], rtol=1e-6)


@pytest.fixture(scope='module')
def run20(tmp_path_factory):
  """20 Adam steps over a 40-image dataset (batch 8), checkpointed at step 10."""
  _, step, eval_step, mesh = setup(ADAM, 8)
  images, labels = dataset()
  directory = tmp_path_factory.mktemp('ckpt')
  manager = checkpoint.CheckpointManager(directory, keep=2)
  state = fresh_state(ADAM, 8)

  def evaluate(state):
    out = eval_step(state, images[:40], labels[:40], np.ones(40, np.float32))
    return float(out['loss_sum'] / out['count']), float(out['top1_correct'] / out['count'])

  before = evaluate(state)
  losses = []
  for i in range(20):
    batch = slice(8 * (i % 5), 8 * (i % 5) + 8)
    state, metrics = step(state, images[batch], labels[batch])
    assert bool(metrics['finite'])
    losses.append(float(metrics['loss']))
    if i + 1 == 10:
      manager.save(10, state, {'arch': 'tiny', 'data_position': 10, 'class_names': list('abcde')},
                   {'val_top1': 0.5})
  return dict(losses=losses, before=before, after=evaluate(state), manager=manager,
              state=host(state), directory=directory)


def test_loss_goes_down(run20):
  losses = run20['losses']
  assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
  (loss0, top1_0), (loss1, top1_1) = run20['before'], run20['after']  # eval mode
  assert loss1 < 0.5 * loss0, (loss0, loss1)
  assert top1_1 > top1_0 and top1_1 >= 0.8, (top1_0, top1_1)


def test_resume_reproduces_losses(run20):
  _, step, _, _ = setup(ADAM, 8)
  images, labels = dataset()
  target = fresh_state(ADAM, 8, seed=123)  # a different init: everything must come from disk
  state, meta = run20['manager'].restore(None, target)
  assert meta['data_position'] == 10 and meta['class_names'] == list('abcde')
  assert int(state.step) == 10
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_equivalent_to(jax.tree.leaves(target.params)[0].sharding, leaf.ndim)
  losses = []
  for i in range(meta['data_position'], 20):
    batch = slice(8 * (i % 5), 8 * (i % 5) + 8)
    state, metrics = step(state, images[batch], labels[batch])
    losses.append(float(metrics['loss']))
  assert losses == run20['losses'][10:]  # bit-identical on CPU
  a, b = flat(host(state)), flat(run20['state'])
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_nan_loss_reports_not_finite_and_keeps_state():
  _, step, _, _ = setup(ADAM, 8)
  images, labels = tiny.global_batch()
  state = fresh_state(ADAM, 8)
  state, _ = step(state, images, labels)
  before = host(state)
  bad = images.copy()
  bad[3, 0, 0, 0] = np.nan
  state, metrics = step(state, bad, labels)
  assert not bool(metrics['finite'])
  assert not np.isfinite(float(metrics['loss']))
  after = host(state)
  for part in ('params', 'batch_stats', 'opt_state', 'step'):
    a, b = flat(getattr(before, part)), flat(getattr(after, part))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f'{part}{k}')
  state, metrics = step(state, images, labels)  # training goes on from the good state
  assert bool(metrics['finite']) and int(state.step) == 2


def test_eval_step_masks_padding():
  _, _, eval_step, _ = setup(ADAM, 8)
  images, labels = tiny.global_batch()
  state = fresh_state(ADAM, 8)
  full = jax.device_get(eval_step(state, images, labels, np.ones(8, np.float32)))
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  part = jax.device_get(eval_step(state, images, labels, mask))
  logits = np.asarray(full['logits'], np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1,
                                keepdims=True)) - logits.max(1, keepdims=True)
  ce = -logp[np.arange(8), labels]
  np.testing.assert_allclose(full['loss_sum'], ce.sum(), rtol=1e-5)
  np.testing.assert_allclose(part['loss_sum'], ce[:5].sum(), rtol=1e-5)
  assert part['count'] == 5
  top1 = logits.argmax(1) == labels
  assert part['top1_correct'] == top1[:5].sum()
  rank = (logits > logits[np.arange(8), labels][:, None]).sum(1)
  assert part['top5_correct'] == (rank[:5] < 5).sum() == 5  # 5 classes: always in top-5


# -------------------------------------------------------------------- checkpoints


def test_checkpoint_keeps_latest_and_best(tmp_path):
  cfg = ADAM
  setup(cfg, 8)
  state = fresh_state(cfg, 8)
  manager = checkpoint.CheckpointManager(tmp_path, keep=2, best_metric='val_top1')
  assert manager.latest_step() is None and manager.best_step() is None
  for step, top1 in [(1, 0.3), (2, 0.9), (3, 0.4), (4, 0.5), (5, None)]:
    metrics = None if top1 is None else {'val_top1': top1, 'val_loss': 1.0}
    manager.save(step, state, {'step': step}, metrics)
  assert manager.all_steps() == [2, 4, 5]  # best (2) + latest two (4, 5)
  assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [2, 4, 5]
  assert manager.latest_step() == 5 and manager.best_step() == 2
  assert manager.metadata(4) == {'step': 4}
  # A new manager on the same directory (a resumed process) sees the same.
  again = checkpoint.CheckpointManager(tmp_path, keep=2)
  assert again.latest_step() == 5 and again.best_step() == 2
  with pytest.raises(FileNotFoundError, match='available'):
    again.restore(3, state)
  _, no_aux = train.create_train_state(tiny.tiny_model(aux_logits=False), cfg,
                                       train.make_mesh(8))
  with pytest.raises(ValueError, match=r'does not fit the target.*\n  unexpected '
                                       r"\(\d+\): \[[^\]]*AuxLogits"):
    again.restore(5, no_aux)


@pytest.mark.parametrize('mode,values', [
    ('max', [0.5, 0.8, 0.6, 0.8, 0.8]),     # val_top1: 0.8 first at step 2
    ('min', [1.0, 0.4, 0.9, 0.4, 0.4]),     # val_loss: 0.4 first at step 2
])
def test_checkpoint_ties_keep_the_first_best(tmp_path, mode, values):
  """A tie is no improvement (Keras' EarlyStopping with min_delta=0, and finetune's
  best.safetensors): the first step with the best value is the kept best, however
  many later checkpoints equal it."""
  cfg = ADAM
  setup(cfg, 8)
  state = fresh_state(cfg, 8)
  metric = 'val_top1' if mode == 'max' else 'val_loss'
  manager = checkpoint.CheckpointManager(tmp_path, keep=1, best_metric=metric,
                                         best_mode=mode)
  for step, v in enumerate(values, 1):
    manager.save(step, state, {'step': step}, {metric: v})
    assert manager.best_step() == (1 if step == 1 else 2)
  assert manager.all_steps() == [2, 5]  # the best (the first 0.8) + the latest
  again = checkpoint.CheckpointManager(tmp_path, keep=1, best_metric=metric,
                                       best_mode=mode)
  assert again.best_step() == 2


# ----------------------------------------------------------------- freezing, BN


def _changed(a, b):
  return {k: not np.array_equal(a[k], b[k]) for k in a}


def _top(key):
  return key.split("'")[1]


@pytest.mark.parametrize('cfg, frozen_tops, bn_frozen', [
    (train.TrainConfig(learning_rate=0.01, freeze='backbone', aux_loss_weight=0.4),
     {'Conv2d_1a_3x3', 'Mixed_5b', 'Mixed_6a', 'Repeat'}, False),
    (train.TrainConfig(learning_rate=0.01, backbone_lr_mult=0.0, freeze_bn=True,
                       weight_decay=0.1, aux_loss_weight=0.4),
     {'Conv2d_1a_3x3', 'Mixed_5b', 'Mixed_6a', 'Repeat'}, True),
    (train.TrainConfig(optimizer='sgd', learning_rate=0.1, freeze='Mixed_5b',
                       aux_loss_weight=0.4),
     {'Conv2d_1a_3x3', 'Mixed_5b'}, False),
], ids=['backbone', 'lr_mult0_freeze_bn', 'endpoint'])
def test_freezing(cfg, frozen_tops, bn_frozen):
  _, step, _, _ = setup(cfg, 1)
  state = fresh_state(cfg, 1)
  before = host(state)
  images, labels = tiny.global_batch()
  for _ in range(2):
    state, metrics = step(state, images, labels)
    assert bool(metrics['finite'])
  after = host(state)
  changed = _changed(flat(before.params), flat(after.params))
  for k, c in changed.items():
    assert c == (_top(k) not in frozen_tops), k
  bs_changed = _changed(flat(before.batch_stats), flat(after.batch_stats))
  assert all(c != bn_frozen for c in bs_changed.values()), bs_changed


def test_param_labels_and_decay_mask():
  model = tiny.tiny_model()
  info = train.ModelInfo.of(model)
  assert info.heads == ('Logits', 'AuxLogits')
  params = nnx.state(model, nnx.Param)
  labels = flat(train.param_labels(params, train.TrainConfig(backbone_lr_mult=0.1), info))
  assert {v for k, v in labels.items() if _top(k) in ('Logits', 'AuxLogits')} == {'head'}
  assert {v for k, v in labels.items() if _top(k) == 'Mixed_6a'} == {'backbone'}
  mask = flat(train._decay_mask(params))
  assert mask["['Logits']['kernel'].value"] and not mask["['Logits']['bias'].value"]
  bn = [v for k, v in mask.items() if "['bn']" in k]
  assert bn and not any(bn)


# ------------------------------------------------------------------- optimizers


# Gradients for the optimizer checks; the 1e-4 entries make the place of epsilon
# matter (sqrt(v + 1e-7) vs sqrt(v) + 1e-7 differ 10x at v = 1e-9).
W0 = [0.5, -2.0, 3.0]
GRADS = ([0.1, -0.2, 1e-4], [1.0, 2.0, -3.0], [1e-4, 0.5, 0.5])
VECTOR = train.ModelInfo(arch='x', layer_names=(), heads=('w',))


def _optimizer_path(cfg):
  tx = train.build_optimizer(cfg, VECTOR)
  params = {'w': jnp.array(W0, jnp.float32)}
  opt, out = tx.init(params), []
  for g in GRADS:
    updates, opt = tx.update({'w': jnp.array(g, jnp.float32)}, opt, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(params['w']))
  return out


def test_rmsprop_tf_matches_tf_update_rule():
  """TF RMSPropOptimizer, written out: ms0 = 1; eps inside the sqrt; lr before momentum."""
  cfg = train.TrainConfig(optimizer='rmsprop_tf', learning_rate=0.045, schedule='constant')
  assert (cfg.effective_momentum, cfg.effective_rmsprop_eps) == (0.9, 1.0)
  ms, mom, w = np.ones(3), np.zeros(3), np.array(W0)
  for g, got in zip(GRADS, _optimizer_path(cfg)):
    g = np.array(g)
    ms = 0.9 * ms + 0.1 * g * g
    mom = 0.9 * mom + 0.045 * g / np.sqrt(ms + 1.0)
    w = w - mom
    np.testing.assert_allclose(got, w, rtol=1e-6)


@pytest.mark.parametrize('momentum', [None, 0.5])
def test_rmsprop_matches_keras_update_rule(momentum):
  """Keras 3 RMSprop, written out: v0 = 0, rho 0.9, eps 1e-7 inside the sqrt,
  no momentum by default (keras/src/optimizers/rmsprop.py update_step)."""
  cfg = train.TrainConfig(optimizer='rmsprop', learning_rate=0.01, schedule='constant',
                          momentum=momentum)
  assert cfg.effective_rmsprop_eps == 1e-7 and cfg.effective_momentum == (momentum or 0.0)
  v, mom, w = np.zeros(3), np.zeros(3), np.array(W0)
  for g, got in zip(GRADS, _optimizer_path(cfg)):
    g = np.array(g)
    v = 0.9 * v + 0.1 * g * g
    increment = 0.01 * g / np.sqrt(v + 1e-7)
    if momentum:
      mom = momentum * mom + increment
      w = w - mom
    else:
      w = w - increment
    np.testing.assert_allclose(got, w, rtol=1e-5)


KERAS_RMSPROP = """
import json, sys
import numpy as np
import keras
out = {}
for momentum in (0.0, 0.5):
  opt = keras.optimizers.RMSprop(learning_rate=0.01, momentum=momentum)
  v = keras.Variable(np.array(%r, np.float32))
  opt.build([v])
  path = []
  for g in %r:
    opt.apply([np.array(g, np.float32)], [v])
    path.append(np.asarray(v).tolist())
  out[str(momentum)] = path
print(json.dumps(out))
""" % (W0, GRADS)


def test_rmsprop_matches_keras_itself():
  """keras.optimizers.RMSprop run side by side (a subprocess: Keras on JAX)."""
  env = dict(os.environ, KERAS_BACKEND='jax')
  r = subprocess.run([sys.executable, '-c', KERAS_RMSPROP], env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  keras_paths = json.loads(r.stdout.strip().splitlines()[-1])
  for momentum in (0.0, 0.5):
    cfg = train.TrainConfig(optimizer='rmsprop', learning_rate=0.01, schedule='constant',
                            momentum=momentum)
    np.testing.assert_allclose(_optimizer_path(cfg), keras_paths[str(momentum)], rtol=1e-5)
  # The papers' TF RMSProp is another optimizer: far from Keras' on these gradients.
  tf_path = _optimizer_path(train.TrainConfig(optimizer='rmsprop_tf', learning_rate=0.01,
                                              schedule='constant'))
  assert not np.allclose(tf_path, keras_paths['0.0'], rtol=1e-2)


# ------------------------------------------------------------- your own optimizer


def _train_mode_ce(graphdef, state, images, labels):
  """Per-example CE of the network in train mode, written without the train step."""
  def ce(params):
    m = nnx.merge(graphdef, params, state.batch_stats, state.rng_state, copy=True)
    m.train()
    return optax.softmax_cross_entropy_with_integer_labels(m(images), labels)
  return ce


def test_user_optax_chain_is_the_update():
  """A user's optax chain: the step's update equals clip + SGD computed by hand."""
  mesh = train.make_mesh(1)
  model = tiny.tiny_model(aux_logits=False, dropout_rate=0.0)
  clip, lr = 0.05, 0.1
  tx = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))
  graphdef, state = train.create_train_state(model, tx, mesh)
  assert state.tx is tx
  images, labels = tiny.global_batch()
  ce = _train_mode_ce(graphdef, state, images, labels)
  grads = host(jax.grad(lambda p: jnp.mean(ce(p)))(state.params))
  before = host(state.params)
  new, m = train.make_train_step(graphdef, mesh=mesh)(state, images, labels)
  norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                       for g in jax.tree.leaves(grads)))
  assert norm > clip  # the clip is active
  np.testing.assert_allclose(m['grad_norm'], norm, rtol=1e-5)
  assert 'lr' not in m  # a plain optax.sgd does not say its rate
  g, p0, p1 = flat(grads), flat(before), flat(host(new.params))
  for k in p0:
    np.testing.assert_allclose(p1[k], p0[k] - lr * (clip / norm) * g[k], rtol=1e-4,
                               atol=1e-7, err_msg=k)
  with pytest.raises(ValueError, match=r"optimizer fields \(learning_rate=0.5\)"):
    train.create_train_state(model, tx, mesh, cfg=train.TrainConfig(learning_rate=0.5))
  with pytest.raises(TypeError, match='TrainConfig or an optax GradientTransformation'):
    train.create_train_state(model, 'sgd', mesh)


def test_user_transform_with_freeze_and_injected_rate():
  mesh = train.make_mesh(1)
  cfg = train.TrainConfig(freeze='Mixed_5b', label_smoothing=0.1, aux_loss_weight=0.4)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
  graphdef, state = train.create_train_state(tiny.tiny_model(), tx, mesh, cfg=cfg)
  assert state.tx is not tx  # wrapped: frozen parameters get no update
  before = host(state.params)
  step = train.make_train_step(graphdef, cfg, mesh)
  state, m = step(state, *tiny.global_batch())
  np.testing.assert_allclose(m['lr'], 0.05)  # read from the injected hyper-parameter
  changed = _changed(flat(before), flat(host(state.params)))
  for k, c in changed.items():
    assert c == (_top(k) not in ('Conv2d_1a_3x3', 'Mixed_5b')), k


def test_plateau_factor_changes_the_rate_without_compiling():
  cfg = train.TrainConfig(optimizer='sgd', momentum=0.0, learning_rate=0.1,
                          schedule='plateau', aux_loss_weight=0.4)
  mesh = train.make_mesh(1)
  graphdef, state = train.create_train_state(tiny.tiny_model(), cfg, mesh)
  assert train.lr_factor(state) == 1.0
  step = train.make_train_step(graphdef, cfg, mesh)
  images, labels = tiny.global_batch()
  start = host(state)
  s1, m1 = step(state, images, labels)
  size = step.jitted._cache_size()  # pylint: disable=protected-access
  again = train.create_train_state(tiny.tiny_model(), cfg, mesh)[1]
  again = train.set_lr_factor(again, 0.1)
  assert train.lr_factor(again) == pytest.approx(0.1)
  s2, m2 = step(again, images, labels)
  assert step.jitted._cache_size() == size  # pylint: disable=protected-access
  np.testing.assert_allclose([m1['lr'], m2['lr']], [0.1, 0.01], rtol=1e-6)
  # Plain SGD: the same gradient, a tenth of the step (to float32 rounding of the
  # parameters, ~1e-7 at magnitude 1).
  p0, p1, p2 = flat(start.params), flat(host(s1.params)), flat(host(s2.params))
  for k in p0:
    np.testing.assert_allclose(p2[k] - p0[k], 0.1 * (p1[k] - p0[k]), rtol=1e-3,
                               atol=2e-7, err_msg=k)
  assert max(np.abs(p1[k] - p0[k]).max() for k in p0) > 1e-3
  with pytest.raises(ValueError, match="schedule='plateau'"):
    train.set_lr_factor(fresh_state(ADAM, 8), 0.5)


def test_balanced_class_weights_and_weighted_loss():
  # n / (K * count_c): 12 / (3 * [2, 6, 4]) = [2, 2/3, 1]
  np.testing.assert_allclose(train.balanced_class_weights([2, 6, 4]), [2.0, 2 / 3, 1.0])
  with pytest.raises(ValueError, match='positive count'):
    train.balanced_class_weights([3, 0, 1])
  weights = (2.0, 0.5, 1.0, 0.0, 3.0)
  cfg = train.TrainConfig(class_weights=weights)
  mesh = train.make_mesh(1)
  graphdef, state = train.create_train_state(
      tiny.tiny_model(aux_logits=False, dropout_rate=0.0), cfg, mesh)
  images, labels = tiny.global_batch()
  per_example = np.asarray(_train_mode_ce(graphdef, state, images, labels)(state.params))
  _, m = train.make_train_step(graphdef, cfg, mesh)(state, images, labels)
  # Keras class_weight: sum of the weighted losses over the batch size (8).
  want = np.sum(np.array(weights)[labels] * per_example) / len(labels)
  np.testing.assert_allclose(m['loss'], want, rtol=1e-5)
  assert not np.isclose(want, per_example.mean(), rtol=1e-2)
  with pytest.raises(ValueError, match='3 class weights for a model with 5 classes'):
    train.create_train_state(tiny.tiny_model(), train.TrainConfig(class_weights=(1, 1, 1)),
                             mesh)


def test_schedules():
  exp = train.build_schedule(train.TrainConfig(schedule='exponential', learning_rate=0.045,
                                               decay_rate=0.94, decay_steps=100))
  for s, want in [(0, 0.045), (99, 0.045), (100, 0.045 * 0.94), (250, 0.045 * 0.94 ** 2)]:
    np.testing.assert_allclose(exp(s), want, rtol=1e-6)
  cos = train.build_schedule(train.TrainConfig(schedule='cosine', learning_rate=1.0,
                                               warmup_steps=10, total_steps=110))
  for s, want in [(0, 0.0), (5, 0.5), (10, 1.0), (60, 0.5), (110, 0.0)]:
    np.testing.assert_allclose(cos(s), want, atol=1e-6)
  const = train.build_schedule(train.TrainConfig(schedule='constant', learning_rate=0.1,
                                                 warmup_steps=4))
  np.testing.assert_allclose([const(s) for s in (0, 2, 4, 50)], [0, 0.05, 0.1, 0.1], atol=1e-7)


def test_bfloat16_compute_keeps_float32_state():
  cfg = train.TrainConfig(learning_rate=1e-3, dtype='bfloat16', aux_loss_weight=0.4)
  mesh = train.make_mesh(1)
  model = tiny.tiny_model()
  graphdef, state = train.create_train_state(model, cfg, mesh)
  assert model.Mixed_5b.Branch_0.Conv2d_0a_1x1.conv.dtype == jnp.float32  # caller's untouched
  step = train.make_train_step(graphdef, cfg, mesh)
  images, labels = tiny.global_batch()
  state, m = step(state, images, labels)
  assert bool(m['finite']) and m['loss'].dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))} == {
      np.dtype(np.float32)}
  assert train.model_from_state(graphdef, state).Logits.dtype == jnp.bfloat16


# ----------------------------------------------------------------------- errors


def test_errors_before_compile():
  cfg = tiny.dist_config()
  _, step, eval_step, _ = setup(cfg, 8)
  state = fresh_state(cfg, 8)
  images, labels = tiny.global_batch(12)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    step(state, images, labels)
  with pytest.raises(ValueError, match='not divisible'):
    eval_step(state, images, labels, np.ones(12, np.float32))
  mesh = train.make_mesh(8)
  model = tiny.tiny_model()
  with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
    train.create_train_state(model, train.TrainConfig(optimizer='adagrad'), mesh)
  with pytest.raises(ValueError, match='unknown schedule'):
    train.make_train_step(None, train.TrainConfig(schedule='linear'), mesh)
  with pytest.raises(ValueError, match="unknown freeze 'Mixed_9z'.*Mixed_5b"):
    train.create_train_state(model, train.TrainConfig(freeze='Mixed_9z'), mesh)
  with pytest.raises(ValueError, match='multiple of 8'):
    train.shard_batch(mesh, images, labels)


# ------------------------------------------------------------------ multi-host


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_equals_one_process(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([ROOT, HERE]))
  port = _free_port()
  outs = [tmp_path / f'p{i}.npz' for i in range(2)]
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, '_dist_worker.py'),
                             str(port), '2', str(i), str(outs[i])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=240)[0].decode()[-3000:] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log
  cfg = tiny.dist_config()
  _, step, _, _ = setup(cfg, 1)
  images, labels = tiny.global_batch()
  state, metrics = step(fresh_state(cfg, 1), images, labels)
  want = {**flat(host(state.params)),
          **{f'bs{k}': v for k, v in flat(host(state.batch_stats)).items()}}
  for out in outs:
    got = np.load(out)
    assert int(got['devices']) == 2 and int(got['processes']) == 2
    np.testing.assert_allclose(got['loss'], metrics['loss'], rtol=1e-5)
    for k, v in want.items():
      np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
