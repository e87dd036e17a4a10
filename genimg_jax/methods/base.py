"""The method interface and the pieces every family shares: train state, optimizer, EMA."""

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from genimg_jax.config import require

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; the whole of it is checkpointed.

  step: int32 scalar, the number of updates applied so far.
  params: trainable parameters (float32). opt_state: the optax state.
  ema_params: exponential moving average of params, used for sampling and eval.
  model_state: the non-trainable collections a method keeps (batch-norm statistics,
    spectral-norm power-iteration vectors); empty for methods without any.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ema_params: PyTree
  model_state: PyTree = flax.struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Method:
  """A model family as pure functions; the trainer knows nothing else about it.

  init(rng) -> TrainState.
  train_step(state, batch, rng) -> (state, metrics of scalars); batch["image"] is
    [B, H, W, C] float32 in [-1, 1].
  sample(params, rng, num, labels=None) -> [num, H, W, C] float32 images in [-1, 1]; `num`
    static; labels [num] int32 in [0, num_classes) for a class-conditional method (None:
    class i % num_classes for image i), ignored by an unconditional one.
  eval_step(params, batch, rng) -> metrics of scalars averaged over the batch, or None.
  image_shape: (H, W, C) of the images it trains on and samples.
  image_grids(params, batch, rng) -> {name: [N, H, W, C] float32 in [-1, 1]}, or None:
    extra pictures of a fixed held-out batch (e.g. reconstructions), written next to
    the sample grids.
  preview_sample: like `sample`, a cheaper sampler for the grids written while training
    (e.g. DDIM-50 for a DDPM); None: `sample`.
  num_classes: > 0 for a class-conditional method (it samples the classes it is given).
  sample_nfe: network evaluations `sample` makes per image (reported with its samples).
  count_network_passes() -> the network passes `sample` makes per image, more than sample_nfe where
    classifier-free guidance evaluates the conditional and the unconditional model (it may run the
    sampler, so it is called only when reported: `sample_network_passes`); None: sample_nfe.
  networks: the keys of `params` that are separately parameterised networks (a GAN's
    generator and discriminator); empty when `params` is one network.
  reconstruct(params, images [B, H, W, C]) -> (reconstructions [B, H, W, C] float32 in [-1, 1],
    latents [B, ...] float32), or None: an autoencoder's deterministic round trip, for rFID and the
    latents' statistics (`genimg eval --metrics rfid`).
  train_data(source, data, *, seed, local_batch_size, process_index, process_count, start_batch) -> the
    training stream in place of data.pipeline.train_dataset's (same arguments and order), or None: that one.
    A latent method's: the cached latents of the split (methods/latent.py).
  """

  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
  sample: Callable[..., jax.Array]
  eval_step: Callable[[PyTree, Batch, jax.Array], Metrics] | None
  image_shape: tuple[int, int, int]
  image_grids: Callable[[PyTree, Batch, jax.Array], dict[str, jax.Array]] | None = None
  preview_sample: Callable[..., jax.Array] | None = None
  num_classes: int = 0
  sample_nfe: int = 1
  count_network_passes: Callable[[], int] | None = None
  networks: tuple[str, ...] = ()
  reconstruct: Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]] | None = None
  train_data: Callable[..., Any] | None = None

  @functools.cached_property
  def sample_network_passes(self) -> int:
    """Network passes `sample` makes per image (count_network_passes, counted on first use)."""
    return self.count_network_passes() if self.count_network_passes else self.sample_nfe


def default_labels(num: int, num_classes: int) -> jax.Array:
  """The classes `Method.sample` draws when given none: [num] int32, class i % num_classes for image i
  (zeros when num_classes is 0)."""
  return jnp.arange(num, dtype=jnp.int32) % max(num_classes, 1)


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str = "model.dtype"):
  """The jnp dtype a model computes in (its parameters stay float32); ConfigError naming `field`
  for a name other than float32 or bfloat16."""
  require(name in COMPUTE_DTYPES, field, f"must be one of {sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def optimizer_config() -> ml_collections.ConfigDict:
  """Defaults of an `optimizer` section: Adam with linear warm-up and global-norm clipping."""
  return ml_collections.ConfigDict({
      "learning_rate": 2e-4,
      "warmup_steps": 0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "weight_decay": 0.0,
      "grad_clip": 1.0,  # 0: no clipping
  })


def make_optimizer(opt: ml_collections.ConfigDict, field: str = "optimizer"):
  """(optax transformation, learning_rate(opt_state) -> the rate its next update applies).

  The schedule counts the optimizer's own updates, so it pauses while non-finite
  updates are skipped (the optimizer state is left unchanged then).
  """
  require(opt.learning_rate > 0, f"{field}.learning_rate", "must be > 0")
  require(opt.warmup_steps >= 0, f"{field}.warmup_steps", "must be >= 0")
  require(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, f"{field}.b1", "b1 and b2 must be in [0, 1)")
  require(opt.grad_clip >= 0, f"{field}.grad_clip", "must be >= 0")
  if opt.warmup_steps:
    schedule = optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
  else:
    schedule = optax.constant_schedule(opt.learning_rate)
  adam = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
  tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), adam) if opt.grad_clip else adam

  def learning_rate(opt_state) -> jax.Array:
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    (counter,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(x)]
    return jnp.asarray(schedule(counter.count), jnp.float32)

  return tx, learning_rate


def initial_state(params: PyTree, tx) -> TrainState:
  """Step 0 of a one-network method: `params` (float32), tx's fresh state, the EMA equal to params."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=params)


def loss_train_step(loss_fn, tx, learning_rate, ema_decay: float, *, with_step: bool = False):
  """train_step(state, batch, rng) -> (state, metrics) of a method trained on one pure loss
  loss_fn(params, batch, rng) -> (scalar, metrics), or loss_fn(params, batch, rng, step) with the updates
  applied so far (int32 scalar) when with_step: its gradient, then `gradient_step`."""
  def train_step(state: TrainState, batch, rng: jax.Array):
    args = (state.params, batch, rng) + ((state.step,) if with_step else ())
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(*args)
    return gradient_step(state, grads, dict(metrics, loss=loss), tx, learning_rate, ema_decay)

  return train_step


def gradient_step(state: TrainState, grads: PyTree, metrics: Metrics, tx, learning_rate,
                  ema_decay: float) -> tuple[TrainState, Metrics]:
  """One `tx` update of state.params by `grads` (a pytree like params, float32), then the EMA.

  Returns the state one step on and `metrics` (scalars) with `grad_norm` and
  `learning_rate` (the rate this update applied; `learning_rate` is the second
  value `make_optimizer` returns) added.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema_update(state.ema_params, params, ema_decay, state.step))
  return new_state, dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=learning_rate(state.opt_state))


def ema_update(ema: PyTree, params: PyTree, decay: float, step: jax.Array) -> PyTree:
  """ema <- d * ema + (1 - d) * params with d = min(decay, (1 + step) / (10 + step)).

  The warm-up term lets the average forget the random initialisation early on;
  after a few thousand steps d equals `decay`.
  """
  stepf = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + stepf) / (10.0 + stepf))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def split_over_devices(x: jax.Array) -> jax.Array:
  """x [N, ...] split on its leading axis over every device, as a batch is, when traced on a
  mesh (the trainer traces its steps and samplers on theirs) and N divides the device count;
  otherwise x unchanged. Values are unchanged either way.

  For arrays a step makes itself (a GAN's latents): without it XLA may compute them, and
  everything downstream of them, whole on every device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or x.shape[0] % mesh.size:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(mesh.axis_names))
