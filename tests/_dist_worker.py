"""Helpers shared by tests/test_train.py and its two-process ``jax.distributed`` run.

Run as a script, it is one process of a data-parallel run on 127.0.0.1: it trains
one step of ``tiny_model`` on its half of ``global_batch`` and writes the loss and
parameters to an .npz file for the parent test to compare with a one-process run.
"""

import os
import sys

import numpy as np

TINY_SIZE = 35  # smallest input for which the aux head's 5x5 VALID conv fits
NUM_CLASSES = 5


def tiny_spec():
  """Stem conv, a Mixed block, a reduction, 2 stacked residual blocks (nnx.scan), aux head."""
  from inception_jax.specs import ArchSpec, AuxHead, Conv, Mixed, Pool, Repeat, Residual
  return ArchSpec(
      name='tiny', default_size=TINY_SIZE, defaults=dict(dropout_rate=0.2),
      layers=(
          Conv('Conv2d_1a_3x3', 8, 3, stride=2, padding='VALID'),  # 17x17x8
          Mixed('Mixed_5b', (  # 17x17x8
              (Conv('Conv2d_0a_1x1', 4, 1),),
              (Pool('AvgPool_0a_3x3', 'avg', 3, 1), Conv('Conv2d_0b_1x1', 4, 1)),
          )),
          Mixed('Mixed_6a', (  # 8x8x16
              (Conv('Conv2d_1a_3x3', 8, 3, stride=2, padding='VALID'),),
              (Pool('MaxPool_1a_3x3', 'max', 3, 2, 'VALID'),),
          )),
          Repeat('Repeat', Residual('block8', (  # 8x8x16, Inception-ResNet style
              (Conv('Conv2d_0a_1x1', 4, 1),),
              (Conv('Conv2d_0a_1x1', 4, 1), Conv('Conv2d_0b_3x3', 4, 3)),
          ), scale=0.2), count=2),
      ),
      aux_heads=(AuxHead('AuxLogits', 'Mixed_5b', 'slim'),))


def tiny_model(seed=0, **options):
  from flax import nnx
  from inception_jax import factory
  options.setdefault('aux_logits', True)
  options.setdefault('bn_momentum', 0.9)  # running stats settle within the tests' ~20 steps
  return factory.build(tiny_spec(), dict(options, num_classes=NUM_CLASSES), nnx.Rngs(seed))


def global_batch(n=8, seed=0):
  """Images whose mean colour depends on the class, plus noise: learnable in a few steps."""
  rng = np.random.RandomState(seed)
  labels = (np.arange(n) % NUM_CLASSES).astype(np.int32)
  centres = np.linspace(-1.0, 1.0, NUM_CLASSES)
  colour = np.stack([centres, centres[::-1], centres ** 2], -1)[labels]  # [n, 3]
  images = colour[:, None, None, :] + 0.3 * rng.randn(n, TINY_SIZE, TINY_SIZE, 3)
  return images.astype(np.float32), labels


def dist_config():
  from inception_jax import train
  return train.TrainConfig(optimizer='rmsprop_tf', learning_rate=0.01, schedule='constant',
                           weight_decay=1e-4, grad_clip=2.0, label_smoothing=0.1,
                           aux_loss_weight=0.4)


def main(port, num_processes, process_id, out):
  from inception_jax import train
  train.maybe_initialize_distributed(f'127.0.0.1:{port}', num_processes, process_id)
  import jax
  mesh = train.make_mesh()
  cfg = dist_config()
  graphdef, state = train.create_train_state(tiny_model(), cfg, mesh)
  step = train.make_train_step(graphdef, cfg, mesh)
  images, labels = global_batch()
  rows = len(labels) // num_processes
  local = slice(process_id * rows, (process_id + 1) * rows)
  images, labels = train.shard_batch(mesh, images[local], labels[local])
  state, metrics = step(state, images, labels)
  local_value = lambda x: np.asarray(x.addressable_data(0))  # replicated
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  arrays = {jax.tree_util.keystr(p): local_value(x) for p, x in flat}
  arrays.update({f'bs{jax.tree_util.keystr(p)}': local_value(x)
                 for p, x in jax.tree_util.tree_flatten_with_path(state.batch_stats)[0]})
  np.savez(out, loss=local_value(metrics['loss']), devices=jax.device_count(),
           processes=jax.process_count(), **arrays)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
