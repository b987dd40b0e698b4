"""Behaviour every registered network must have (parametrised over the registry).

Shapes use ``jax.eval_shape`` (no compile); numerics use small inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import inception_jax as ij

ALL = ij.list_models()


def _abstract(model, x_shape):
  return jax.eval_shape(model, jax.ShapeDtypeStruct(x_shape, jnp.float32))


def _snapshot(model, kind):
  return [np.array(v) for v in jax.tree.leaves(nnx.state(model, kind))]


def test_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match='inception_v3') as e:
    ij.create_model('inception_v5')
  for name in ALL:
    assert name in str(e.value)


def test_registry_names():
  assert 'inception_v3' in ALL
  assert ALL == sorted(ALL)


@pytest.mark.parametrize('name', ALL)
def test_default_size_logits_and_features(name):
  model = ij.create_model(name, num_classes=7)
  size = ij.get_arch(name).default_size
  out = _abstract(model, (2, size, size, 3))
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  feats = jax.eval_shape(model.features, jax.ShapeDtypeStruct((2, size, size, 3),
                                                               jnp.float32))
  assert list(feats) == list(model.layer_names)
  last = list(feats.values())[-1]
  assert last.shape[-1] == model.num_features
  pooled = _abstract(ij.create_model(name, include_top=False, pooling='max'),
                     (2, size, size, 3))
  assert pooled.shape == (2, model.num_features)
  fmap = _abstract(ij.create_model(name, include_top=False, pooling=None),
                   (2, size, size, 3))
  assert fmap.shape == last.shape


@pytest.mark.parametrize('name', ALL)
def test_min_input_size_is_exact(name):
  model = ij.create_model(name)
  m = model.min_input_size
  assert _abstract(model, (1, m, m, 3)).shape == (1, 1000)
  with pytest.raises(ValueError, match=f'at least {m}x{m}'):
    _abstract(model, (1, m - 1, m, 3))


@pytest.mark.parametrize('name', ALL)
def test_bad_inputs_and_options(name):
  model = ij.create_model(name)
  size = ij.get_arch(name).default_size
  with pytest.raises(ValueError, match='channels'):
    _abstract(model, (1, size, size, 1))
  with pytest.raises(ValueError, match='NCHW'):
    _abstract(model, (1, 3, size, size))
  with pytest.raises(TypeError, match='float'):
    jax.eval_shape(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.uint8))
  with pytest.raises(ValueError, match='unknown option.*valid options'):
    ij.create_model(name, drop_rate=0.1)
  with pytest.raises(ValueError, match='pooling'):
    ij.create_model(name, pooling='median')
  with pytest.raises(ValueError, match='include_top=True needs pooling'):
    ij.create_model(name, pooling=None)


@pytest.mark.parametrize('name', ALL)
def test_small_forward_train_and_eval(name):
  """Eval is deterministic and leaves BN alone; train updates BN and reaches every param."""
  spec = ij.get_arch(name)
  aux = bool(spec.aux_heads)
  model = ij.create_model(name, num_classes=5, aux_logits=aux, rngs=nnx.Rngs(1))
  size = model.min_input_size_aux if aux else model.min_input_size
  # The smallest valid input keeps the CPU cost low; aux heads need more.
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  stats = _snapshot(model, nnx.BatchStat)
  y1, y2 = model(x), model(x)
  assert isinstance(y1, jax.Array) and y1.shape == (2, 5)
  assert np.isfinite(np.asarray(y1)).all()
  np.testing.assert_array_equal(y1, y2)
  for a, b in zip(stats, _snapshot(model, nnx.BatchStat)):
    np.testing.assert_array_equal(a, b)

  model.train()

  def loss_fn(m):
    out = m(x)
    if aux:
      assert isinstance(out, ij.InceptionOutput)
      assert set(out.aux_logits) == {h.name for h in spec.aux_heads}
      return jnp.sum(out.logits ** 2) + sum(jnp.sum(a ** 2) for a in out.aux_logits.values())
    assert isinstance(out, jax.Array)
    return jnp.sum(out ** 2)

  grads = nnx.grad(loss_fn)(model)
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
  dead = [jax.tree_util.keystr(p) for p, g in flat
          if not np.any(np.asarray(g) != 0)]
  assert not dead, f'parameters without gradient: {dead[:5]}'
  if ij.create_model(name).options and dict(model.options)['batch_norm']:
    changed = [not np.array_equal(a, b)
               for a, b in zip(stats, _snapshot(model, nnx.BatchStat))]
    assert all(changed)
  model.eval()
  assert isinstance(model(x), jax.Array)
