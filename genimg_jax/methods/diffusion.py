"""Diffusion (DDPM-family) method: denoising loss, EMA, sampling by a registered sampler.

The denoiser is a registered architecture (`model.arch`): a function
build(config, image_shape, dtype) -> flax module applied as
module.apply(variables, x_t [B, H, W, C], t [B] int32, train=...), which checks its own
config fields. A new one is one function decorated with `@DENOISERS.register(name)`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import diffusion as dl
from genimg_jax.losses import likelihoods, noise
from genimg_jax.methods.base import (Method, compute_dtype, initial_state, loss_train_step, make_optimizer,
                                     optimizer_config)
from genimg_jax.methods.diffusion_samplers import SAMPLERS
from genimg_jax.models.unet import UNet
from genimg_jax.registry import Registry, lookup

DENOISERS = Registry("model.arch", "denoiser architecture")


@DENOISERS.register("unet")
def unet(config: ml_collections.ConfigDict, image_shape, dtype) -> nn.Module:
  """The DDPM UNet (Ho et al. 2020): model.ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
  num_heads, norm_groups."""
  m = config.model
  require(m.ch > 0, "model.ch", "must be > 0")
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  require(m.num_res_blocks > 0, "model.num_res_blocks", "must be > 0")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  require(all((m.ch * k) % m.norm_groups == 0 for k in m.ch_mult), "model.norm_groups",
          f"must divide every level's width (ch * ch_mult = {[m.ch * k for k in m.ch_mult]})")
  down = 2 ** (len(m.ch_mult) - 1)
  require(image_shape[0] % down == 0, "data.image_size",
          f"{image_shape[0]} is not divisible by the UNet's downsampling factor {down}")
  return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, out_ch=image_shape[-1],
              num_heads=m.num_heads, norm_groups=m.norm_groups, dtype=dtype)


def default_config() -> ml_collections.ConfigDict:
  """The sections the diffusion method reads, with DDPM defaults."""
  return ml_collections.ConfigDict({
      "model": {
          "arch": "unet",  # a name in DENOISERS
          "ch": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,),
          "dropout": 0.1, "num_heads": 1, "norm_groups": 32,
          "dtype": "float32",  # compute dtype; parameters stay float32
      },
      "diffusion": {
          "num_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "prediction": "eps",  # what the network outputs: eps, v or x0
      },
      # A built-in loss name or your own pure function as 'module:function'.
      "loss": {"name": "simple"},
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.9999},
      "sample": {
          "sampler": "ddpm",  # a name in diffusion_samplers.SAMPLERS: ddpm | ddim
          "steps": 1000,  # DDIM steps (DDPM always takes num_timesteps)
          "eta": 0.0,  # DDIM noise scale
          "ddpm_variance": "beta_tilde",  # beta_tilde (fixedsmall) | beta (fixedlarge)
          "clip_x0": True,
          # The grids written while training (train.sample_every): "" uses `sampler` and `steps`.
          "preview_sampler": "",  # "" or a name in SAMPLERS
          "preview_steps": 50,  # DDIM steps of the preview
      },
  })


def _architecture(config) -> str:
  """config.model.arch; "unet" for runs saved before the field existed."""
  return config.model.get("arch", "unet")


def _validate(config) -> None:
  m, d, s = config.model, config.diffusion, config.sample
  DENOISERS.get_checked(_architecture(config))
  compute_dtype(m.dtype)
  require(d.num_timesteps > 1, "diffusion.num_timesteps", "must be > 1")
  require(d.beta_schedule in noise.BETA_SCHEDULES, "diffusion.beta_schedule",
          f"must be one of {noise.BETA_SCHEDULES}")
  require(0 < d.beta_start <= d.beta_end < 1, "diffusion.beta_start",
          "need 0 < beta_start <= beta_end < 1")
  require(d.prediction in noise.PREDICTIONS, "diffusion.prediction", f"must be one of {noise.PREDICTIONS}")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  SAMPLERS.get_checked(s.sampler)
  require(1 <= s.steps <= d.num_timesteps, "sample.steps",
          f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  if s.preview_sampler:
    SAMPLERS.get_checked(s.preview_sampler, "sample.preview_sampler")
  require(1 <= s.preview_steps <= d.num_timesteps, "sample.preview_steps",
          f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  require(s.eta >= 0.0, "sample.eta", "must be >= 0")
  require(s.ddpm_variance in noise.REVERSE_VARIANCES, "sample.ddpm_variance",
          f"must be one of {noise.REVERSE_VARIANCES}")


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the diffusion method's pure functions from a validated config."""
  _validate(config)
  m, d = config.model, config.diffusion
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  model = DENOISERS[_architecture(config)](config, image_shape, compute_dtype(m.dtype))
  schedule = noise.Schedule.from_betas(
      noise.beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end))
  parameterization = schedule.parameterizations[d.prediction]
  loss_fn = lookup("config.loss.name", config.loss.name, dl.BUILTIN_LOSSES)
  require(callable(loss_fn), "loss.name", f"{config.loss.name!r} is not a function")
  tx, learning_rate = make_optimizer(config.optimizer)
  ema_decay = config.ema.decay

  def denoise_train(params, x_t, t, rng):
    return model.apply({"params": params}, x_t, t, train=True, rngs={"dropout": rng})

  def denoise_eval(params, x_t, t, rng):
    del rng  # No dropout in eval mode.
    return model.apply({"params": params}, x_t, t, train=False)

  train_ctx = dl.DenoiserContext(denoise_train, schedule, d.prediction)
  eval_ctx = dl.DenoiserContext(denoise_eval, schedule, d.prediction)

  def init(rng):
    x = jnp.zeros((1,) + image_shape, jnp.float32)
    params = model.init({"params": rng}, x, jnp.zeros((1,), jnp.int32), train=False)["params"]
    return initial_state(params, tx)

  train_step = loss_train_step(functools.partial(loss_fn, ctx=train_ctx), tx, learning_rate, ema_decay)

  num_dims = image_shape[0] * image_shape[1] * image_shape[2]

  def eval_step(params, batch, rng):
    """The loss, and the variational bound (nats per image, bits/dim) of the sampler's reverse process."""
    loss_rng, vlb_rng = jax.random.split(rng)
    _, metrics = loss_fn(params, batch, loss_rng, ctx=eval_ctx)
    bound = dl.variational_bound(eval_ctx, params, batch["image"], vlb_rng,
                                 variance=config.sample.ddpm_variance, clip_x0=config.sample.clip_x0)
    metrics = dict(metrics, vlb_nats=jnp.mean(bound["total"]))
    for part in ("total", "prior", "diffusion", "decoder"):
      name = "vlb_bpd" if part == "total" else f"vlb_{part}_bpd"
      metrics[name] = jnp.mean(likelihoods.bits_per_dim(bound[part], num_dims))
    return metrics

  s = config.sample

  def make_sample(sampler: str, num_steps: int):
    """sample(params, rng, num, labels=None) with the registered `sampler` over `num_steps` steps."""
    options = ml_collections.ConfigDict(dict(s.to_dict(), steps=num_steps))

    def sample(params, rng, num, labels=None):
      del labels  # Unconditional.

      def predict(x_t, t):
        return parameterization.x0_eps(denoise_eval(params, x_t, t, None), x_t, t)

      return jnp.clip(SAMPLERS[sampler](predict, schedule, rng, (num,) + image_shape, options), -1.0, 1.0)

    return sample

  preview = make_sample(s.preview_sampler, s.preview_steps) if s.preview_sampler else None
  return Method(init=init, train_step=train_step, sample=make_sample(s.sampler, s.steps), eval_step=eval_step,
                image_shape=image_shape, preview_sample=preview)
