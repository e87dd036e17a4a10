"""Autoencoder method: LDM's KL-regularised autoencoder (Rombach et al. 2022), the first stage of latent generation.

Objective per image, divided by its H W C dimensions (LDM's per-image sums, so `kl_weight` means what
LDM's does; Adam does not see the constant factor):

  l1_weight * sum |x - D(z)| + ssim_weight * H W C (1 - SSIM(x, D(z))) + kl_weight * KL(q(z|x) || N(0, I))
  + disc_weight * lambda * [step >= disc_start] * G

with z = mean + sigma * eps drawn from the encoder's posterior, SSIM standing in for LDM's LPIPS term,
G the generator side of an adversarial loss (losses/adversarial.py) against a PatchGAN discriminator,
and lambda LDM's adaptive weight ||grad rec|| / ||grad G|| on the decoder's last layer, clipped to
[0, 1e4]. With autoencoder.disc_weight = 0 (the default) there is no discriminator.

The train state holds
  params      {"autoencoder": {"encoder", "decoder"}} (+ "discriminator" with the adversarial term)
  opt_state   the same keys, each network its own optax optimizer
  ema_params  the EMA of params["autoencoder"]: what `encode`, `decode`, eval and grids use.

`sample` decodes N(0, I) latents; the autoencoder is not a generator (its latents are not N(0, I)
with a small kl_weight), so those pictures are a sanity check only: judge it by `genimg eval`
(PSNR, SSIM, rFID). A second stage (diffusion) is what samples latents.

Discrete variant (a tokenizer), autoencoder.quantizer = "fsq" | "vq" (models/quantizers.py): the KL term is
replaced by the quantizer, FSQ with no auxiliary loss, VQ (l2-normalised codes) with
codebook_weight * (||sg(z) - e||^2 + commitment_beta ||z - sg(e)||^2), means over latent positions. The
batch's codebook usage (fraction of the codes that occur) and perplexity are logged (and held-out by eval).
`tokenize(params, images) -> tokens [B, h, w] int32`, `detokenize(params, tokens) -> images`; `sample`
decodes uniformly drawn tokens (a sanity picture; MaskGIT, methods/maskgit.py, is what samples tokens).
"""

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from genimg_jax.config import require
from genimg_jax.losses import adversarial
from genimg_jax.losses import reconstruction as rec
from genimg_jax.methods.base import (Method, TrainState, compute_dtype, ema_update, make_optimizer,
                                     optimizer_config)
from genimg_jax.models import autoencoder as model_lib
from genimg_jax.models import quantizers
from genimg_jax.models.patch_discriminator import PatchDiscriminator

PENALTIES = ("none", "r1")
QUANTIZERS = ("kl", "fsq", "vq")


