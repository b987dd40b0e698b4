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

Optimisers follow the papers: SGD with momentum (GoogLeNet, BN-Inception),
RMSProp with decay 0.9 and epsilon 1.0 (Inception-v3 Section 8, v4 Section 4) with
TF's exact update (see ``build_optimizer``), Adam for fine-tuning.
"""

from __future__ import annotations

import dataclasses
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
from inception_jax.model import InceptionOutput

Array = jax.Array

OPTIMIZERS = ('adam', 'sgd', 'rmsprop')
SCHEDULES = ('constant', 'cosine', 'exponential')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Auxiliary loss weights: GoogLeNet Section 5 adds each of its two aux losses
# "with a discount weight (0.3)" (used for both GoogLeNet-style heads, also on
# BN-GoogLeNet); TF-slim train scripts weight the v3/v4/IR-v2 AuxLogits loss by 0.4.
AUX_WEIGHT_GOOGLENET = 0.3
AUX_WEIGHT_SLIM = 0.4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation hyper-parameters (defaults: Adam fine-tuning).

  Attributes:
    optimizer: 'adam', 'sgd' (momentum, no Nesterov) or 'rmsprop' (TF RMSProp).
    learning_rate: peak learning rate.
    schedule: 'constant', 'cosine' (linear warmup then cosine to 0 at
      ``total_steps``) or 'exponential' (staircase: ``x decay_rate`` every
      ``decay_steps``; v3 paper: 0.94 every 2 epochs). ``warmup_steps`` applies to
      all three.
    warmup_steps: linear warmup from 0.
    total_steps: length of the cosine schedule.
    decay_rate: exponential staircase factor.
    decay_steps: exponential staircase period in steps.
    momentum: SGD momentum, and the momentum of RMSProp (TF-slim 0.9).
    rmsprop_decay: RMSProp mean-square decay (paper 0.9).
    rmsprop_eps: RMSProp epsilon, added inside the square root as TF does
      (paper 1.0).
    weight_decay: decoupled (AdamW) for 'adam', L2 added to the gradient for
      'sgd'/'rmsprop'; only conv and linear kernels decay, never BN parameters
      or biases.
    grad_clip: global-norm clipping threshold; 0 disables (v3 paper: 2.0).
    label_smoothing: label smoothing of every head (v3 paper: 0.1).
    aux_loss_weight: weight of each auxiliary head's loss; None picks 0.3 for
      GoogLeNet's two heads (inception_v1, inception_v1_bn) and 0.4 for the
      single BN head of the others.
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
  momentum: float = 0.9
  rmsprop_decay: float = 0.9
  rmsprop_eps: float = 1.0
  weight_decay: float = 0.0
  grad_clip: float = 0.0
  label_smoothing: float = 0.0
  aux_loss_weight: float | None = None
  freeze: str = 'none'
  backbone_lr_mult: float = 1.0
  freeze_bn: bool = False
  dtype: str = 'float32'

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


@struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, replicated on the mesh.

  Attributes:
    step: int32 scalar, number of applied updates.
    params: ``nnx.State`` of the ``nnx.Param`` variables.
    batch_stats: ``nnx.State`` of the BatchNorm running statistics.
    rng_state: ``nnx.State`` of the dropout RNG streams (key and counter).
    opt_state: optax state.
  """
  step: Array
  params: nnx.State
  batch_stats: nnx.State
  rng_state: nnx.State
  opt_state: Any


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


def _model_info(model) -> dict:
  aux = [getattr(model, name) for name, _ in model.aux_names]
  return dict(arch=model.arch, layer_names=tuple(model.layer_names),
              heads=('Logits',) + tuple(name for name, _ in model.aux_names),
              googlenet_aux=any(isinstance(h, layers.GoogLeNetAux) for h in aux))


def default_aux_weight(model) -> float:
  """Weight of each aux head's loss: 0.3 for GoogLeNet-style heads, else 0.4."""
  return AUX_WEIGHT_GOOGLENET if _model_info(model)['googlenet_aux'] else AUX_WEIGHT_SLIM


