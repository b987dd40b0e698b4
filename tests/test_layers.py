"""Padding, pooling and LRN numerics against hand computation and lax references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inception_jax import kernels
from inception_jax import layers
from inception_jax import specs


@pytest.mark.parametrize('size,k,s,expected', [
    (224, 7, 2, (2, 3)),  # GoogLeNet conv1: TF pads (2, 3), PyTorch (3, 3)
    (112, 3, 2, (0, 1)),
    (299, 3, 2, (1, 1)),
    (35, 3, 1, (1, 1)),
])
def test_tf_same_pads(size, k, s, expected):
  assert layers.window_pads(size, k, s, 'SAME', 'tf') == expected
  # JAX's own SAME rule agrees.
  assert tuple(jax.lax.padtype_to_pads((size,), (k,), (s,), 'SAME')[0]) == expected


def test_symmetric_and_ceil_mode_pads():
  assert layers.window_pads(224, 7, 2, 'SAME', 'symmetric') == (3, 3)
  # ceil_mode=True max pool 3x3/2 on 112: ceil((112-3)/2)+1 = 56 windows, last one
  # reaches one pixel past the end.
  assert layers.window_pads(112, 3, 2, 'SAME', 'symmetric', ceil_pool=True) == (0, 1)
  assert specs.window_out_size(112, 3, 2, 'SAME', 'symmetric', ceil_pool=True) == 56
  assert specs.window_out_size(111, 3, 2, 'SAME', 'symmetric', ceil_pool=True) == 55
  assert specs.window_out_size(111, 3, 2, 'SAME', 'tf') == 56


def _conv(spec, num, in_ch=2):
  return layers.ConvBN(spec, in_ch, num, rngs=nnx.Rngs(0))


def test_conv_tf_same_equals_lax_same():
  num = layers.Numerics(batch_norm=False)
  conv = _conv(specs.Conv('c', 3, 7, stride=2, bias=False, activation=False), num)
  x = jax.random.normal(jax.random.key(1), (1, 224, 224, 2))
  ref = jax.lax.conv_general_dilated(x, conv.conv.kernel[...], (2, 2), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv(x), ref, rtol=1e-5, atol=1e-5)
  sym = _conv(specs.Conv('c', 3, 7, stride=2, bias=False, activation=False),
              layers.Numerics(batch_norm=False, padding='symmetric'))
  ref_sym = jax.lax.conv_general_dilated(x, sym.conv.kernel[...], (2, 2), ((3, 3), (3, 3)),
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(sym(x), ref_sym, rtol=1e-5, atol=1e-5)
  assert not np.allclose(conv(x), sym(x))


def test_max_pool_ceil_mode_by_hand():
  pool = layers.Pool(specs.Pool('p', 'max', 3, 2), layers.Numerics(padding='symmetric'))
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  # ceil_mode: windows start at 0, 2 (and would start at 4: ceil((5-3)/2)+1 = 2).
  y = pool(x)
  assert y.shape == (1, 2, 2, 1)
  np.testing.assert_array_equal(y[0, :, :, 0], [[12, 14], [22, 24]])
  x6 = jnp.arange(36.0).reshape(1, 6, 6, 1)
  y6 = pool(x6)  # ceil((6-3)/2)+1 = 3 windows; the last covers rows 4..5 only
  assert y6.shape == (1, 3, 3, 1)
  assert float(y6[0, 2, 2, 0]) == 35.0


def test_batchnorm_without_scale_and_eps():
  num = layers.Numerics(bn_scale=False, bn_eps=1e-3)
  conv = _conv(specs.Conv('c', 4, 1), num)
  assert conv.bn.scale is None and conv.bn.epsilon == 1e-3
  conv.bn.mean[...] = jnp.full((4,), 0.5)
  conv.bn.var[...] = jnp.full((4,), 3.0)
  conv.bn.bias[...] = jnp.full((4,), 0.25)
  x = jax.random.normal(jax.random.key(2), (1, 3, 3, 2))
  z = np.asarray(x) @ np.asarray(conv.conv.kernel[0, 0])
  expected = np.maximum((z - 0.5) / np.sqrt(3.0 + 1e-3) + 0.25, 0)
  np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-6)


def test_lrn_by_hand():
  lrn = layers.LocalResponseNorm(specs.LRN('lrn', size=3, alpha=0.3, beta=0.5, k=2.0))
  x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  y = np.asarray(lrn(x))[0, 0, 0]
  sq = np.array([1, 4, 9, 16.0])
  windows = [sq[0:2].sum(), sq[0:3].sum(), sq[1:4].sum(), sq[2:4].sum()]
  expected = [v / (2.0 + 0.3 / 3 * w) ** 0.5 for v, w in zip([1, 2, 3, 4], windows)]
  np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_adaptive_avg_pool_by_hand():
  x = jnp.arange(14.0 * 14).reshape(1, 14, 14, 1)
  y = layers.adaptive_avg_pool(x, 4)
  # PyTorch bins on 14: [0,4), [3,7), [7,11), [10,14).
  xn = np.asarray(x)[0, :, :, 0]
  assert y.shape == (1, 4, 4, 1)
  np.testing.assert_allclose(y[0, 1, 2, 0], xn[3:7, 7:11].mean(), rtol=1e-6)
  np.testing.assert_allclose(y[0, 3, 0, 0], xn[10:14, 0:4].mean(), rtol=1e-6)


@pytest.mark.parametrize('k,s,pads', [
    (3, 2, ((0, 0), (0, 0))),  # Inception reductions, VALID
    (3, 1, ((1, 1), (1, 1))),  # branch_pool, SAME
    (3, 2, ((0, 1), (0, 1))),  # ceil mode / TF SAME on an even size
    (2, 2, ((1, 2), (0, 1))),
    (5, 3, ((0, 0), (0, 0))),  # aux head
])
def test_slice_pools_equal_reduce_window(k, s, pads):
  """Values, gradients and tangents of the CPU slice pools equal flax's reduce-window pools.

  Rounded inputs make ties (and ReLU-like zeros), where the max derivative must go
  to the first maximum of the window only, in reverse and in forward mode.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.maximum(rng.standard_normal((2, 11, 9, 3)), 0).round(1), jnp.float32)
  cases = [
      (lambda x: kernels.cpu_max_pool(x, k, s, pads),
       lambda x: nnx.max_pool(x, (k, k), (s, s), pads)),
      (lambda x: kernels.cpu_avg_pool(x, k, s, pads, False),
       lambda x: nnx.avg_pool(x, (k, k), (s, s), pads, count_include_pad=False)),
      (lambda x: kernels.cpu_avg_pool(x, k, s, pads, True),
       lambda x: nnx.avg_pool(x, (k, k), (s, s), pads, count_include_pad=True)),
  ]
  tx = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  for ours, ref in cases:
    want = ref(x)
    w = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    np.testing.assert_allclose(ours(x), want, rtol=1e-6, atol=1e-7)
    g_ours = jax.jit(jax.grad(lambda x: jnp.sum(ours(x) * w)))(x)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-6)
    tangent = lambda f: jax.jit(lambda x, t: jax.jvp(f, (x,), (t,))[1])(x, tx)
    np.testing.assert_allclose(tangent(ours), tangent(ref), rtol=1e-6, atol=1e-6)
  # bfloat16 in, bfloat16 out, and a gradient (flax's avg pool would return float32).
  xb = x.astype(jnp.bfloat16)
  for ours, _ in cases:
    assert ours(xb).dtype == jnp.bfloat16
    assert jax.grad(lambda x: jnp.sum(ours(x).astype(jnp.float32)))(xb).dtype == jnp.bfloat16
    assert jax.eval_shape(lambda x: jax.jvp(ours, (x,), (x,))[1], xb).dtype == jnp.bfloat16