def default_config() -> ml_collections.ConfigDict:
  """The sections the autoencoder method reads, with LDM's KL-f8 settings where they apply."""
  ae_optimizer = optimizer_config()
  ae_optimizer.update({"learning_rate": 4.5e-6 * 64, "b1": 0.5, "b2": 0.9, "grad_clip": 0.0})  # LDM: Adam(0.5, 0.9)
  return ml_collections.ConfigDict({
      "model": {
          "ch": 128, "ch_mult": (1, 2, 4, 4), "num_res_blocks": 2, "norm_groups": 32,
          "z_channels": 4,  # latent channels; latents are [H/f, W/f, z_channels], f = 2^(len(ch_mult) - 1)
          "mid_attention": True,  # self-attention in the middle blocks (lowest resolution)
          "dtype": "float32",  # compute dtype; parameters stay float32
      },
      "autoencoder": {
          "l1_weight": 1.0,
          "ssim_weight": 1.0,  # LDM's perceptual (LPIPS) term is replaced by 1 - SSIM
          "kl_weight": 1e-6,  # on the per-image summed KL, against per-image summed pixel losses (LDM)
          "disc_weight": 0.0,  # weight of the adversarial term (LDM: 0.5); 0: no discriminator
          "disc_start": 0,  # steps before the adversarial term (and the discriminator's training) starts
          "disc_loss": "hinge",  # a name in genimg_jax.losses.adversarial.LOSSES, or your own 'module:function'
          "disc_ch": 64,  # PatchGAN width at its first layer
          "disc_layers": 3,  # PatchGAN stride-2 layers: one logit per (2^layers)-pixel patch
          "penalty": "none",  # none | r1 (on real images)
          "penalty_weight": 0.0,  # R1's gamma / 2
          "max_adaptive_weight": 1e4,
          "quantizer": "kl",  # kl (continuous, LDM) | fsq | vq: a discrete tokenizer
          "levels": (8, 5, 5, 5),  # fsq: levels per code channel (the encoder outputs len(levels) channels)
          "codebook_size": 1024,  # vq: codebook entries (each of model.z_channels dimensions, l2-normalised)
          "codebook_weight": 1.0,  # vq: weight of the codebook + commitment loss
          "commitment_beta": 0.25,  # vq: beta of the commitment term
      },
      "optimizer": ae_optimizer,
      "d_optimizer": ae_optimizer.copy_and_resolve_references(),
      "ema": {"decay": 0.999},
      "eval": {"metrics": "rfid,bpd"},  # rFID of held-out reconstructions; bpd: the eval_step metrics
  })


def _validate(config) -> None:
  m, a = config.model, config.autoencoder
  require(m.ch > 0, "model.ch", "must be > 0")
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  require(m.num_res_blocks > 0, "model.num_res_blocks", "must be > 0")
  require(m.norm_groups > 0 and all((m.ch * k) % m.norm_groups == 0 for k in m.ch_mult), "model.norm_groups",
          f"must divide every level's width (ch * ch_mult = {[m.ch * k for k in m.ch_mult]})")
  require(m.z_channels > 0, "model.z_channels", "must be > 0")
  compute_dtype(m.dtype)
  size, factor = config.data.image_size, model_lib.downsampling_factor(m.ch_mult)
  require(size % factor == 0, "data.image_size",
          f"{size} is not divisible by the encoder's downsampling factor {factor} (2^(len(model.ch_mult) - 1))")
  require(size >= rec.SSIM_WINDOW, "data.image_size",
          f"{size} is smaller than SSIM's {rec.SSIM_WINDOW}x{rec.SSIM_WINDOW} window")
  for field in ("l1_weight", "ssim_weight", "kl_weight", "disc_weight", "disc_start", "penalty_weight"):
    require(a[field] >= 0, f"autoencoder.{field}", "must be >= 0")
  require(a.max_adaptive_weight > 0, "autoencoder.max_adaptive_weight", "must be > 0")
  quantizer = quantizer_of(a)
  require(quantizer in QUANTIZERS, "autoencoder.quantizer", f"must be one of {QUANTIZERS}")
  if quantizer == "fsq":
    require(len(a.levels) > 0 and all(int(level) >= 2 for level in a.levels), "autoencoder.levels",
            "must be a non-empty tuple of ints >= 2")
    require(math.prod(a.levels) < 2**31, "autoencoder.levels", "their product (the token count) must be < 2^31")
  if quantizer == "vq":
    require(a.codebook_size >= 2, "autoencoder.codebook_size", "must be >= 2")
    require(a.codebook_weight >= 0 and a.commitment_beta >= 0, "autoencoder.commitment_beta",
            "codebook_weight and commitment_beta must be >= 0")
  require(a.penalty in PENALTIES, "autoencoder.penalty", f"must be one of {PENALTIES}")
  if a.disc_weight:
    require(a.disc_ch > 0, "autoencoder.disc_ch", "must be > 0")
    require(a.disc_layers >= 1 and size % 2**a.disc_layers == 0, "autoencoder.disc_layers",
            f"must be >= 1 with data.image_size={size} divisible by 2^disc_layers")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")


