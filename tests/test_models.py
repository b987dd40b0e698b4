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


def _abstract(model, x_shape, method='__call__', dtype=jnp.float32):
  """Output shapes of ``model.method`` without computing (works on abstract models)."""
  graphdef, state = nnx.split(model)
  fn = lambda st, x: getattr(nnx.merge(graphdef, st), method)(x)
  return jax.eval_shape(fn, state, jax.ShapeDtypeStruct(x_shape, dtype))


def _model(name, **kw):
  """An abstract model: shapes and dtypes only, no parameter initialisation."""
  return nnx.eval_shape(lambda: ij.create_model(name, **kw))


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
  model = _model(name, num_classes=7)
  size = ij.get_arch(name).default_size
  out = _abstract(model, (2, size, size, 3))
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  feats = _abstract(model, (2, size, size, 3), 'features')
  assert list(feats) == list(model.layer_names)
  last = list(feats.values())[-1]
  assert last.shape[-1] == model.num_features
  pooled = _abstract(_model(name, include_top=False, pooling='max'), (2, size, size, 3))
  assert pooled.shape == (2, model.num_features)
  fmap = _abstract(_model(name, include_top=False, pooling=None), (2, size, size, 3))
  assert fmap.shape == last.shape


@pytest.mark.parametrize('name', ALL)
def test_min_input_size_is_exact(name):
  model = _model(name)
  m = model.min_input_size
  assert _abstract(model, (1, m, m, 3)).shape == (1, 1000)
  with pytest.raises(ValueError, match=f'at least {m}x{m}'):
    _abstract(model, (1, m - 1, m, 3))


@pytest.mark.parametrize('name', ALL)
def test_bad_inputs_and_options(name):
  model = _model(name)
  size = ij.get_arch(name).default_size
  with pytest.raises(ValueError, match='channels'):
    _abstract(model, (1, size, size, 1))
  with pytest.raises(ValueError, match='NCHW'):
    _abstract(model, (1, 3, size, size))
  with pytest.raises(TypeError, match='float'):
    _abstract(model, (1, size, size, 3), dtype=jnp.uint8)
  with pytest.raises(ValueError, match='unknown option.*valid options'):
    ij.create_model(name, drop_rate=0.1)
  with pytest.raises(ValueError, match='pooling'):
    ij.create_model(name, pooling='median')
  with pytest.raises(ValueError, match='include_top=True needs pooling'):
    ij.create_model(name, pooling=None)


def _dead_params(grads):
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(grads, nnx.Param))[0]
  return [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]


@pytest.mark.parametrize('name', ALL)
def test_small_forward_train_and_eval(name):
  """Eval is deterministic and leaves BN alone; train updates BN and reaches every param."""
  # Aux heads off (GoogLeNet has them by default): they are tested separately below.
  model = ij.create_model(name, num_classes=5, aux_logits=False, rngs=nnx.Rngs(1))
  size = model.min_input_size  # the smallest valid input keeps the CPU cost low
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  stats = _snapshot(model, nnx.BatchStat)
  forward = nnx.jit(lambda m, x: m(x))
  y1, y2 = forward(model, x), forward(model, x)
  assert isinstance(y1, jax.Array) and y1.shape == (2, 5)
  assert np.isfinite(np.asarray(y1)).all()
  np.testing.assert_array_equal(y1, y2)
  for a, b in zip(stats, _snapshot(model, nnx.BatchStat)):
    np.testing.assert_array_equal(a, b)

  model.train()

  def loss(m):
    y = m(x)
    return jnp.sum(y ** 2), y

  # One program for the train-mode output and the gradients (compiling is the cost).
  grads, y3 = nnx.jit(nnx.grad(loss, has_aux=True))(model)
  assert isinstance(y3, jax.Array)  # no aux heads built: plain logits in train mode
  assert not np.allclose(y1, y3)  # batch statistics (and dropout) in train mode
  dead = _dead_params(grads)
  assert not dead, f'parameters without gradient: {dead[:5]}'
  if model.config.batch_norm:
    changed = [not np.array_equal(a, b)
               for a, b in zip(stats, _snapshot(model, nnx.BatchStat))]
    assert all(changed)
  model.eval()  # deterministic again, now with the updated running statistics
  y4 = forward(model, x)
  np.testing.assert_array_equal(y4, forward(model, x))


