"""Data-parallel training and evaluation steps for ``Inception`` networks.

The model is split once (``nnx.split``) into a static ``GraphDef`` and four
pytrees held in a ``TrainState``: parameters, BatchNorm running statistics,
dropout RNG state and optimizer state. The train step merges them back into a
module inside one pure function, runs it in train mode, and splits the updated
statistics and RNG counters out again. That function is ``jax.jit``-compiled once
with the state donated.

Data parallelism (pmap semantics, global view). The mesh has one axis ``'data'``
(``AxisType.Auto``: ``jax.make_mesh`` defaults to ``Explicit``). The state is
replicated (``NamedSharding(mesh, P())``) and the global batch is sharded on its
leading axis (``P('data')``). Because ``jit`` traces the *global* computation,
``mean(loss)`` and the BatchNorm moments are means over the global batch: XLA's
SPMD partitioner inserts the cross-device all-reduces for the gradient and for
the BN statistics. This gives synchronised BatchNorm (as TF's
``SyncBatchNormalization`` or ``pmean`` of the moments under ``pmap``) with no
``axis_name`` plumbing, and the step computes the same numbers on 1 or N devices.
The alternative, ``jax.shard_map`` with per-device BN moments (what ``pmap``
without ``axis_name`` on BN did, "ghost batch norm"), would make the result depend
on the device count; it is not used. Dropout masks are drawn for the global batch
from the replicated key (``jax_threefry_partitionable``), so they do not depend on
the device count either.

Multi-host: call ``maybe_initialize_distributed`` first; ``make_mesh`` then spans
the devices of every process, and ``shard_batch`` builds the global batch from
each process's local rows (``jax.make_array_from_process_local_data``).

The optimizer is any optax ``GradientTransformation``; the ``TrainState`` carries
it (``state.tx``, a static field, as in Flax's ``TrainState``) and the train step
applies ``state.tx``. ``build_optimizer`` makes the built-in ones from a
``TrainConfig``: Adam for fine-tuning, SGD with momentum (GoogLeNet,
BN-Inception), ``rmsprop`` as Keras' ``RMSprop`` and ``rmsprop_tf``, the papers'
TF RMSProp (decay 0.9, epsilon 1.0 inside the square root, momentum 0.9;
Inception-v3 Section 8, v4 Section 4). ``schedule='plateau'`` keeps a learning-rate
factor in the optimizer state (``set_lr_factor``), so that Keras'
``ReduceLROnPlateau`` (``inception_jax.callbacks``) changes the rate without
recompiling the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import struct
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from inception_jax import layers
from inception_jax import registry
from inception_jax.model import InceptionOutput

Array = jax.Array

OPTIMIZERS = ('adam', 'sgd', 'rmsprop', 'rmsprop_tf')
SCHEDULES = ('constant', 'cosine', 'exponential', 'plateau')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Momentum when TrainConfig.momentum is None: SGD 0.9 (GoogLeNet, BN-Inception);
# Keras RMSprop 0.0 (its default); TF-slim / the v3 paper's RMSProp 0.9.
DEFAULT_MOMENTUM = {'sgd': 0.9, 'rmsprop': 0.0, 'rmsprop_tf': 0.9}
# Epsilon when TrainConfig.rmsprop_eps is None: Keras RMSprop 1e-7; the papers' 1.0.
DEFAULT_RMSPROP_EPS = {'rmsprop': 1e-7, 'rmsprop_tf': 1.0}
# TrainConfig fields that only build_optimizer reads: with your own transform they
# must keep their defaults (they would have no effect).
OPTIMIZER_FIELDS = ('optimizer', 'learning_rate', 'schedule', 'warmup_steps',
                    'total_steps', 'decay_rate', 'decay_steps', 'momentum',
                    'rmsprop_decay', 'rmsprop_eps', 'weight_decay', 'grad_clip')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and loss hyper-parameters (defaults: Adam fine-tuning).

  The optimizer fields (``OPTIMIZER_FIELDS``) are read by ``build_optimizer``;
  the others by the train step (loss, BatchNorm, dtype) and by the parameter
  grouping (``freeze``, ``backbone_lr_mult``), which also applies to a
  transform of your own.

  Attributes:
    optimizer: 'adam'; 'sgd' (momentum, no Nesterov); 'rmsprop', Keras'
      ``RMSprop``: ``v = rho v + (1 - rho) g^2`` from ``v = 0``, update
      ``lr g / sqrt(v + eps)`` (Keras 3 adds epsilon inside the square root),
      no momentum unless ``momentum`` is set; 'rmsprop_tf', TF's
      ``RMSPropOptimizer`` as the Inception papers train: ``v`` starts at 1,
      epsilon 1.0 inside the square root, momentum 0.9.
    learning_rate: peak learning rate.
    schedule: 'constant'; 'cosine' (linear warmup then cosine to 0 at
      ``total_steps``); 'exponential' (staircase: ``x decay_rate`` every
      ``decay_steps``; v3 paper: 0.94 every 2 epochs); 'plateau' (constant, times
      a factor kept in the optimizer state that ``set_lr_factor`` changes, e.g.
      from ``callbacks.ReduceLROnPlateau``). ``warmup_steps`` applies to all.
    warmup_steps: linear warmup from 0.
    total_steps: length of the cosine schedule.
    decay_rate: exponential staircase factor.
    decay_steps: exponential staircase period in steps.
    momentum: SGD / RMSProp momentum; None: ``DEFAULT_MOMENTUM`` of the
      optimizer (sgd 0.9, rmsprop 0, rmsprop_tf 0.9). Adam ignores it.
    rmsprop_decay: RMSProp mean-square decay (Keras ``rho``; paper 0.9).
    rmsprop_eps: RMSProp epsilon (inside the square root for both); None:
      ``DEFAULT_RMSPROP_EPS`` (rmsprop 1e-7, rmsprop_tf 1.0).
    weight_decay: decoupled (AdamW) for 'adam', L2 added to the gradient for
      the others; only conv and linear kernels decay, never BN parameters
      or biases.
    grad_clip: global-norm clipping threshold; 0 disables (v3 paper: 2.0).
    label_smoothing: label smoothing of every head (v3 paper: 0.1).
    aux_loss_weight: weight of every auxiliary head's loss; None takes each
      head's ``loss_weight`` from the architecture table (GoogLeNet 0.3 per
      head, TF-slim AuxLogits 0.4).
    class_weights: one loss weight per class (e.g. ``balanced_class_weights``),
      or None. Each example's loss is multiplied by its class's weight and the
      batch loss is the sum divided by the batch size (Keras ``class_weight``
      with its default ``sum_over_batch_size`` reduction); accuracy is not
      weighted.
    freeze: 'none'; 'backbone' (only ``Logits`` and aux heads train); or an
      endpoint name from ``model.layer_names``: it and every layer before it get
      no updates. BN running statistics are governed by ``freeze_bn`` alone.
    backbone_lr_mult: learning-rate factor of the trainable non-head parameters.
    freeze_bn: BatchNorm layers normalise with their running statistics in
      training and do not update them.
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters, BN statistics,
      optimizer state and the loss stay float32.
  """
  optimizer: str = 'adam'
  learning_rate: float = 1e-3
  schedule: str = 'cosine'
  warmup_steps: int = 0
  total_steps: int = 1000
  decay_rate: float = 0.94
  decay_steps: int = 1000
  momentum: float | None = None
  rmsprop_decay: float = 0.9
  rmsprop_eps: float | None = None
  weight_decay: float = 0.0
  grad_clip: float = 0.0
  label_smoothing: float = 0.0
  aux_loss_weight: float | None = None
  class_weights: tuple[float, ...] | None = None
  freeze: str = 'none'
  backbone_lr_mult: float = 1.0
  freeze_bn: bool = False
  dtype: str = 'float32'

  def __post_init__(self):
    if self.class_weights is not None:  # hashable: the config is a jit constant
      object.__setattr__(self, 'class_weights',
                         tuple(float(w) for w in self.class_weights))

  @property
  def effective_momentum(self) -> float | None:
    """The momentum the optimizer uses (None for Adam)."""
    if self.optimizer == 'adam':
      return None
    return DEFAULT_MOMENTUM[self.optimizer] if self.momentum is None else self.momentum

  @property
  def effective_rmsprop_eps(self) -> float | None:
    """The RMSProp epsilon the optimizer uses (None for other optimizers)."""
    if self.optimizer not in DEFAULT_RMSPROP_EPS:
      return None
    return DEFAULT_RMSPROP_EPS[self.optimizer] if self.rmsprop_eps is None else self.rmsprop_eps

  def validate(self) -> None:
    """Raises ``ValueError`` naming the bad field and its valid values."""
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'unknown schedule {self.schedule!r}; use one of {SCHEDULES}')
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown dtype {self.dtype!r}; use one of {tuple(DTYPES)}')
    if self.learning_rate < 0:
      raise ValueError(f'learning_rate must be >= 0, got {self.learning_rate}')
    if self.warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {self.warmup_steps}')
    if self.schedule == 'cosine' and self.total_steps <= self.warmup_steps:
      raise ValueError(f'cosine schedule needs total_steps ({self.total_steps}) > '
                       f'warmup_steps ({self.warmup_steps})')
    if self.schedule == 'exponential' and self.decay_steps < 1:
      raise ValueError(f'decay_steps must be >= 1, got {self.decay_steps}')
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
    if self.backbone_lr_mult < 0:
      raise ValueError(f'backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}')
    for name in ('weight_decay', 'grad_clip'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0 (0 disables it), got {getattr(self, name)}')
    if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
      raise ValueError(f'momentum must be in [0, 1), got {self.momentum}')
    if not 0.0 <= self.rmsprop_decay < 1.0:
      raise ValueError(f'rmsprop_decay must be in [0, 1), got {self.rmsprop_decay}')
    if self.rmsprop_eps is not None and not self.rmsprop_eps > 0:
      raise ValueError(f'rmsprop_eps must be > 0, got {self.rmsprop_eps}')
    if self.aux_loss_weight is not None and not self.aux_loss_weight >= 0:
      raise ValueError(f'aux_loss_weight must be >= 0, got {self.aux_loss_weight}')
    if self.class_weights is not None:
      w = self.class_weights
      if not w or not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise ValueError(f'class_weights must be finite, >= 0 and not all 0, got {w}')


@struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, replicated on the mesh.

  Attributes:
    step: int32 scalar, number of applied updates.
    params: ``nnx.State`` of the ``nnx.Param`` variables.
    batch_stats: ``nnx.State`` of the BatchNorm running statistics.
    rng_state: ``nnx.State`` of the dropout RNG streams (key and counter).
    opt_state: optax state of ``tx``.
    tx: the optax transform the train step applies (static: not an array, part
      of the jitted step's signature, as in Flax's ``TrainState``).
  """
  step: Array
  params: nnx.State
  batch_stats: nnx.State
  rng_state: nnx.State
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)


# ----------------------------------------------------------------------------- mesh


def maybe_initialize_distributed(coordinator: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Starts multi-process JAX when asked to or when the environment says so.

  Calls ``jax.distributed.initialize`` when ``coordinator`` is given, when
  ``JAX_COORDINATOR_ADDRESS`` is set (with ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``), or under a multi-task SLURM / Open MPI launch (JAX detects
  those itself). Must run before anything touches a device. CPU processes use
  gloo collectives.

  Args:
    coordinator: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: this process's index.

  Returns:
    True if ``jax.distributed`` was initialised.
  """
  env = os.environ
  coordinator = coordinator or env.get('JAX_COORDINATOR_ADDRESS')
  if coordinator:
    if num_processes is None and 'JAX_NUM_PROCESSES' in env:
      num_processes = int(env['JAX_NUM_PROCESSES'])
    if process_id is None and 'JAX_PROCESS_ID' in env:
      process_id = int(env['JAX_PROCESS_ID'])
    if num_processes is None or process_id is None:
      raise ValueError(f'distributed run with coordinator {coordinator!r} needs '
                       'num_processes and process_id (or JAX_NUM_PROCESSES and '
                       'JAX_PROCESS_ID)')
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=num_processes, process_id=process_id)
    return True
  launched = (int(env.get('SLURM_NTASKS', '1')) > 1 or
              int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
  if launched:
    jax.distributed.initialize()
    return True
  return False


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``'data'`` mesh over the first ``num_devices`` devices (default all).

  Multi-process runs must use every device of every process.
  """
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f'num_devices={num_devices} but {len(devices)} devices are '
                     'available')
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f'multi-process runs use all {len(devices)} devices; drop '
                     f'num_devices={num_devices}')
  return jax.make_mesh((n,), ('data',), axis_types=(AxisType.Auto,),
                       devices=devices[:n])


def _replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _data(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def _replicate(tree, mesh):
  """Host or single-device values -> global arrays replicated on ``mesh``.

  Works across processes (every process holds the same value).
  """
  sharding = _replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def shard_batch(mesh, images, labels, mask=None):
  """Process-local numpy batches -> global arrays sharded ``P('data')``.

  Args:
    mesh: the training mesh.
    images: this process's rows ``[b, H, W, C]`` (the whole global batch in a
      single-process run).
    labels: int labels ``[b]``.
    mask: optional float ``[b]`` (1 = real row, 0 = padding) for the eval step.

  Returns:
    ``(images, labels)`` or ``(images, labels, mask)`` as global ``jax.Array``s of
    leading size ``b * process_count``.
  """
  sharding = _data(mesh)
  local_devices = len(mesh.local_devices)
  arrays = [np.asarray(images), np.asarray(labels, np.int32)]
  if mask is not None:
    arrays.append(np.asarray(mask, np.float32))
  b = arrays[0].shape[0]
  for a in arrays[1:]:
    if a.shape[0] != b:
      raise ValueError(f'images have {b} rows but labels/mask have {a.shape[0]}')
  if b % local_devices:
    raise ValueError(f'the per-process batch ({b}) must be divisible by the local '
                     f'device count ({local_devices}); pick a batch size that is a '
                     f'multiple of {mesh.size}')
  out = tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)
  return out


# ------------------------------------------------------------------------ optimizer


def _names(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the parameter grouping needs to know of a model (hashable).

  Attributes:
    arch: architecture name.
    layer_names: the endpoints in order (``model.layer_names``).
    heads: top-level classifier modules: ``Logits`` and the aux heads.
  """
  arch: str
  layer_names: tuple[str, ...]
  heads: tuple[str, ...]

  @classmethod
  def of(cls, model_or_info) -> 'ModelInfo':
    """From a model, a ``ModelInfo`` or a dict with the three keys."""
    if isinstance(model_or_info, ModelInfo):
      return model_or_info
    if isinstance(model_or_info, dict):
      return cls(model_or_info['arch'], tuple(model_or_info['layer_names']),
                 tuple(model_or_info['heads']))
    m = model_or_info
    return cls(m.arch, tuple(m.layer_names),
               ('Logits',) + tuple(name for name, _ in m.aux_names))