def quantizer_of(settings: ml_collections.ConfigDict) -> str:
  """config.autoencoder.quantizer; "kl" for runs saved before the field existed."""
  return settings.get("quantizer", "kl")


@dataclasses.dataclass(frozen=True)
class Parts:
  """The networks, optimizers and settings of an autoencoder config; static under jit.

  discriminator, d_tx, d_learning_rate, disc_loss, penalty: None without the adversarial term.
  """

  model: model_lib.Autoencoder
  tx: optax.GradientTransformation
  learning_rate: Callable
  discriminator: nn.Module | None
  d_tx: optax.GradientTransformation | None
  d_learning_rate: Callable | None
  disc_loss: Callable | None
  penalty: Callable | None
  settings: ml_collections.ConfigDict  # config.autoencoder
  image_shape: tuple[int, int, int]
  latent_shape: tuple[int, int, int]
  ema_decay: float
  quantizer: str = "kl"
  num_tokens: int = 0  # fsq, vq: the token count; 0 for kl

  @property
  def num_dims(self) -> int:
    return math.prod(self.image_shape)

  @property
  def discrete(self) -> bool:
    return self.quantizer != "kl"

  @property
  def token_shape(self) -> tuple[int, int]:
    return self.latent_shape[:2]

  def latents(self, params, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] -> the deterministic latents [B, h, w, c] float32: the posterior mean (kl) or the
    quantized codes (fsq, vq)."""
    if self.discrete:
      return self.quantize(params, images)[0]
    return self.encode(params, images)[0]

  def quantize(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """fsq, vq: images [B, H, W, C] -> (codes [B, h, w, d] float32 with the straight-through gradient, tokens
    [B, h, w] int32, {"codebook_loss", "commitment_loss"} for vq)."""
    z = self.model.apply({"params": params}, images, method=model_lib.Autoencoder.encode)
    return self.model.apply({"params": params}, z, method=model_lib.Autoencoder.quantize)

  def tokenize(self, params, images: jax.Array) -> jax.Array:
    """fsq, vq: images [B, H, W, C] in [-1, 1] -> tokens [B, h, w] int32 in [0, num_tokens)."""
    return self.quantize(params, images)[1]

  def detokenize(self, params, tokens: jax.Array) -> jax.Array:
    """fsq, vq: tokens [B, h, w] int32 -> images [B, H, W, C] float32 clipped to [-1, 1]."""
    codes = self.model.apply({"params": params}, tokens, method=model_lib.Autoencoder.codes)
    return jnp.clip(self.decode(params, codes), -1.0, 1.0)

  def encode(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, C] in [-1, 1] -> (mean, log_var) of q(z|x), each [B, H/f, W/f, z_channels] float32.
    params: the autoencoder's ({"encoder", "decoder"}, e.g. the EMA params)."""
    return self.model.apply({"params": params}, images, method=model_lib.Autoencoder.encode)

  def decode(self, params, latents: jax.Array) -> jax.Array:
    """latents [B, H/f, W/f, z_channels] -> images [B, H, W, C] float32 (not clipped)."""
    return self.model.apply({"params": params}, latents, method=model_lib.Autoencoder.decode)

  def reconstruct(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, C] -> (`latents` decoded, clipped to [-1, 1]; `latents`)."""
    z = self.latents(params, images)
    return jnp.clip(self.decode(params, z), -1.0, 1.0), z

  def discriminate(self, d_params, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] -> patch logits [B, h, w] float32."""
    return self.discriminator.apply({"params": d_params}, images)