@pytest.mark.parametrize('name', ALL)
def test_forward_and_reverse_mode_go_through(name):
  """Forward over reverse mode (jax.hessian's) traces through every network, default kernels.

  A Hessian-vector product, ``jvp(grad(f))``, abstractly (``jax.eval_shape``: every
  derivative rule runs, nothing is computed), over a scaling of every parameter
  and a step of the input: the forward pass, its linearisation (jvp), the
  transposed backward pass, and forward mode through both, for every layer.
  jax.hessian itself (its vmap too) and the numbers are checked on the tiny
  network (next test) and per kernel in test_layers; jax.grad in the test above.
  """
  model = _model(name, num_classes=3)
  graphdef, state = nnx.split(model)
  m = model.min_input_size
  x = jax.ShapeDtypeStruct((1, m, m, 3), jnp.float32)

  def f(a, state, x):
    s = jax.tree.map(lambda p: p * (1 + a[0]) if p.dtype == jnp.float32 else p, state)
    return jnp.sum(jnp.tanh(nnx.merge(graphdef, s)(x * (1 + a[1]))))

  def hvp(s, x):
    return jax.jvp(lambda a: jax.grad(f)(a, s, x), (jnp.zeros(2),), (jnp.ones(2),))

  g, hv = jax.eval_shape(hvp, state, x)
  assert g.shape == hv.shape == (2,)


def test_autodiff_numbers_on_every_kernel_choice():
  """The tiny network: jax.jvp, jax.jacfwd and jax.hessian on kernels 'xla' and 'cpu'.

  ('auto' traces to the program of 'cpu' here: test_layers.) In eval mode, with
  respect to (a scaling of every parameter, a step of the input), so the hessian
  takes tangents of every kernel and of the input. The reference is 'xla': JAX's
  own derivatives of XLA's ops. (Finite differences of a ReLU network cross kinks;
  they check the kernels on a smooth function in test_layers.)
  """
  import _dist_worker as tiny  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, tiny.TINY_SIZE,
                                                           tiny.TINY_SIZE, 3)), jnp.float32)
  v, direction = jnp.sin(3 * x), jnp.array([0.3, -0.7])
  out = {}
  for choice in ('xla', 'cpu'):
    model = tiny.tiny_model(kernels=choice, aux_logits=False)
    graphdef, state = nnx.split(model)

    def f(a, state=state, graphdef=graphdef):
      s = jax.tree.map(lambda p: p * (1 + a[0]) if p.dtype == jnp.float32 else p, state)
      return jnp.sum(jnp.tanh(nnx.merge(graphdef, s)(x + a[1] * v)))

    @jax.jit
    def derivatives(a, f=f):
      _, tangent = jax.jvp(f, (a,), (direction,))
      return tangent, jax.jacfwd(f)(a), jax.hessian(f)(a)

    out[choice] = derivatives(jnp.zeros(2))
  tangent, jf, h = out['xla']
  np.testing.assert_allclose(tangent, jf @ direction, rtol=1e-5)
  assert float(jnp.abs(h).min()) > 0.1  # every second derivative is non-trivial
  np.testing.assert_allclose(h, h.T, rtol=1e-5)
  for a, b in zip(out['cpu'], out['xla']):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


AUX = [n for n in ALL if ij.get_arch(n).aux_heads]


@pytest.mark.parametrize('name', AUX)
def test_aux_logits_only_in_train_mode(name):
  spec = ij.get_arch(name)
  model = _model(name, num_classes=5, aux_logits=True)
  size = spec.default_size
  assert _abstract(model, (2, size, size, 3)).shape == (2, 5)  # eval: logits only
  model.train()
  out = _abstract(model, (2, size, size, 3))
  assert isinstance(out, ij.InceptionOutput)
  assert out.logits.shape == (2, 5)
  assert {k: v.shape for k, v in out.aux_logits.items()} == {
      h.name: (2, 5) for h in spec.aux_heads}
  assert size >= model.min_input_size_aux
  if model.min_input_size_aux > model.min_input_size:  # adaptive-pool heads fit any size
    with pytest.raises(ValueError, match='aux_logits=True in train mode'):
      m = model.min_input_size_aux - 1
      _abstract(model, (1, m, m, 3))


@pytest.mark.parametrize('name', AUX)
def test_aux_head_gradients(name):
  """Every aux-head parameter gets a gradient (heads run on endpoint-shaped input)."""
  spec = ij.get_arch(name)
  model = ij.create_model(name, num_classes=5, aux_logits=True)
  model.train()
  sizes = spec.endpoint_sizes(spec.default_size, model.config.padding)
  channels = spec.channels()
  for head in spec.aux_heads:
    h, w = sizes[head.endpoint]
    x = jax.random.normal(jax.random.key(3), (2, h, w, channels[head.endpoint]))
    module = getattr(model, head.name)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(module)
    assert not _dead_params(grads), head.name
