"""GAN method: n_critic discriminator updates, then one generator update, in one jitted step.

The train state holds both players:
  params      {"generator": ..., "discriminator": ...}
  opt_state   {"generator": ..., "discriminator": ...}, each player its own optax optimizer
  model_state {"generator": ..., "discriminator": ...}: each network's non-trainable
              collections (batch-norm running averages, spectral-norm vectors), updated
              by the train-time forward passes of that network's own update
  ema_params  the flax variables of the sampling generator: {"params": EMA of the
              generator's params, "batch_stats": batch-norm running averages of that
              EMA generator} (see `generator_update`).

A step's batch of train.batch_size real images is split into n_critic slices of
B = batch_size / n_critic (slice i: examples i, i + n_critic, ...); discriminator
update i sees slice i and B fresh fakes, and the generator update generates B fakes.
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn

import jax
import jax.numpy as jnp
import ml_collections
import optax

from genimg_jax.config import require
from genimg_jax.losses import adversarial
from genimg_jax.methods.base import (Method, TrainState, compute_dtype, default_labels, ema_update, make_optimizer,
                                     optimizer_config, split_over_devices)
from genimg_jax.models.dcgan import DCGANDiscriminator, DCGANGenerator
from genimg_jax.models.sngan import ResNetDiscriminator, ResNetGenerator
from genimg_jax.registry import Registry

# name -> build(config, image_shape, dtype) -> (generator, discriminator), checking the fields it owns.
ARCHITECTURES = Registry("model.arch", "GAN architecture")
# name -> sampler(parts, params, rng, num, labels=None) -> images [num, H, W, C] float32 in [-1, 1].
SAMPLERS = Registry("sample.sampler", "GAN sampler")
G_NORMS = ("batch", "none")
D_NORMS = ("batch", "spectral", "none")
CONDITIONINGS = ("embedding", "batch_norm")


def default_config() -> ml_collections.ConfigDict:
  """The sections the GAN method reads, with DCGAN defaults (Radford et al. 2015)."""
  gan_optimizer = optimizer_config()
  gan_optimizer.update({"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999, "grad_clip": 0.0})
  return ml_collections.ConfigDict({
      # The fields every architecture reads, then those the architectures own (ARCHITECTURES.config_fields()).
      "model": {
          "arch": "dcgan",  # dcgan | resnet (SNGAN) | your own as 'module:function'
          "z_dim": 100,
          "g_ch": 64,  # generator width (dcgan: at the last hidden level; resnet: every block)
          "d_ch": 64,  # discriminator width (dcgan: at the first level; resnet: every block)
          "g_norm": "batch",  # batch | none
          "d_norm": "batch",  # batch | spectral | none (resnet: spectral | none)
          "num_classes": 0,  # > 0: class-conditional generator and projection discriminator
          "g_conditioning": "embedding",  # embedding (appended to z) | batch_norm (conditional BN)
          "bn_momentum": 0.9,
          "dtype": "float32",  # compute dtype; parameters stay float32
          **ARCHITECTURES.config_fields(),
      },
      "gan": {
          # A built-in name or your own `module:function`; see genimg_jax.losses.adversarial.
          "loss": "non_saturating",  # non_saturating | minimax | hinge | wasserstein
          "n_critic": 1,  # discriminator updates per generator update
          "penalty": "none",  # none | gradient_penalty | r1 | r2 | module:function
          "penalty_weight": 0.0,  # R1's gamma / 2, or WGAN-GP's lambda
          "penalty_every": 1,  # lazy regularisation: every k-th discriminator update, weight * k
      },
      "g_optimizer": gan_optimizer,
      "d_optimizer": gan_optimizer.copy_and_resolve_references(),
      "ema": {"decay": 0.999},
      "sample": {"sampler": "generator"},  # one forward pass of the EMA generator, or your own 'module:function'
      "eval": {"metrics": "fid"},  # no held-out likelihood (bpd): sample quality only
  })


# ch_mult: width multipliers from the image resolution down, one per resolution level.
@ARCHITECTURES.register("dcgan", fields={"ch_mult": (1, 2, 4, 8)})
def dcgan(config, image_shape, dtype) -> tuple[nn.Module, nn.Module]:
  """DCGAN G and D (any size divisible by 2^len(model.ch_mult))."""
  m, size = config.model, config.data.image_size
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  down = 2 ** len(m.ch_mult)
  require(size % down == 0, "data.image_size",
          f"{size} is not divisible by 2^len(model.ch_mult) = {down} (the DCGAN's resolution levels)")
  return (DCGANGenerator(image_shape, m.g_ch, tuple(m.ch_mult), m.g_norm, m.num_classes, m.g_conditioning,
                         m.bn_momentum, dtype),
          DCGANDiscriminator(m.d_ch, tuple(m.ch_mult), m.d_norm, m.num_classes, m.bn_momentum, dtype))


@ARCHITECTURES.register("resnet")
def resnet(config, image_shape, dtype) -> tuple[nn.Module, nn.Module]:
  """SNGAN's ResNet G and D (powers of two >= 16; D with spectral norm or none)."""
  m, size = config.model, config.data.image_size
  require(size >= 16 and size & (size - 1) == 0, "data.image_size",
          f"the resnet GAN needs a power of two >= 16, got {size}")
  require(m.d_norm != "batch", "model.d_norm", "the resnet discriminator takes spectral or none")
  return (ResNetGenerator(image_shape, m.g_ch, m.g_norm, m.num_classes, m.g_conditioning, m.bn_momentum, dtype),
          ResNetDiscriminator(m.d_ch, m.d_norm, m.num_classes, dtype))


