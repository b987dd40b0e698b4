"""Inception-v3 against Table 1 of arXiv 1512.00567 and the released TF-slim shapes.

Expected shapes are read from the paper (Table 1's "input size" column is the input
of each row, so the output of a row is the next row's input) and, where the table
disagrees with every released checkpoint, from TF-slim inception_v3.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import inception_jax as ij
from inception_jax import weights


def _endpoint_shapes(model, size=299):
  feats = jax.eval_shape(model.features,
                         jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return {k: v.shape[1:] for k, v in feats.items()}


def test_table1_rows():
  s = _endpoint_shapes(ij.create_model('inception_v3'))
  # Table 1 rows 1-4: conv 3x3/2, conv 3x3/1, conv padded 3x3/1, pool 3x3/2.
  assert s['Conv2d_1a_3x3'] == (149, 149, 32)
  assert s['Conv2d_2a_3x3'] == (147, 147, 32)
  assert s['Conv2d_2b_3x3'] == (147, 147, 64)
  assert s['MaxPool_3a_3x3'] == (73, 73, 64)
  # Table 1 then lists conv 3x3/1 -> 71x71x80, conv 3x3/2 -> 35x35x192,
  # conv 3x3/1 -> 35x35x288. The released network (every checkpoint) instead has
  # a 1x1 conv to 80, a 3x3 VALID conv to 192 and a 3x3/2 max pool.
  assert s['Conv2d_3b_1x1'] == (73, 73, 80)
  assert s['Conv2d_4a_3x3'] == (71, 71, 192)
  assert s['MaxPool_5a_3x3'] == (35, 35, 192)
  # "3 x Inception (Figure 5)", input 35x35x288: released widths 256, 288, 288.
  assert s['Mixed_5b'] == (35, 35, 256)
  assert s['Mixed_5c'] == (35, 35, 288)
  assert s['Mixed_5d'] == (35, 35, 288)
  # "5 x Inception (Figure 6)" at 17x17x768: the Figure-10 reduction + 4 modules.
  for name in ('Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    assert s[name] == (17, 17, 768), name
  # "2 x Inception (Figure 7)", input 8x8x1280: the reduction gives 8x8x1280.
  assert s['Mixed_7a'] == (8, 8, 1280)
  # "pool 8x8", input 8x8x2048.
  assert s['Mixed_7b'] == (8, 8, 2048)
  assert s['Mixed_7c'] == (8, 8, 2048)
  assert list(s)[-1] == 'Mixed_7c'


def test_aux_head_output_and_minimum():
  model = ij.create_model('inception_v3', aux_logits=True, num_classes=10)
  # Mixed_6e is 17x17; 5x5/3 VALID pool -> 5x5, the 5x5 VALID conv -> 1x1: the
  # smallest input keeping Mixed_6e at 17x17 or more is 299 (torchvision needs 299).
  assert model.min_input_size_aux == 299
  assert model.min_input_size == 75  # Keras/torchvision minimum without aux


def test_parameter_counts_against_references():
  # timm inception_v3 (no aux) and torchvision inception_v3 (with aux), published.
  assert weights.num_weights(ij.create_model('inception_v3')) == 23_834_568
  assert weights.num_weights(ij.create_model('inception_v3', aux_logits=True)) == 27_161_264
  # Keras InceptionV3: BN without gamma; Keras' total counts the moving statistics.
  keras_like = ij.create_model('inception_v3', bn_scale=False)
  total = weights.num_weights(keras_like) + weights.num_weights(keras_like, nnx.BatchStat)
  assert total == 23_851_784
  notop = ij.create_model('inception_v3', bn_scale=False, include_top=False)
  total = weights.num_weights(notop) + weights.num_weights(notop, nnx.BatchStat)
  assert total == 21_802_784


def test_count_include_pad_changes_only_borders():
  """The avg-pool branch differs between TF and PyTorch only where windows hit padding."""
  tf_like = ij.create_model('inception_v3')
  torch_like = ij.create_model('inception_v3', count_include_pad=True)
  x = jax.random.normal(jax.random.key(0), (1, 35, 35, 192))
  pool_tf = tf_like.Mixed_5b.Branch_3.AvgPool_0a_3x3(x)
  pool_pt = torch_like.Mixed_5b.Branch_3.AvgPool_0a_3x3(x)
  np.testing.assert_allclose(pool_tf[:, 1:-1, 1:-1], pool_pt[:, 1:-1, 1:-1], rtol=1e-6)
  # Hand computation at the corner: 4 valid values, divided by 4 vs by 9.
  corner = np.asarray(x[0, :2, :2]).sum(axis=(0, 1))
  np.testing.assert_allclose(pool_tf[0, 0, 0], corner / 4, rtol=1e-5)
  np.testing.assert_allclose(pool_pt[0, 0, 0], corner / 9, rtol=1e-5)