def aux_loss_weights(model, override: float | None = None) -> dict[str, float]:
  """Loss weight of each auxiliary head the model has built (empty without).

  ``override`` (``TrainConfig.aux_loss_weight``) applies to every head; otherwise
  each head's ``loss_weight`` comes from the architecture table: GoogLeNet
  Section 5 adds its two aux losses "with a discount weight (0.3)" (also on
  BN-GoogLeNet); the TF-slim train scripts weight the v3 / v4 / Inception-ResNet
  ``AuxLogits`` loss by 0.4.
  """
  names = [name for name, _ in model.aux_names]
  if not names:
    return {}
  if override is not None:
    return {n: float(override) for n in names}
  try:
    spec = registry.get_arch(model.arch)
  except ValueError:
    raise ValueError(f'{model.arch} is not a registered architecture, so the loss '
                     f'weights of its auxiliary heads {names} are unknown; pass '
                     'aux_loss_weight') from None
  table = {h.name: h.loss_weight for h in spec.aux_heads}
  missing = [n for n in names if table.get(n) is None]
  if missing:
    raise ValueError(f'the {model.arch} table gives no loss_weight for the auxiliary '
                     f'head(s) {missing}; pass aux_loss_weight')
  return {n: float(table[n]) for n in names}


def _check_freeze(cfg: TrainConfig, info: ModelInfo) -> None:
  if cfg.freeze in ('none', 'backbone') or cfg.freeze in info.layer_names:
    return
  raise ValueError(f"unknown freeze {cfg.freeze!r}: use 'none', 'backbone' or an "
                   f"endpoint of {info.arch}: {', '.join(info.layer_names)}")