def build(config: ml_collections.ConfigDict) -> Parts:
  """The Parts of an autoencoder config (validated on the way)."""
  _validate(config)
  m, a = config.model, config.autoencoder
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  factor = model_lib.downsampling_factor(m.ch_mult)
  dtype = compute_dtype(m.dtype)
  tx, learning_rate = make_optimizer(config.optimizer)
  discriminator = d_tx = d_learning_rate = disc_loss = penalty = None
  if a.disc_weight:
    discriminator = PatchDiscriminator(a.disc_ch, a.disc_layers, dtype)
    d_tx, d_learning_rate = make_optimizer(config.d_optimizer, "d_optimizer")
    disc_loss = adversarial.LOSSES.resolve(a.disc_loss, "autoencoder.disc_loss")
    require(callable(disc_loss), "autoencoder.disc_loss", f"{a.disc_loss!r} is not a function")
    penalty = None if a.penalty == "none" else adversarial.PENALTIES[a.penalty]
  quantizer = quantizer_of(a)
  channels = model_lib.code_channels(quantizer, m.z_channels, a.get("levels", ()))
  num_tokens = {"kl": 0, "fsq": math.prod(a.get("levels", ())), "vq": a.get("codebook_size", 0)}[quantizer]
  return Parts(model=model_lib.build(m, image_shape[-1], dtype, a), tx=tx, learning_rate=learning_rate,
               discriminator=discriminator, d_tx=d_tx, d_learning_rate=d_learning_rate, disc_loss=disc_loss,
               penalty=penalty, settings=a, image_shape=image_shape,
               latent_shape=(image_shape[0] // factor, image_shape[1] // factor, channels),
               ema_decay=config.ema.decay, quantizer=quantizer, num_tokens=num_tokens)


def init(parts: Parts, rng: jax.Array) -> TrainState:
  """Step 0: the networks' parameters and optimizer states; the EMA equals the autoencoder."""
  ae_rng, d_rng = jax.random.split(rng)
  x = jnp.zeros((1,) + parts.image_shape, jnp.float32)
  params = {"autoencoder": parts.model.init(ae_rng, x, jnp.zeros((1,) + parts.latent_shape))["params"]}
  opt_state = {"autoencoder": parts.tx.init(params["autoencoder"])}
  if parts.discriminator is not None:
    params["discriminator"] = parts.discriminator.init(d_rng, x)["params"]
    opt_state["discriminator"] = parts.d_tx.init(params["discriminator"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    ema_params=params["autoencoder"])


def _decoder_last_layer(grads):
  """The gradient of the decoder's last conv kernel, where LDM measures the adaptive weight."""
  return grads["decoder"]["conv_out"]["kernel"]


def _quantizer_terms(parts: Parts, ae_params, x: jax.Array):
  """fsq, vq: (the quantized codes [B, h, w, d], the VQ loss (fsq: 0), the quantizer's metrics)."""
  a = parts.settings
  codes, tokens, terms = parts.quantize(ae_params, x)
  usage, perplexity = quantizers.usage_and_perplexity(tokens, parts.num_tokens)
  metrics = dict(terms, codebook_usage=usage, perplexity=perplexity)
  if parts.quantizer == "fsq":
    return codes, jnp.zeros((), jnp.float32), metrics
  return codes, a.codebook_weight * (terms["codebook_loss"] + a.commitment_beta * terms["commitment_loss"]), metrics


def _losses(parts: Parts, ae_params, x: jax.Array, noise: jax.Array):
  """The pixel and bottleneck terms of one batch -> (reconstruction + weighted KL per dimension (kl) or + the VQ
  loss (vq; fsq: none), aux)."""
  a = parts.settings
  if parts.discrete:
    codes, regulariser, metrics = _quantizer_terms(parts, ae_params, x)
    recon = parts.decode(ae_params, codes)
  else:
    mean, log_var = parts.encode(ae_params, x)
    recon = parts.decode(ae_params, mean + jnp.exp(0.5 * log_var) * noise)
  l1, ssim = rec.l1(x, recon), rec.ssim(x, recon)
  pixel = jnp.mean(a.l1_weight * l1 + a.ssim_weight * (1.0 - ssim))
  if not parts.discrete:
    kl = rec.kl_per_image(mean, log_var)
    regulariser, metrics = a.kl_weight * jnp.mean(kl) / parts.num_dims, {"kl_nats": jnp.mean(kl)}
  metrics = dict(metrics, rec_loss=pixel, l1=jnp.mean(l1), ssim=jnp.mean(ssim), psnr_db=jnp.mean(rec.psnr(x, recon)))
  return pixel + regulariser, (recon, metrics)


def _adversarial_gradients(parts: Parts, state: TrainState, x: jax.Array, noise: jax.Array, disc_factor):
  """The autoencoder's loss, gradient and metrics with the adversarial term and its adaptive weight."""
  d_params = state.params["discriminator"]

  def terms(ae_params):
    main, (recon, metrics) = _losses(parts, ae_params, x, noise)
    real_logits = jax.lax.stop_gradient(parts.discriminate(d_params, x))  # Relativistic losses only.
    _, g_loss = parts.disc_loss(real_logits, parts.discriminate(d_params, recon))
    return (main, g_loss), (recon, metrics)

  (main, g_loss), vjp, (recon, metrics) = jax.vjp(terms, state.params["autoencoder"], has_aux=True)
  one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
  (main_grads,), (adv_grads,) = vjp((one, zero)), vjp((zero, one))
  weight = parts.settings.disc_weight * disc_factor * rec.adaptive_weight(
      _decoder_last_layer(main_grads), _decoder_last_layer(adv_grads), parts.settings.max_adaptive_weight)
  grads = jax.tree.map(lambda m, g: m + weight * g, main_grads, adv_grads)
  return main + weight * g_loss, grads, recon, dict(metrics, g_loss=g_loss, adaptive_weight=weight)


def _discriminator_update(parts: Parts, state: TrainState, x: jax.Array, recon: jax.Array, disc_factor,
                          rng: jax.Array):
  """One optimizer step of the discriminator on real x and the (constant) reconstructions -> (params, opt, metrics).
  Before disc_start (disc_factor 0) its loss and gradient are zero."""
  fake = jax.lax.stop_gradient(recon)

  def objective(d_params):
    real_logits, fake_logits = parts.discriminate(d_params, x), parts.discriminate(d_params, fake)
    d_loss, _ = parts.disc_loss(real_logits, fake_logits)
    aux = {"d_loss": d_loss, "d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
    total = d_loss
    if parts.penalty is not None:
      labels = jnp.zeros((x.shape[0],), jnp.int32)
      aux["penalty"] = parts.penalty(lambda images, _: parts.discriminate(d_params, images),
                                     {"image": x, "label": labels}, {"image": fake, "label": labels}, rng)
      total = total + parts.settings.penalty_weight * aux["penalty"]
    return disc_factor * total, aux

  d_params, d_opt = state.params["discriminator"], state.opt_state["discriminator"]
  (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(d_params)
  updates, new_opt = parts.d_tx.update(grads, d_opt, d_params)
  metrics = dict(metrics, d_grad_norm=optax.tree.norm(grads), d_learning_rate=parts.d_learning_rate(d_opt))
  return optax.apply_updates(d_params, updates), new_opt, metrics


def train_step(parts: Parts, state: TrainState, batch: dict, rng: jax.Array):
  """One autoencoder update (then its EMA) and, with the adversarial term, one discriminator update on the
  same batch; batch["image"] is [B, H, W, C] in [-1, 1]."""
  x = batch["image"]
  noise_rng, penalty_rng = jax.random.split(rng)
  noise = jax.random.normal(noise_rng, (x.shape[0],) + parts.latent_shape, jnp.float32)
  ae_params, ae_opt = state.params["autoencoder"], state.opt_state["autoencoder"]
  if parts.discriminator is None:
    (loss, (_, metrics)), grads = jax.value_and_grad(
        lambda p: _losses(parts, p, x, noise), has_aux=True)(ae_params)
    new_params, new_opt = dict(state.params), dict(state.opt_state)
  else:
    disc_factor = (state.step >= parts.settings.disc_start).astype(jnp.float32)
    loss, grads, recon, metrics = _adversarial_gradients(parts, state, x, noise, disc_factor)
    d_params, d_opt, d_metrics = _discriminator_update(parts, state, x, recon, disc_factor, penalty_rng)
    new_params, new_opt = dict(state.params, discriminator=d_params), dict(state.opt_state, discriminator=d_opt)
    metrics = dict(metrics, **d_metrics, disc_factor=disc_factor)
  updates, new_opt["autoencoder"] = parts.tx.update(grads, ae_opt, ae_params)
  new_params["autoencoder"] = optax.apply_updates(ae_params, updates)
  new_state = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt,
                            ema_params=ema_update(state.ema_params, new_params["autoencoder"], parts.ema_decay,
                                                  state.step))
  return new_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                         learning_rate=parts.learning_rate(ae_opt))


def eval_step(parts: Parts, params, batch: dict, rng: jax.Array):
  """Held-out metrics of the deterministic reconstructions (clipped to [-1, 1]), averaged over the batch:
  psnr_db (of [0, 1]-scaled images), ssim, l1 (on [-1, 1]) and kl_nats (per image; kl) or codebook_usage and
  perplexity (of the batch's tokens; fsq, vq)."""
  del rng  # Deterministic: the posterior mean or the quantized codes.
  x = batch["image"]
  if parts.discrete:
    codes, tokens, _ = parts.quantize(params, x)
    usage, perplexity = quantizers.usage_and_perplexity(tokens, parts.num_tokens)
    extra, z = {"codebook_usage": usage, "perplexity": perplexity}, codes
  else:
    mean, log_var = parts.encode(params, x)
    extra, z = {"kl_nats": jnp.mean(rec.kl_per_image(mean, log_var))}, mean
  recon = jnp.clip(parts.decode(params, z), -1.0, 1.0)
  return dict(extra, psnr_db=jnp.mean(rec.psnr(x, recon)), ssim=jnp.mean(rec.ssim(x, recon)),
              l1=jnp.mean(rec.l1(x, recon)))


def sample(parts: Parts, params, rng: jax.Array, num: int, labels=None) -> jax.Array:
  """N(0, I) latents (kl) or uniform tokens (fsq, vq) decoded, [num, H, W, C] in [-1, 1]: a sanity picture,
  not a generative model's samples."""
  del labels  # Unconditional.
  if parts.discrete:
    return parts.detokenize(params, jax.random.randint(rng, (num,) + parts.token_shape, 0, parts.num_tokens))
  z = jax.random.normal(rng, (num,) + parts.latent_shape, jnp.float32)
  return jnp.clip(parts.decode(params, z), -1.0, 1.0)


def image_grids(parts: Parts, params, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
  """{"reconstructions": 2m^2 held-out images and their reconstructions in alternating rows of 2m},
  m = floor(sqrt(B / 2)) (at least 1): [4m^2, H, W, C]."""
  del rng
  x = batch["image"]
  m = max(1, math.isqrt(x.shape[0] // 2))
  originals = x[jnp.arange(2 * m * m) % x.shape[0]]
  recon, _ = parts.reconstruct(params, originals)
  rows = jnp.stack([originals.reshape((m, 2 * m) + x.shape[1:]), recon.reshape((m, 2 * m) + x.shape[1:])], axis=1)
  return {"reconstructions": rows.reshape((4 * m * m,) + x.shape[1:])}


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the autoencoder method from a config (validated on the way)."""
  parts = build(config)
  bind = lambda fn: functools.partial(fn, parts)
  return Method(init=bind(init), train_step=bind(train_step), sample=bind(sample), eval_step=bind(eval_step),
                image_shape=parts.image_shape, image_grids=bind(image_grids), reconstruct=parts.reconstruct,
                networks=("autoencoder", "discriminator") if parts.discriminator is not None else ())