@pytest.mark.parametrize('choice', ['xla', 'cpu'])
def test_max_pool_ties_go_to_the_first_maximum(choice):
  """Both 5s in one 3x3 window: only the first (row-major) gets the derivative."""
  t = jnp.zeros((1, 3, 3, 1)).at[0, 0, 1, 0].set(5.).at[0, 2, 2, 0].set(5.)
  pool = lambda t: kernels.max_pool(t, 3, 1, ((0, 0), (0, 0)), choice)
  g = jax.grad(lambda t: pool(t).sum())(t)
  assert g[0, 0, 1, 0] == 1 and float(g.sum()) == 1
  first = jnp.zeros_like(t).at[0, 0, 1, 0].set(1.)
  assert float(jax.jvp(pool, (t,), (first,))[1].sum()) == 1
  assert float(jax.jvp(pool, (t,), (1 - first,))[1].sum()) == 0


@pytest.mark.parametrize('kernel,stride,padding', [
    ((3, 3), (2, 2), ((0, 0), (0, 0))),  # stem / reduction, VALID
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((1, 7), (1, 1), ((0, 0), (3, 3))),  # factorised 7x7
    ((3, 3), (2, 2), ((0, 1), (0, 1))),  # TF SAME, stride 2, even size
    ((5, 5), (1, 1), ((2, 2), (2, 2))),
    ((1, 1), (2, 2), ((0, 0), (0, 0))),
])
def test_conv2d_gradients_equal_lax(kernel, stride, padding):
  """kernels.conv2d's hand-written gradients, and its tangents, equal JAX's for the lax conv."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 12, 10, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(kernel + (3, 4)), jnp.float32)

  def ref(x, w):
    return jax.lax.conv_general_dilated(x, w, stride, padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  y = ref(x, w)
  ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  np.testing.assert_array_equal(kernels.conv2d(x, w, stride, padding), y)
  want = jax.grad(lambda x, w: jnp.sum(ref(x, w) * ct), (0, 1))(x, w)
  got = jax.jit(jax.grad(lambda x, w: jnp.sum(kernels.conv2d(x, w, stride, padding) * ct),
                         (0, 1)))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  tangents = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
              jnp.asarray(rng.standard_normal(w.shape), jnp.float32))
  conv = lambda x, w: kernels.conv2d(x, w, stride, padding)
  _, t_want = jax.jvp(ref, (x, w), tangents)
  for t_got in (jax.jit(lambda *a: jax.jvp(conv, a[:2], a[2:])[1])(x, w, *tangents),
                jax.jvp(lambda x: conv(x, w), (x,), tangents[:1])[1]
                + jax.jvp(lambda w: conv(x, w), (w,), tangents[1:])[1]):
    np.testing.assert_allclose(t_got, t_want, rtol=1e-5, atol=1e-5)


def _tiny_net(choice):
  """conv 3x3/2 (TF SAME, even size) -> tanh -> max 3x3/1 -> avg 2x2/2 (partial windows)."""
  def net(x, w):
    if choice == 'cpu':
      h = kernels.conv2d(x, w, (2, 2), ((0, 1), (0, 1)))
    else:
      h = jax.lax.conv_general_dilated(x, w, (2, 2), ((0, 1), (0, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = kernels.max_pool(jnp.tanh(h), 3, 1, ((1, 1), (1, 1)), choice)
    h = kernels.avg_pool(h, 2, 2, ((0, 1), (0, 1)), False, choice)
    return jnp.sum(jnp.sin(h) * jnp.arange(1, h.size + 1).reshape(h.shape) / h.size)
  return net


def test_second_order_derivatives_of_the_cpu_kernels():
  """Hessians of a tiny conv + pool net: 'cpu' kernels = 'xla' = finite differences.

  jax.hessian (forward over reverse), jacfwd(jacfwd) and jacrev(jacrev), with
  respect to the input and the kernel together, in float64; the reference is the
  central difference of the gradient, and the same net on XLA's ops.
  """
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 6, 6, 2)))
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 2)) * 0.5)
    n = x.size + w.size

    def flat(net):
      return lambda v: net(v[:x.size].reshape(x.shape), v[x.size:].reshape(w.shape))

    v = jnp.concatenate([x.ravel(), w.ravel()])
    cpu, xla = flat(_tiny_net('cpu')), flat(_tiny_net('xla'))
    eps = 1e-5
    grad = jax.jit(jax.vmap(jax.grad(cpu)))
    fd = (grad(v + eps * jnp.eye(n)) - grad(v - eps * jnp.eye(n))) / (2 * eps)
    assert float(jnp.abs(fd).max()) > 0.1  # a second derivative that is not trivially 0
    want = jax.jit(jax.hessian(xla))(v)
    np.testing.assert_allclose(want, fd, atol=1e-6)
    for transform in (jax.hessian, lambda f: jax.jacfwd(jax.jacfwd(f)),
                      lambda f: jax.jacrev(jax.jacrev(f))):
      np.testing.assert_allclose(jax.jit(transform(cpu))(v), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(cpu)(v), jax.grad(xla)(v), rtol=1e-12, atol=1e-14)


_LAYER_CASES = [
    # (spec, Numerics options, input size)
    (specs.Conv('c', 5, 1), {}, 9),  # 1x1 stride 1: a matmul on 'cpu'
    (specs.Conv('c', 5, 1, stride=2), {}, 9),
    (specs.Conv('c', 5, 3, stride=2, padding='VALID'), {}, 9),
    (specs.Conv('c', 5, 3, stride=2), {}, 10),  # TF SAME, stride 2, even size
    (specs.Conv('c', 5, (1, 7)), {'padding': 'symmetric'}, 9),
    (specs.Conv('c', 5, 7, stride=2), {'padding': 'symmetric', 'batch_norm': False}, 11),
    (specs.SeparableConv('c', 5, 3, depth_multiplier=2), {}, 9),  # depthwise: nnx.Conv
    (specs.Pool('p', 'max', 3, 2), {'padding': 'symmetric'}, 10),  # ceil mode
    (specs.Pool('p', 'max', 3, 1), {}, 9),
    (specs.Pool('p', 'avg', 3, 1), {'count_include_pad': True}, 9),
    (specs.Pool('p', 'avg', 3, 2), {}, 10),
]


@pytest.mark.parametrize('spec,options,size', _LAYER_CASES,
                         ids=[f'{c[0].name}{i}' for i, c in enumerate(_LAYER_CASES)])
def test_kernel_choices_agree_on_each_layer(spec, options, size):
  """ConvBN and Pool on 'xla' and 'cpu' kernels: same outputs, gradients and tangents.

  Gradients with respect to the input and every parameter (BN in train mode).
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32)
  results, jaxprs = {}, {}
  for choice in ('xla', 'cpu'):
    num = layers.Numerics(kernels=choice, **options)
    layer = layers.build_layer(spec, 3, num, rngs=nnx.Rngs(0))
    if isinstance(layer, layers.ConvBN) and layer.bn is not None:
      layer.bn.use_running_average = False
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def apply(params, x, graphdef=graphdef, rest=rest):
      return nnx.merge(graphdef, params, rest, copy=True)(x)

    shape = jax.eval_shape(apply, params, x).shape
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)

    @jax.jit
    def all_of_it(params, x, apply=apply, ct=ct):
      grads = jax.grad(lambda p, x: jnp.sum(apply(p, x) * ct), (0, 1))(params, x)
      tangent = jax.jvp(apply, (params, x), (jax.tree.map(jnp.ones_like, params),
                                             jnp.sin(x)))[1]
      return apply(params, x), grads, tangent

    results[choice] = all_of_it(params, x)
    jaxprs[choice] = str(jax.make_jaxpr(apply)(params, x))
  for a, b in zip(jax.tree.leaves(results['cpu']), jax.tree.leaves(results['xla'])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, float(jnp.abs(b).max())))
  # The choice is real: XLA's ops only on 'xla'; the tuned ones on 'cpu'.
  tuned = ('name=conv2d', 'name=cpu_max_pool', 'name=cpu_avg_pool')
  assert not any(t in jaxprs['xla'] for t in tuned)
  if isinstance(spec, specs.Pool):
    assert 'reduce_window' in jaxprs['xla'] and 'reduce_window' not in jaxprs['cpu']
    assert f'name=cpu_{spec.kind}_pool' in jaxprs['cpu']
  elif not isinstance(spec, specs.SeparableConv):
    assert 'conv_general_dilated' in jaxprs['xla']
    assert ('dot_general' if spec.kernel == 1 and spec.stride == 1
            else 'name=conv2d') in jaxprs['cpu']