def param_labels(params, cfg: TrainConfig, info):
  """'head' | 'backbone' | 'frozen' for every parameter leaf.

  ``info``: a ``ModelInfo``, a model, or a dict with its fields.
  """
  info = ModelInfo.of(info)
  frozen_layers = set()
  if cfg.freeze == 'backbone':
    frozen_layers = set(info.layer_names)
  elif cfg.freeze != 'none':
    names = info.layer_names
    frozen_layers = set(names[:names.index(cfg.freeze) + 1])

  def label(path, _):
    top = _names(path)[0]
    if top in info.heads:
      return 'head'
    if top in frozen_layers or (top not in info.layer_names and
                                cfg.freeze == 'backbone'):
      return 'frozen'
    if cfg.backbone_lr_mult == 0.0:
      return 'frozen'
    return 'backbone'

  return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params):
  # Conv and linear kernels decay; BN scale/bias and conv/linear biases do not.
  return jax.tree_util.tree_map_with_path(lambda p, _: _names(p)[-1] == 'kernel', params)


def build_schedule(cfg: TrainConfig) -> optax.Schedule:
  """The learning-rate schedule of ``cfg`` (a function of the update count).

  'plateau' is the constant schedule; its factor lives in the optimizer state.
  """
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warm, cfg.total_steps, 0.0)
  if cfg.schedule in ('constant', 'plateau'):
    main = optax.constant_schedule(lr)
  else:
    main = optax.exponential_decay(lr, cfg.decay_steps, cfg.decay_rate, staircase=True)
  if warm == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def _base_optimizer(cfg: TrainConfig, lr) -> optax.GradientTransformation:
  """The optimizer of one parameter group; ``lr`` a float, array or schedule."""
  wd = cfg.weight_decay
  if cfg.optimizer == 'adam':
    if wd:
      return optax.adamw(lr, weight_decay=wd, mask=_decay_mask)
    return optax.adam(lr)
  momentum = cfg.effective_momentum
  if cfg.optimizer == 'sgd':
    tx = optax.sgd(lr, momentum=momentum, nesterov=False)
  elif cfg.optimizer == 'rmsprop':
    # Keras 3 RMSprop: v starts at 0, v = rho*v + (1-rho)*g^2, step lr*g/sqrt(v + eps)
    # (epsilon inside the square root, as keras/src/optimizers/rmsprop.py computes
    # it); with momentum m = momentum*m + step, as optax's trace after the rate.
    tx = optax.rmsprop(lr, decay=cfg.rmsprop_decay, eps=cfg.effective_rmsprop_eps,
                       initial_scale=0.0, eps_in_sqrt=True, momentum=momentum or None)
  else:
    # TF RMSPropOptimizer (the papers' optimizer): ms starts at 1 (ones_initializer),
    # ms = decay*ms + (1-decay)*g^2, mom = momentum*mom + lr*g/sqrt(ms + eps): eps is
    # inside the square root, which matters with the paper's eps = 1.0 (PyTorch puts
    # it outside, and Keras and PyTorch start ms at 0).
    tx = optax.rmsprop(lr, decay=cfg.rmsprop_decay, eps=cfg.effective_rmsprop_eps,
                       initial_scale=1.0, eps_in_sqrt=True, momentum=momentum or None)
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask), tx)
  return tx