def _check_freeze(cfg: TrainConfig, info: dict) -> None:
  if cfg.freeze in ('none', 'backbone') or cfg.freeze in info['layer_names']:
    return
  raise ValueError(f"unknown freeze {cfg.freeze!r}: use 'none', 'backbone' or an "
                   f"endpoint of {info['arch']}: {', '.join(info['layer_names'])}")


def param_labels(params, cfg: TrainConfig, info: dict):
  """'head' | 'backbone' | 'frozen' for every parameter leaf."""
  frozen_layers = set()
  if cfg.freeze == 'backbone':
    frozen_layers = set(info['layer_names'])
  elif cfg.freeze != 'none':
    names = info['layer_names']
    frozen_layers = set(names[:names.index(cfg.freeze) + 1])

  def label(path, _):
    top = _names(path)[0]
    if top in info['heads']:
      return 'head'
    if top in frozen_layers or (top not in info['layer_names'] and
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
  """The learning-rate schedule of ``cfg`` (a function of the update count)."""
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warm, cfg.total_steps, 0.0)
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(lr)
  else:
    main = optax.exponential_decay(lr, cfg.decay_steps, cfg.decay_rate, staircase=True)
  if warm == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def _base_optimizer(cfg: TrainConfig, schedule) -> optax.GradientTransformation:
  wd = cfg.weight_decay
  if cfg.optimizer == 'adam':
    if wd:
      return optax.adamw(schedule, weight_decay=wd, mask=_decay_mask)
    return optax.adam(schedule)
  if cfg.optimizer == 'sgd':
    tx = optax.sgd(schedule, momentum=cfg.momentum, nesterov=False)
  else:
    # TF RMSPropOptimizer (the papers' optimizer): ms starts at 1 (ones_initializer),
    # ms = decay*ms + (1-decay)*g^2, mom = momentum*mom + lr*g/sqrt(ms + eps): eps is
    # inside the square root, which matters with the paper's eps = 1.0 (Keras and
    # PyTorch put it outside and start ms at 0).
    tx = optax.rmsprop(schedule, decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps,
                       initial_scale=1.0, eps_in_sqrt=True,
                       momentum=cfg.momentum or None)
  if wd:
    tx = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask), tx)
  return tx


def build_optimizer(cfg: TrainConfig, params, info: dict) -> optax.GradientTransformation:
  """Clip -> per-group optimizer (heads, backbone x ``backbone_lr_mult``, frozen)."""
  schedule = build_schedule(cfg)
  head = _base_optimizer(cfg, schedule)
  backbone = head
  if cfg.backbone_lr_mult != 1.0:
    backbone = optax.chain(_base_optimizer(cfg, schedule), optax.scale(cfg.backbone_lr_mult))
  labels = param_labels(params, cfg, info)
  tx = optax.multi_transform(
      {'head': head, 'backbone': backbone, 'frozen': optax.set_to_zero()}, labels)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


# --------------------------------------------------------------------------- state