def _validate(config) -> None:
  m, g = config.model, config.gan
  for field in ("z_dim", "g_ch", "d_ch"):
    require(m[field] > 0, f"model.{field}", "must be > 0")
  require(m.g_norm in G_NORMS, "model.g_norm", f"must be one of {G_NORMS}")
  require(m.d_norm in D_NORMS, "model.d_norm", f"must be one of {D_NORMS}")
  require(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0: unconditional)")
  require(m.g_conditioning in CONDITIONINGS, "model.g_conditioning", f"must be one of {CONDITIONINGS}")
  require(not (m.num_classes and m.g_conditioning == "batch_norm" and m.g_norm != "batch"),
          "model.g_conditioning", "batch_norm conditioning needs model.g_norm='batch'")
  require(0.0 <= m.bn_momentum < 1.0, "model.bn_momentum", "must be in [0, 1)")
  compute_dtype(m.dtype)
  require(g.n_critic >= 1, "gan.n_critic", "must be >= 1")
  require(config.train.batch_size % g.n_critic == 0, "train.batch_size",
          f"{config.train.batch_size} is not divisible by gan.n_critic={g.n_critic} (one slice per "
          "discriminator update)")
  require(g.penalty_weight >= 0.0, "gan.penalty_weight", "must be >= 0")
  require(g.penalty_every >= 1, "gan.penalty_every", "must be >= 1")
  require(g.penalty == "none" or m.d_norm != "batch", "gan.penalty",
          "input-gradient penalties need a discriminator without batch norm (model.d_norm)")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")


def _split_params(variables) -> tuple[dict, dict]:
  """flax variables -> (params, the other collections)."""
  variables = dict(variables)
  return variables.pop("params"), variables


def _apply(module, params, state: dict, *args, **kwargs):
  """module.apply with `state`'s collections mutable -> (output, updated state)."""
  if not state:
    return module.apply({"params": params}, *args, **kwargs), state
  out, new_state = module.apply({"params": params, **state}, *args, mutable=list(state), **kwargs)
  return out, dict(new_state)


@dataclasses.dataclass(frozen=True)
class Parts:
  """The GAN's networks, optimizers, losses and settings, from a config; static under jit.

  learning rates: g_learning_rate(opt_state) -> the rate the next update applies (make_optimizer).
  loss(real_logits [B], fake_logits [B]) -> (d_loss, g_loss); penalty(discriminate, real, fake, rng)
  -> scalar, or None.
  """

  generator: nn.Module
  discriminator: nn.Module
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  g_learning_rate: Callable
  d_learning_rate: Callable
  loss: Callable
  penalty: Callable | None
  image_shape: tuple[int, int, int]
  z_dim: int
  num_classes: int
  n_critic: int
  penalty_weight: float
  penalty_every: int
  ema_decay: float


def make_parts(config: ml_collections.ConfigDict) -> Parts:
  """The Parts of a GAN config (validated on the way)."""
  _validate(config)
  m, g = config.model, config.gan
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  build = ARCHITECTURES.resolve(m.arch)
  require(callable(build), "model.arch", f"{m.arch!r} is not a function")
  generator, discriminator = build(config, image_shape, compute_dtype(m.dtype))
  loss = adversarial.LOSSES.resolve(g.loss)
  require(callable(loss), "gan.loss", f"{g.loss!r} is not a function")
  penalty = None if g.penalty == "none" else adversarial.PENALTIES.resolve(g.penalty)
  require(penalty is None or callable(penalty), "gan.penalty", f"{g.penalty!r} is not a function")
  g_tx, g_learning_rate = make_optimizer(config.g_optimizer, "g_optimizer")
  d_tx, d_learning_rate = make_optimizer(config.d_optimizer, "d_optimizer")
  return Parts(generator, discriminator, g_tx, d_tx, g_learning_rate, d_learning_rate, loss, penalty, image_shape,
               m.z_dim, m.num_classes, g.n_critic, g.penalty_weight, g.penalty_every, config.ema.decay)