def _grouped(cfg: TrainConfig, info: ModelInfo, lr) -> optax.GradientTransformation:
  """Clip -> per-group optimizer (heads, backbone x ``backbone_lr_mult``, frozen)."""
  head = _base_optimizer(cfg, lr)
  backbone = head
  if cfg.backbone_lr_mult != 1.0:
    backbone = optax.chain(_base_optimizer(cfg, lr), optax.scale(cfg.backbone_lr_mult))
  tx = optax.multi_transform(
      {'head': head, 'backbone': backbone, 'frozen': optax.set_to_zero()},
      lambda params: param_labels(params, cfg, info))
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def build_optimizer(cfg: TrainConfig, model_or_info) -> optax.GradientTransformation:
  """The built-in optimizer of ``cfg`` for a model, as an optax transform.

  Clip (``grad_clip``) -> per-group optimizer: the heads at the schedule's rate,
  the backbone at ``backbone_lr_mult`` times it, frozen parameters (``freeze``)
  never updated. With ``schedule='plateau'`` the whole transform is wrapped in
  ``optax.inject_hyperparams`` with a ``lr_factor`` hyper-parameter (1.0 to
  begin with) that multiplies every group's rate (``set_lr_factor``).

  Args:
    cfg: the configuration.
    model_or_info: the model (concrete or abstract), or its ``ModelInfo``.

  Returns:
    The transform. Equal arguments return the same object (memoised): the
    transform is a static field of ``TrainState``, so a new object would make the
    jitted step compile again for every new state.
  """
  return _build_optimizer(cfg, ModelInfo.of(model_or_info))