def _split(model):
  graphdef, params, batch_stats, rng_state, rest = nnx.split(
      model, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
  if jax.tree.leaves(rest):
    raise ValueError('the model holds variables other than Param, BatchStat and '
                     f'RNG state: {rest}')
  return graphdef, params, batch_stats, rng_state


def create_train_state(model: nnx.Module, cfg: TrainConfig,
                       mesh) -> tuple[nnx.GraphDef, TrainState]:
  """Splits ``model`` and builds the optimizer state, replicated on ``mesh``.

  ``cfg.dtype`` sets the compute dtype of the returned graph (the caller's model
  is not modified; parameters keep their dtype).

  Args:
    model: an ``Inception`` module (e.g. from ``create_model``), any mode.
    cfg: training configuration.
    mesh: from ``make_mesh``.

  Returns:
    ``(graphdef, state)``; pass ``graphdef`` to ``make_train_step`` and
    ``make_eval_step``.
  """
  cfg.validate()
  info = _model_info(model)
  _check_freeze(cfg, info)
  if not getattr(model, 'include_top', False):
    raise ValueError('training needs a classifier: create the model with '
                     'include_top=True')
  graphdef, params, batch_stats, rng_state = _split(model)
  dtype = DTYPES[cfg.dtype]
  copy = nnx.merge(graphdef, params, batch_stats, rng_state)  # new module objects
  copy.set_attributes(dtype=dtype, raise_if_not_found=False)
  copy.eval()
  graphdef, params, batch_stats, rng_state = _split(copy)
  params, batch_stats, rng_state = _replicate((params, batch_stats, rng_state), mesh)
  tx = build_optimizer(cfg, params, info)
  opt_state = jax.jit(tx.init, out_shardings=_replicated(mesh))(params)
  step = _replicate(np.zeros((), np.int32), mesh)
  return graphdef, TrainState(step=step, params=params, batch_stats=batch_stats,
                              rng_state=rng_state, opt_state=opt_state)


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


def make_train_step(graphdef: nnx.GraphDef, cfg: TrainConfig,
                    mesh) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict]]:
  """The data-parallel train step ``(state, images, labels) -> (state, metrics)``.

  ``images`` ``[B, H, W, C]`` float (normalised) and ``labels`` int ``[B]`` are the
  global batch (``B`` divisible by ``mesh.size``), host arrays or the output of
  ``shard_batch``. The input ``state`` is donated. Loss: label-smoothed softmax
  cross-entropy of ``Logits`` plus ``aux_loss_weight`` times the sum of the aux
  heads' cross-entropies. When the loss or the gradient norm is not finite the
  returned state equals the input state (nothing is updated, not even the step
  counter or BN statistics) and ``finite`` is False, so the caller can stop with
  the last good state in hand.

  Metrics (replicated scalars): ``loss``, ``ce_loss`` (main head), ``aux_loss``
  (sum over aux heads, unweighted), ``accuracy`` (main head, top-1), ``grad_norm``
  (global norm of the trainable gradients, before clipping), ``lr`` (heads'
  learning rate of this update), ``finite`` (bool).

  The returned callable has ``.jitted`` (the ``jax.jit`` object, e.g. for
  ``.lower(...).compile()``).
  """
  cfg.validate()
  smoothing = cfg.label_smoothing
  schedule = build_schedule(cfg)

  def step_fn(state: TrainState, images: Array, labels: Array):
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.rng_state)
    info = _model_info(model)
    _check_freeze(cfg, info)
    aux_weight = cfg.aux_loss_weight
    if aux_weight is None:
      aux_weight = default_aux_weight(model)
    tx = build_optimizer(cfg, state.params, info)
    labels_ = param_labels(state.params, cfg, info)

    def loss_fn(params, batch_stats, rng_state):
      m = nnx.merge(graphdef, params, batch_stats, rng_state, copy=True)
      m.train()
      if cfg.freeze_bn:
        m.set_attributes(_is_batch_norm, use_running_average=True, raise_if_not_found=False)
      out = m(images)
      aux = {}
      if isinstance(out, InceptionOutput):
        out, aux = out.logits, out.aux_logits
      ce = jnp.mean(_cross_entropy(out, labels, smoothing))
      aux_ce = sum((jnp.mean(_cross_entropy(a, labels, smoothing)) for a in aux.values()),
                   jnp.zeros((), jnp.float32))
      loss = ce + aux_weight * aux_ce
      _, _, new_bs, new_rng = _split(m)
      acc = jnp.mean((jnp.argmax(out, -1) == labels).astype(jnp.float32))
      return loss, (ce, aux_ce, acc, new_bs, new_rng)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (ce, aux_ce, acc, new_bs, new_rng)), grads = grad_fn(
        state.params, state.batch_stats, state.rng_state)
    # Frozen leaves get exact zeros, so their weight gradients are dead code.
    grads = jax.tree.map(lambda g, lab: jnp.zeros_like(g) if lab == 'frozen' else g,
                         grads, labels_)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                        rng_state=new_rng, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = dict(loss=loss, ce_loss=ce, aux_loss=aux_ce, accuracy=acc,
                   grad_norm=grad_norm,
                   lr=jnp.asarray(schedule(state.step), jnp.float32), finite=finite)
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
