"""Diffusion (DDPM-family) method: denoising loss, EMA, DDPM/DDIM sampling."""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import diffusion as dl
from genimg_jax.losses import likelihoods
from genimg_jax.methods import diffusion_samplers as samplers
from genimg_jax.methods.base import Method, TrainState, compute_dtype, gradient_step, make_optimizer, optimizer_config
from genimg_jax.models.unet import UNet
from genimg_jax.registry import lookup



def default_config() -> ml_collections.ConfigDict:
  """The sections the diffusion method reads, with DDPM defaults."""
  return ml_collections.ConfigDict({
      "model": {
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
          "sampler": "ddpm",  # ddpm | ddim
          "steps": 1000,  # DDIM steps (DDPM always takes num_timesteps)
          "eta": 0.0,  # DDIM noise scale
          "ddpm_variance": "beta_tilde",  # beta_tilde (fixedsmall) | beta (fixedlarge)
          "clip_x0": True,
          # The grids written while training (train.sample_every): "" uses `sampler` and `steps`.
          "preview_sampler": "",  # "" | ddpm | ddim
          "preview_steps": 50,  # DDIM steps of the preview
      },
  })


def _validate(config) -> None:
  m, d, s = config.model, config.diffusion, config.sample
  require(m.ch > 0, "model.ch", "must be > 0")
  require(len(m.ch_mult) > 0 and all(k > 0 for k in m.ch_mult), "model.ch_mult",
          "must be a non-empty tuple of positive ints")
  require(m.num_res_blocks > 0, "model.num_res_blocks", "must be > 0")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  require(all((m.ch * k) % m.norm_groups == 0 for k in m.ch_mult), "model.norm_groups",
          f"must divide every level's width (ch * ch_mult = {[m.ch * k for k in m.ch_mult]})")
  compute_dtype(m.dtype)
  down = 2 ** (len(m.ch_mult) - 1)
  require(config.data.image_size % down == 0, "data.image_size",
          f"{config.data.image_size} is not divisible by the UNet's downsampling factor {down}")
  require(d.num_timesteps > 1, "diffusion.num_timesteps", "must be > 1")
  require(d.beta_schedule in dl.BETA_SCHEDULES, "diffusion.beta_schedule",
          f"must be one of {dl.BETA_SCHEDULES}")
  require(0 < d.beta_start <= d.beta_end < 1, "diffusion.beta_start",
          "need 0 < beta_start <= beta_end < 1")
  require(d.prediction in dl.PREDICTIONS, "diffusion.prediction", f"must be one of {dl.PREDICTIONS}")
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  require(s.sampler in samplers.SAMPLERS, "sample.sampler", f"must be one of {samplers.SAMPLERS}")
  require(1 <= s.steps <= d.num_timesteps, "sample.steps",
          f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  require(s.preview_sampler in ("",) + samplers.SAMPLERS, "sample.preview_sampler",
          f"must be '' (the sampler's own) or one of {samplers.SAMPLERS}")
  require(1 <= s.preview_steps <= d.num_timesteps, "sample.preview_steps",
          f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  require(s.eta >= 0.0, "sample.eta", "must be >= 0")
  require(s.ddpm_variance in samplers.DDPM_VARIANCES, "sample.ddpm_variance",
          f"must be one of {samplers.DDPM_VARIANCES}")


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the diffusion method's pure functions from a validated config."""
  _validate(config)
  m, d = config.model, config.diffusion
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  model = UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
               attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
               out_ch=image_shape[-1], num_heads=m.num_heads, norm_groups=m.norm_groups,
               dtype=compute_dtype(m.dtype))
  schedule = dl.Schedule.from_betas(
      dl.beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end))
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
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params)

  def train_step(state, batch, rng):
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, ctx=train_ctx), has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
    return gradient_step(state, grads, dict(metrics, loss=loss), tx, learning_rate, ema_decay)

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
    """sample(params, rng, num, labels=None) with `sampler` (ddpm | ddim over `num_steps`)."""

    def sample(params, rng, num, labels=None):
      del labels  # Unconditional.

      def predict(x_t, t):
        return dl.to_x0_and_eps(d.prediction, schedule, denoise_eval(params, x_t, t, None), x_t, t)

      shape = (num,) + image_shape
      if sampler == "ddpm":
        x = samplers.ddpm(predict, schedule, rng, shape, variance=s.ddpm_variance, clip_x0=s.clip_x0)
      else:
        x = samplers.ddim(predict, schedule, rng, shape, num_steps=num_steps, eta=s.eta, clip_x0=s.clip_x0)
      return jnp.clip(x, -1.0, 1.0)

    return sample

  preview = make_sample(s.preview_sampler, s.preview_steps) if s.preview_sampler else None
  return Method(init=init, train_step=train_step, sample=make_sample(s.sampler, s.steps), eval_step=eval_step,
                image_shape=image_shape, preview_sample=preview)