@functools.lru_cache(maxsize=64)
def _build_optimizer(cfg: TrainConfig, info: ModelInfo) -> optax.GradientTransformation:
  cfg.validate()
  _check_freeze(cfg, info)
  schedule = build_schedule(cfg)
  if cfg.schedule != 'plateau':
    return _grouped(cfg, info, schedule)

  def factory(learning_rate, lr_factor):
    return _grouped(cfg, info, learning_rate * lr_factor)

  return optax.inject_hyperparams(factory)(learning_rate=schedule, lr_factor=1.0)


@functools.lru_cache(maxsize=64)
def _partitioned(tx: optax.GradientTransformation, freeze: str, backbone_lr_mult: float,
                 info: ModelInfo) -> optax.GradientTransformation:
  """A user's transform with ``freeze`` / ``backbone_lr_mult`` applied around it."""
  if freeze == 'none' and backbone_lr_mult == 1.0:
    return tx
  cfg = TrainConfig(freeze=freeze, backbone_lr_mult=backbone_lr_mult)
  backbone = tx if backbone_lr_mult == 1.0 else optax.chain(tx, optax.scale(backbone_lr_mult))
  return optax.multi_transform(
      {'head': tx, 'backbone': backbone, 'frozen': optax.set_to_zero()},
      lambda params: param_labels(params, cfg, info))


def _inject_states(opt_state) -> list:
  kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds))
          if isinstance(x, kinds)]


def lr_factor(state: TrainState) -> float:
  """The ``lr_factor`` of a ``schedule='plateau'`` optimizer state (host float)."""
  found = [h.hyperparams['lr_factor'] for h in _inject_states(state.opt_state)
           if 'lr_factor' in h.hyperparams]
  if not found:
    raise ValueError("the optimizer has no lr_factor: build it with schedule='plateau'")
  return float(np.asarray(found[0].addressable_data(0)
                          if isinstance(found[0], jax.Array) else found[0]))


