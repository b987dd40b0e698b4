"""The project's BatchNorm against flax's nnx.BatchNorm, in train and eval mode.

``layers.BatchNorm`` replaces ``nnx.BatchNorm`` only to keep tracing linear in
depth; its numbers must be the same: batch moments over N, H, W with the biased
variance, running statistics ``m * old + (1 - m) * batch``, and ``x * a + b``
with ``a = scale / sqrt(var + eps)`` (up to float32 rounding of the fold).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inception_jax import layers


def _pair(use_scale, momentum=0.9, eps=1e-3, features=6, seed=0):
  ours = layers.BatchNorm(features, momentum=momentum, epsilon=eps, use_scale=use_scale,
                          dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  ref = nnx.BatchNorm(features, momentum=momentum, epsilon=eps, use_scale=use_scale,
                      use_bias=True, rngs=nnx.Rngs(0))
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  values = {'bias': jax.random.normal(k1, (features,)),
            'mean': jax.random.normal(k2, (features,)),
            'var': jax.random.uniform(k3, (features,), minval=0.5, maxval=2.0)}
  if use_scale:
    values['scale'] = jax.random.uniform(k4, (features,), minval=0.5, maxval=1.5)
  for name, v in values.items():
    getattr(ours, name).set_value(v)
    getattr(ref, name).set_value(v)
  return ours, ref


@pytest.mark.parametrize('use_scale', [True, False])
@pytest.mark.parametrize('shape', [(4, 5, 7, 6), (8, 6)])  # NHWC maps; FaceNet's [N, D]
def test_train_mode_output_and_running_statistics(use_scale, shape):
  ours, ref = _pair(use_scale)
  ours.use_running_average = False
  ref.use_running_average = False
  x = 3.0 * jax.random.normal(jax.random.key(1), shape) + 1.5
  for step in range(3):  # the statistics accumulate over several batches
    xs = x + step
    np.testing.assert_allclose(ours(xs), ref(xs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-5, atol=1e-6)


def test_one_update_by_hand():
  ours, _ = _pair(use_scale=True, momentum=0.9)
  mean0, var0 = np.asarray(ours.mean[...]), np.asarray(ours.var[...])
  ours.use_running_average = False
  x = np.asarray(jax.random.normal(jax.random.key(2), (3, 4, 4, 6)), np.float64) * 2 + 1
  y = ours(jnp.asarray(x, jnp.float32))
  mu, var = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).var(0)  # biased variance
  np.testing.assert_allclose(ours.mean[...], 0.9 * mean0 + 0.1 * mu, rtol=1e-5)
  np.testing.assert_allclose(ours.var[...], 0.9 * var0 + 0.1 * var, rtol=1e-5)
  scale, bias = np.asarray(ours.scale[...]), np.asarray(ours.bias[...])
  np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-3) * scale + bias,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('use_scale', [True, False])
def test_eval_mode_uses_running_statistics(use_scale):
  ours, ref = _pair(use_scale)
  ref.use_running_average = True  # nnx.BatchNorm is built in train mode, ours in eval
  x = jax.random.normal(jax.random.key(3), (2, 3, 3, 6))
  np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-6)
  mean_before = np.asarray(ours.mean[...])
  ours(x)
  np.testing.assert_array_equal(ours.mean[...], mean_before)  # nothing updated in eval