def latents(parts: Parts, rng: jax.Array, num: int) -> tuple[jax.Array, jax.Array]:
  """z [num, z_dim] ~ N(0, I) float32 and labels [num] int32 uniform over the classes (zeros if
  unconditional), split over the devices like the real batch."""
  z_rng, label_rng = jax.random.split(rng)
  labels = (jax.random.randint(label_rng, (num,), 0, parts.num_classes) if parts.num_classes
            else jnp.zeros((num,), jnp.int32))
  return split_over_devices(jax.random.normal(z_rng, (num, parts.z_dim), jnp.float32)), split_over_devices(labels)


def generate(parts: Parts, params, state: dict, z: jax.Array, labels: jax.Array):
  """Train-mode generator (batch statistics) -> (images [B, H, W, C], state with updated running averages)."""
  return _apply(parts.generator, params, state, z, labels, train=True)


def discriminate(parts: Parts, params, state: dict, images: jax.Array, labels: jax.Array, *, update: bool):
  """-> (logits [B], state after this pass); update=False keeps the spectral-norm vectors."""
  return _apply(parts.discriminator, params, state, images, labels, update=update)


def init(parts: Parts, rng: jax.Array) -> TrainState:
  """Both players' parameters, optimizer states and collections; the EMA generator starts as G."""
  g_rng, d_rng = jax.random.split(rng)
  z, labels = jnp.zeros((1, parts.z_dim), jnp.float32), jnp.zeros((1,), jnp.int32)
  g_params, g_state = _split_params(parts.generator.init(g_rng, z, labels, train=False))
  d_params, d_state = _split_params(
      parts.discriminator.init(d_rng, jnp.zeros((1,) + parts.image_shape, jnp.float32), labels, update=False))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params={"generator": g_params, "discriminator": d_params},
      opt_state={"generator": parts.g_tx.init(g_params), "discriminator": parts.d_tx.init(d_params)},
      ema_params={"params": g_params, **g_state},
      model_state={"generator": g_state, "discriminator": d_state})


def _penalty_term(parts: Parts, d_params, d_state, real, fake, rng, index):
  """Weighted penalty (lazy: every penalty_every-th update, weight times k), and its raw value."""
  def value():
    disc = lambda images, labels: discriminate(parts, d_params, d_state, images, labels, update=False)[0]
    return parts.penalty(disc, real, fake, rng)

  if parts.penalty_every == 1:
    raw = value()
  else:
    raw = jax.lax.cond(index % parts.penalty_every == 0, value, lambda: jnp.zeros((), jnp.float32))
  return parts.penalty_weight * parts.penalty_every * raw, raw