def set_lr_factor(state: TrainState, factor: float) -> TrainState:
  """The state with the learning-rate factor of a 'plateau' optimizer set.

  The factor is an array of the optimizer state (same shape, dtype and sharding
  as before), so the jitted train step runs on without compiling again. Every
  process must call it with the same value.
  """
  kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
  found = []

  def replace(x):
    if isinstance(x, kinds) and 'lr_factor' in x.hyperparams:
      old = x.hyperparams['lr_factor']
      value = np.asarray(factor, dtype=old.dtype)
      if isinstance(old, jax.Array):
        new = jax.make_array_from_callback(old.shape, old.sharding, lambda idx: value[idx])
      else:
        new = jnp.asarray(value)
      found.append(x)
      return x._replace(hyperparams={**x.hyperparams, 'lr_factor': new})
    return x

  opt_state = jax.tree.map(replace, state.opt_state, is_leaf=lambda x: isinstance(x, kinds))
  if not found:
    raise ValueError("the optimizer has no lr_factor: build it with schedule='plateau'")
  return state.replace(opt_state=opt_state)


# --------------------------------------------------------------------------- state


def _split(model):
  graphdef, params, batch_stats, rng_state, rest = nnx.split(
      model, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
  if jax.tree.leaves(rest):
    raise ValueError('the model holds variables other than Param, BatchStat and '
                     f'RNG state: {rest}')
  return graphdef, params, batch_stats, rng_state


def _is_transform(x) -> bool:
  return callable(getattr(x, 'init', None)) and callable(getattr(x, 'update', None))


def create_train_state(model: nnx.Module,
                       optimizer: TrainConfig | optax.GradientTransformation, mesh,
                       cfg: TrainConfig | None = None) -> tuple[nnx.GraphDef, TrainState]:
  """Splits ``model`` and builds the optimizer state, replicated on ``mesh``.

  The optimizer is the built-in one of a ``TrainConfig`` (``build_optimizer``) or
  any optax transform of your own::

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    graphdef, state = create_train_state(model, tx, mesh)
    step = make_train_step(graphdef, mesh=mesh)

  With your own transform, ``cfg`` may give the loss and grouping fields
  (``label_smoothing``, ``class_weights``, ``freeze``, ``backbone_lr_mult``,
  ``freeze_bn``, ``dtype`` ...; pass the same ``cfg`` to ``make_train_step``):
  ``freeze`` and ``backbone_lr_mult`` then wrap it (frozen parameters get no
  update; the backbone's updates are scaled). Its optimizer fields must keep their
  defaults.

  ``cfg.dtype`` sets the compute dtype of the returned graph (the caller's model
  is not modified; parameters keep their dtype).

  Args:
    model: an ``Inception`` module (e.g. from ``create_model``), any mode.
    optimizer: a ``TrainConfig`` or an ``optax.GradientTransformation``.
    mesh: from ``make_mesh``.
    cfg: with a transform, the configuration of everything but the optimizer.

  Returns:
    ``(graphdef, state)``; ``state.tx`` is the transform the step applies; pass
    ``graphdef`` to ``make_train_step`` and ``make_eval_step``.
  """
  if isinstance(optimizer, TrainConfig):
    if cfg is not None and cfg != optimizer:
      raise ValueError('create_train_state got two different TrainConfigs; pass one')
    cfg, tx = optimizer, None
  elif _is_transform(optimizer):
    cfg, tx = cfg or TrainConfig(), optimizer
    changed = [f'{k}={getattr(cfg, k)!r}' for k in OPTIMIZER_FIELDS
               if getattr(cfg, k) != getattr(TrainConfig(), k)]
    if changed:
      raise ValueError(f'cfg sets optimizer fields ({", ".join(changed)}) that have no '
                       'effect with your own optax transform; build them into the '
                       'transform, or pass the TrainConfig alone')
  else:
    raise TypeError('optimizer must be a TrainConfig or an optax GradientTransformation, '
                    f'got {type(optimizer).__name__}')
  cfg.validate()
  info = ModelInfo.of(model)
  _check_freeze(cfg, info)
  if not getattr(model, 'include_top', False):
    raise ValueError('training needs a classifier: create the model with '
                     'include_top=True')
  if cfg.class_weights is not None and len(cfg.class_weights) != model.num_classes:
    raise ValueError(f'{len(cfg.class_weights)} class weights for a model with '
                     f'{model.num_classes} classes')
  graphdef, params, batch_stats, rng_state = _split(model)
  dtype = DTYPES[cfg.dtype]
  copy = nnx.merge(graphdef, params, batch_stats, rng_state)  # new module objects
  copy.set_attributes(dtype=dtype, raise_if_not_found=False)
  copy.eval()
  graphdef, params, batch_stats, rng_state = _split(copy)
  params, batch_stats, rng_state = _replicate((params, batch_stats, rng_state), mesh)
  if tx is None:
    tx = build_optimizer(cfg, info)
  else:
    tx = _partitioned(tx, cfg.freeze, cfg.backbone_lr_mult, info)
  opt_state = jax.jit(tx.init, out_shardings=_replicated(mesh))(params)
  step = _replicate(np.zeros((), np.int32), mesh)
  return graphdef, TrainState(step=step, params=params, batch_stats=batch_stats,
                              rng_state=rng_state, opt_state=opt_state, tx=tx)


def model_from_state(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  """The trained module (eval mode) for export or prediction."""
  model = nnx.merge(graphdef, state.params, state.batch_stats, state.rng_state)
  model.eval()
  return model


# --------------------------------------------------------------------------- steps


def _is_batch_norm(path, node) -> bool:
  del path
  return isinstance(node, (layers.BatchNorm, nnx.BatchNorm))


def _cross_entropy(logits: Array, labels: Array, smoothing: float) -> Array:
  """Per-example softmax cross-entropy in float32 with label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if smoothing:
    targets = optax.smooth_labels(targets, smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _check_batch(mesh, images, labels, mask=None) -> None:
  b = images.shape[0]
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C], got shape {tuple(images.shape)}')
  if b % mesh.size:
    raise ValueError(f'global batch size {b} is not divisible by the {mesh.size} '
                     f'devices of the mesh; use a batch size that is a multiple of '
                     f'{mesh.size} (pad the last batch and mask it in eval)')
  if labels.shape != (b,):
    raise ValueError(f'labels must be [B] = [{b}], got shape {tuple(labels.shape)}')
  if mask is not None and mask.shape != (b,):
    raise ValueError(f'mask must be [B] = [{b}], got shape {tuple(mask.shape)}')


def balanced_class_weights(counts) -> tuple[float, ...]:
  """Keras / scikit-learn 'balanced' weights: ``n_samples / (n_classes * count_c)``.

  ``counts``: training examples per class (every class needs at least one).
  The weights average to 1 over the training examples.
  """
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 1 or not len(counts) or np.any(counts <= 0):
    raise ValueError(f'balanced class weights need a positive count for every class, got '
                     f'{counts.tolist()}')
  return tuple(float(w) for w in counts.sum() / (len(counts) * counts))


def _step_learning_rate(state: TrainState, opt_state, cfg: TrainConfig,
                        info: ModelInfo) -> Array | None:
  """The heads' learning rate of this update, where it can be known."""
  injected = [h.hyperparams for h in _inject_states(opt_state)
              if 'learning_rate' in h.hyperparams]
  if injected:  # built-in 'plateau', or a user's optax.inject_hyperparams transform
    hp = injected[0]
    return jnp.asarray(hp['learning_rate'] * hp.get('lr_factor', 1.0), jnp.float32)
  if state.tx is _build_optimizer(cfg, info):
    return jnp.asarray(build_schedule(cfg)(state.step), jnp.float32)
  return None


def make_train_step(graphdef: nnx.GraphDef, cfg: TrainConfig | None = None, mesh=None
                    ) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict]]:
  """The data-parallel train step ``(state, images, labels) -> (state, metrics)``.

  ``images`` ``[B, H, W, C]`` float (normalised) and ``labels`` int ``[B]`` are the
  global batch (``B`` divisible by ``mesh.size``), host arrays or the output of
  ``shard_batch``. The input ``state`` is donated; the update is
  ``state.tx``'s. Loss: label-smoothed softmax cross-entropy of ``Logits`` plus,
  for each aux head, its weight (``aux_loss_weights``) times its cross-entropy;
  with ``class_weights`` every example's loss is weighted by its class and the
  sum divided by the batch size. When the loss or the gradient norm is not
  finite the returned state equals the input state (nothing is updated, not even
  the step counter or BN statistics) and ``finite`` is False, so the caller can
  stop with the last good state in hand.

  Metrics (replicated scalars): ``loss``, ``ce_loss`` (main head), ``aux_loss``
  (sum over aux heads, unweighted by the head weights), ``accuracy`` (main head,
  top-1, unweighted), ``grad_norm`` (global norm of the trainable gradients,
  before clipping), ``lr`` (heads' learning rate of this update: for the built-in
  optimizer of ``cfg``, or a transform made with ``optax.inject_hyperparams``
  with a ``learning_rate``; absent otherwise), ``finite`` (bool).

  Args:
    graphdef: from ``create_train_state``.
    cfg: the loss, grouping and dtype configuration (the one given to
      ``create_train_state``); None: ``TrainConfig()`` (plain cross-entropy).
    mesh: from ``make_mesh``.

  The returned callable has ``.jitted`` (the ``jax.jit`` object, e.g. for
  ``.lower(...).compile()``).
  """
  if mesh is None:
    raise TypeError('make_train_step needs the mesh: make_train_step(graphdef, cfg, mesh)')
  cfg = cfg or TrainConfig()
  cfg.validate()
  smoothing = cfg.label_smoothing

  def step_fn(state: TrainState, images: Array, labels: Array):
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.rng_state)
    info = ModelInfo.of(model)
    _check_freeze(cfg, info)
    aux_weights = aux_loss_weights(model, cfg.aux_loss_weight)
    labels_ = param_labels(state.params, cfg, info)
    if cfg.class_weights is not None:
      if len(cfg.class_weights) != model.num_classes:
        raise ValueError(f'{len(cfg.class_weights)} class weights for a model with '
                         f'{model.num_classes} classes')
      example_weight = jnp.asarray(cfg.class_weights, jnp.float32)[labels]
    else:
      example_weight = None

    def batch_ce(logits):
      ce = _cross_entropy(logits, labels, smoothing)
      if example_weight is None:
        return jnp.mean(ce)
      return jnp.sum(ce * example_weight) / ce.shape[0]  # Keras sum_over_batch_size

    def loss_fn(params, batch_stats, rng_state):
      m = nnx.merge(graphdef, params, batch_stats, rng_state, copy=True)
      m.train()
      if cfg.freeze_bn:
        m.set_attributes(_is_batch_norm, use_running_average=True, raise_if_not_found=False)
      out = m(images)
      aux = {}
      if isinstance(out, InceptionOutput):
        out, aux = out.logits, out.aux_logits
      ce = batch_ce(out)
      aux_ce = {name: batch_ce(a) for name, a in aux.items()}
      loss = ce + sum((aux_weights[n] * v for n, v in aux_ce.items()),
                      jnp.zeros((), jnp.float32))
      aux_sum = sum(aux_ce.values(), jnp.zeros((), jnp.float32))
      _, _, new_bs, new_rng = _split(m)
      acc = jnp.mean((jnp.argmax(out, -1) == labels).astype(jnp.float32))
      return loss, (ce, aux_sum, acc, new_bs, new_rng)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (ce, aux_ce, acc, new_bs, new_rng)), grads = grad_fn(
        state.params, state.batch_stats, state.rng_state)
    # Frozen leaves get exact zeros, so their weight gradients are dead code.
    grads = jax.tree.map(lambda g, lab: jnp.zeros_like(g) if lab == 'frozen' else g,
                         grads, labels_)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                        rng_state=new_rng, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = dict(loss=loss, ce_loss=ce, aux_loss=aux_ce, accuracy=acc,
                   grad_norm=grad_norm, finite=finite)
    lr = _step_learning_rate(state, opt_state, cfg, info)
    if lr is not None:
      metrics['lr'] = lr
    return new, metrics

  repl, data = _replicated(mesh), _data(mesh)
  jitted = jax.jit(step_fn, in_shardings=(repl, data, data),
                   out_shardings=(repl, repl), donate_argnums=0)

  def train_step(state: TrainState, images, labels):
    _check_batch(mesh, images, labels)
    return jitted(state, images, labels)

  train_step.jitted = jitted
  return train_step