def test_auto_kernels_follow_the_default_backend(monkeypatch):
  """'auto' traces as 'cpu' on the CPU backend and as 'xla' on any other."""
  import _dist_worker as tiny  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, tiny.TINY_SIZE, tiny.TINY_SIZE, 3))

  def jaxpr(choice):
    model = nnx.eval_shape(lambda: tiny.tiny_model(kernels=choice))
    graphdef, state = nnx.split(model)
    return str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x))(state))

  assert jax.default_backend() == 'cpu'
  assert kernels.resolve('auto') == 'cpu'
  assert jaxpr('auto') == jaxpr('cpu') != jaxpr('xla')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert kernels.resolve('auto') == 'xla' and kernels.resolve('cpu') == 'cpu'
  assert jaxpr('auto') == jaxpr('xla')
  with pytest.raises(ValueError, match="kernels must be 'auto', 'xla' or 'cpu'"):
    tiny.tiny_model(kernels='gpu')


def test_scanned_and_unrolled_blocks_agree():
  """scan_blocks=True (default) and False: same logits, gradients and BN update.

  The tiny data-parallel test net has two stacked Inception-ResNet blocks.
  """
  import _dist_worker as tiny  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 35, 35, 3)), jnp.float32)
  outs = []
  for scan in (True, False):
    model = tiny.tiny_model(scan_blocks=scan)  # the same values for both (one seed)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, graphdef=graphdef):
      m = nnx.merge(graphdef, params, rest, copy=True)
      out = m(x)
      return jnp.sum(out.logits ** 2), nnx.state(m, nnx.BatchStat)

    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
    outs.append((value, stats, grads))

  def close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * max(np.abs(b).max(), 1.0)

  (v1, s1, g1), (v2, s2, g2) = outs
  close(v1, v2)
  jax.tree.map(close, s1, s2)
  jax.tree.map(close, g1, g2)
  # The gradient reaches the stacked blocks, both of them.
  k = g1['Repeat']['block8']['Branch_1']['Conv2d_0b_3x3']['conv']['kernel'][...]
  assert k.shape[0] == 2 and all(float(jnp.abs(k[i]).max()) > 0 for i in range(2))
