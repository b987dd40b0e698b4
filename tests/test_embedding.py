"""The FaceNet embedding head (``embedding_size``) and ``Inception.embed``.

Numerics against facenet-pytorch are in test_parity_torch.py; here: parameter counts
against facenet-pytorch's published model sizes, the head's wiring on a small
network, and the option errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import inception_jax as ij
from inception_jax import weights
from inception_jax.summary import summary

FACENET = dict(embedding_size=512, bn_scale=True, dropout_rate=0.6)


@pytest.mark.parametrize('include_top,num_classes,expected', [
    (False, None, 23_482_624),  # facenet-pytorch InceptionResnetV1() (classify=False)
    (True, 8631, 27_910_327),  # + logits for VGGFace2
    (True, 10575, 28_907_599),  # + logits for CASIA-WebFace
])
def test_facenet_parameter_counts(include_top, num_classes, expected):
  model = nnx.eval_shape(lambda: ij.create_model(
      'inception_resnet_v1', include_top=include_top, num_classes=num_classes, **FACENET))
  assert weights.num_weights(model, nnx.Param) == expected
  # The architecture summary walks the same head.
  assert summary('inception_resnet_v1', include_top=include_top, num_classes=num_classes,
                 **FACENET).totals.params == expected
  keys = set(weights.flat_state(model))
  assert {'Bottleneck/fc/kernel', 'Bottleneck/bn/mean', 'Bottleneck/bn/var'} <= keys
  assert 'Bottleneck/fc/bias' not in keys  # FaceNet's bottleneck has no bias


def _pair(embedding_size):
  """The same random network with and without its classifier (same RNG stream)."""
  make = lambda top: ij.create_model('inception_v1_bn', include_top=top, num_classes=5,
                                     embedding_size=embedding_size, rngs=nnx.Rngs(3))
  return make(True), make(False)


@nnx.jit
def _outputs(top, notop, x):
  pooled = jnp.mean(top.features(x)['Mixed_5c'], axis=(1, 2))
  return top(x), top.embed(x), notop(x), notop.embed(x), pooled


def test_embedding_head_wiring():
  top, notop = _pair(16)
  # Randomise the BN statistics of the head so that it is not an identity.
  for m in (top, notop):
    m.Bottleneck.bn.mean.set_value(jnp.linspace(-0.5, 0.5, 16))
    m.Bottleneck.bn.var.set_value(jnp.linspace(0.5, 2.0, 16))
  x = jax.random.uniform(jax.random.key(0), (3, 40, 40, 3), minval=-1, maxval=1)
  logits, emb, notop_out, notop_emb, pooled = _outputs(top, notop, x)
  logits, emb, notop_out, notop_emb = map(np.asarray, (logits, emb, notop_out, notop_emb))
  assert logits.shape == (3, 5) and emb.shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
  # include_top=False returns the normalised embedding; embed() is the same there.
  np.testing.assert_allclose(notop_out, emb, atol=1e-6)
  np.testing.assert_allclose(notop_emb, emb, atol=1e-6)
  # The classifier reads the un-normalised bottleneck output (facenet-pytorch
  # classify=True): logits = Logits(bn(fc(pooled))).
  h = top.Bottleneck.fc(pooled)
  bn = top.Bottleneck.bn
  h = (h - bn.mean[...]) / jnp.sqrt(bn.var[...] + 1e-3) * bn.scale[...] + bn.bias[...]
  np.testing.assert_allclose(logits, np.asarray(top.Logits(h)), atol=1e-4)
  np.testing.assert_allclose(emb, np.asarray(h / jnp.linalg.norm(h, axis=1, keepdims=True)),
                             atol=1e-5)


def test_embed_without_head_is_normalised_pooled_features():
  model = ij.create_model('inception_v1_bn', include_top=False, rngs=nnx.Rngs(1))
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3), minval=-1, maxval=1)
  pooled, emb = nnx.jit(lambda m, x: (m(x), m.embed(x)))(model, x)
  expected = np.asarray(pooled) / np.linalg.norm(np.asarray(pooled), axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(emb), expected, atol=1e-6)


def test_embedding_option_errors():
  with pytest.raises(ValueError, match='embedding_size must be a positive int'):
    ij.create_model('inception_v1_bn', embedding_size=0)
  with pytest.raises(ValueError, match='embedding_size needs pooling'):
    ij.create_model('inception_v1_bn', embedding_size=8, include_top=False, pooling=None)


def test_inference_file_keeps_the_embedding_head(tmp_path):
  """A classifier fine-tuned from FaceNet-style weights reloads with its Bottleneck."""
  from inception_jax import inference, preprocessing  # pylint: disable=g-import-not-at-top
  top, _ = _pair(16)
  path = str(tmp_path / 'best.safetensors')
  inference.save_classifier(path, top, [f'c{i}' for i in range(5)],
                            preprocessing.Preprocessing(image_size=40), step=1)
  clf = ij.load(path)
  assert clf.model.config.embedding_size == 16
  x = jax.random.uniform(jax.random.key(2), (2, 40, 40, 3), minval=-1, maxval=1)
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(np.asarray(forward(clf.model, x)),
                                np.asarray(forward(top, x)))