def make_eval_step(graphdef: nnx.GraphDef,
                   mesh) -> Callable[[TrainState, Array, Array, Array], dict]:
  """The eval step ``(state, images, labels, mask) -> sums``.

  Eval mode (running BN statistics, no dropout, no aux heads). ``mask`` is float
  ``[B]``, 0 for padding rows. Returns replicated float32 sums ``loss_sum``
  (unsmoothed cross-entropy), ``top1_correct``, ``top5_correct``, ``count``
  (= ``sum(mask)``), and ``logits`` ``[B, C]`` sharded on ``'data'`` (multi-process:
  read them with ``jax.experimental.multihost_utils.process_allgather``).
  """

  def eval_fn(state: TrainState, images, labels, mask):
    model = model_from_state(graphdef, state)
    logits = model(images).astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    ce = _cross_entropy(logits, labels, 0.0)
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    hit = top == labels[:, None]
    return dict(loss_sum=jnp.sum(ce * mask),
                top1_correct=jnp.sum(hit[:, 0] * mask),
                top5_correct=jnp.sum(jnp.any(hit, axis=1) * mask),
                count=jnp.sum(mask), logits=logits)

  repl, data = _replicated(mesh), _data(mesh)
  out_shardings = dict(loss_sum=repl, top1_correct=repl, top5_correct=repl, count=repl,
                       logits=data)
  jitted = jax.jit(eval_fn, in_shardings=(repl, data, data, data),
                   out_shardings=out_shardings)

  def eval_step(state: TrainState, images, labels, mask):
    _check_batch(mesh, images, labels, mask)
    return jitted(state, images, labels, mask)

  eval_step.jitted = jitted
  return eval_step