def discriminator_update(parts: Parts, state: TrainState, real: dict, rng: jax.Array, index: jax.Array):
  """One optimizer step of the discriminator on real {"image": [B, H, W, C], "label": [B]} and B fresh
  fakes -> (state, metrics). `index` (int32 scalar) counts discriminator updates, for lazy penalties.
  The generator, its collections and the EMA are left alone."""
  fake_rng, penalty_rng = jax.random.split(rng)
  z, fake_labels = latents(parts, fake_rng, real["image"].shape[0])
  # The generator's running averages change only in its own update.
  fake_images, _ = generate(parts, state.params["generator"], state.model_state["generator"], z, fake_labels)
  fake = {"image": jax.lax.stop_gradient(fake_images), "label": fake_labels}

  def objective(d_params):
    d_state = state.model_state["discriminator"]
    real_logits, d_state = discriminate(parts, d_params, d_state, real["image"], real["label"], update=True)
    fake_logits, d_state = discriminate(parts, d_params, d_state, fake["image"], fake["label"], update=True)
    d_loss, _ = parts.loss(real_logits, fake_logits)
    aux = {"d_loss": d_loss, "d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
    if parts.penalty is None:
      return d_loss, (d_state, aux)
    weighted, aux["penalty"] = _penalty_term(parts, d_params, d_state, real, fake, penalty_rng, index)
    return d_loss + weighted, (d_state, aux)

  d_params, d_opt = state.params["discriminator"], state.opt_state["discriminator"]
  (_, (d_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(d_params)
  updates, new_opt = parts.d_tx.update(grads, d_opt, d_params)
  new_state = state.replace(
      params=dict(state.params, discriminator=optax.apply_updates(d_params, updates)),
      opt_state=dict(state.opt_state, discriminator=new_opt),
      model_state=dict(state.model_state, discriminator=d_state))
  return new_state, dict(metrics, d_grad_norm=optax.tree.norm(grads), d_learning_rate=parts.d_learning_rate(d_opt))


def generator_update(parts: Parts, state: TrainState, real: dict, rng: jax.Array):
  """One optimizer step of the generator on B fresh fakes, then the EMA generator -> (state, metrics).
  `real` (as for discriminator_update) reaches relativistic losses; the discriminator is left alone."""
  z, labels = latents(parts, rng, real["image"].shape[0])
  d_params, d_state = state.params["discriminator"], state.model_state["discriminator"]

  def objective(g_params):
    fake, g_state = generate(parts, g_params, state.model_state["generator"], z, labels)
    fake_logits, _ = discriminate(parts, d_params, d_state, fake, labels, update=False)
    # Unused by non-relativistic losses, and then compiled away.
    real_logits, _ = discriminate(parts, d_params, d_state, real["image"], real["label"], update=False)
    _, g_loss = parts.loss(jax.lax.stop_gradient(real_logits), fake_logits)
    return g_loss, (g_state, jnp.mean(fake_logits))

  g_params, g_opt = state.params["generator"], state.opt_state["generator"]
  (g_loss, (g_state, g_fake)), grads = jax.value_and_grad(objective, has_aux=True)(g_params)
  updates, new_opt = parts.g_tx.update(grads, g_opt, g_params)
  new_g_params = optax.apply_updates(g_params, updates)
  # The EMA generator's own batch statistics, from a train-mode pass on this step's latents,
  # so that sampling normalises with statistics of the weights it samples with.
  ema_params, ema_stats = _split_params(state.ema_params)
  ema_params = ema_update(ema_params, new_g_params, parts.ema_decay, state.step)
  _, ema_stats = generate(parts, ema_params, ema_stats, z, labels)
  new_state = state.replace(
      params=dict(state.params, generator=new_g_params),
      opt_state=dict(state.opt_state, generator=new_opt),
      model_state=dict(state.model_state, generator=g_state),
      ema_params={"params": ema_params, **ema_stats})
  return new_state, {"g_loss": g_loss, "g_fake": g_fake, "g_grad_norm": optax.tree.norm(grads),
                     "g_learning_rate": parts.g_learning_rate(g_opt)}


def train_step(parts: Parts, state: TrainState, batch: dict, rng: jax.Array):
  """n_critic discriminator updates, then one generator update; batch["image"] is [n_critic * B, H, W, C]."""
  n_critic = parts.n_critic
  # Slice i holds examples i, i + n_critic, ...: with the batch sharded on its leading
  # axis, every device keeps its own share of each slice.
  slices = [jax.tree.map(lambda x: x[i::n_critic], {"image": batch["image"], "label": batch["label"]})
            for i in range(n_critic)]
  d_rng, g_rng = jax.random.split(rng)
  d_metrics = []
  # A Python loop, not lax.scan: XLA's CPU backend runs convolution gradients inside
  # loops about 100x slower.
  for i, real in enumerate(slices):
    state, metrics = discriminator_update(parts, state, real, jax.random.fold_in(d_rng, i), state.step * n_critic + i)
    d_metrics.append(metrics)
  state, g_metrics = generator_update(parts, state, slices[-1], g_rng)
  d_metrics = jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *d_metrics)  # over the n_critic updates
  metrics = dict(d_metrics, **g_metrics, loss=d_metrics["d_loss"])
  return state.replace(step=state.step + 1), metrics


@SAMPLERS.register("generator")
def sample(parts: Parts, params, rng: jax.Array, num: int, labels: jax.Array | None = None) -> jax.Array:
  """The EMA generator's images [num, H, W, C] float32 in [-1, 1]; params are its flax variables.
  labels [num] int32 (default: class i % num_classes for sample i; zeros when unconditional)."""
  z, _ = latents(parts, rng, num)
  if labels is None or not parts.num_classes:
    labels = default_labels(num, parts.num_classes)
  images = parts.generator.apply(params, z, labels, train=False)
  return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the GAN method from a config (validated on the way)."""
  parts = make_parts(config)
  sampler = SAMPLERS.resolve(config.sample.sampler)
  require(callable(sampler), "sample.sampler", f"{config.sample.sampler!r} is not a function")
  return Method(init=functools.partial(init, parts), train_step=functools.partial(train_step, parts),
                sample=functools.partial(sampler, parts), eval_step=None, image_shape=parts.image_shape,
                num_classes=parts.num_classes, networks=("generator", "discriminator"))
