"""Diffusion method: a registered noise process (`diffusion.process`: ddpm, edm, flow), its denoising
objective, EMA, and sampling by one of the process's registered samplers.

The network is a registered architecture (`model.arch`): a function
build(config, image_shape, dtype) -> flax module applied as
module.apply(variables, x [B, H, W, C], noise_label [B], train=...), which checks its own
config fields. A new one is one function decorated with `@DENOISERS.register(name)`; a new
process is one decorated with `@PROCESSES.register(name)`, returning a `Process`.
The noise label is the timestep (ddpm), c_noise = ln(sigma) / 4 (edm), or 999 t (flow).
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import continuous
from genimg_jax.losses import diffusion as dl
from genimg_jax.losses import likelihoods, noise
from genimg_jax.methods.base import (Method, compute_dtype, initial_state, loss_train_step, make_optimizer,
                                     optimizer_config)
from genimg_jax.methods import ode_samplers
from genimg_jax.methods.diffusion_samplers import SAMPLERS
from genimg_jax.models.unet import UNet
from genimg_jax.registry import Registry, lookup

DENOISERS = Registry("model.arch", "denoiser architecture")
PROCESSES = Registry("diffusion.process", "diffusion process")


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
          "process": "ddpm",  # a name in PROCESSES: ddpm | edm | flow
          # ddpm (Ho et al. 2020): discrete time, what the network outputs.
          "num_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "prediction": "eps",  # eps, v or x0
          # edm (Karras et al. 2022): preconditioning, training noise levels, sampling range.
          "sigma_data": 0.5, "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0,
          # flow (rectified flow): the training times, uniform | logit_normal.
          "time_schedule": "uniform",
      },
      # A built-in loss name ("simple": the process's own objective) or your own pure function as 'module:function'.
      "loss": {"name": "simple"},
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.9999},
      "sample": {
          "sampler": "ddpm",  # ddpm: ddpm | ddim; edm: heun; flow: euler | heun
          "steps": 1000,  # DDIM, Heun or Euler steps (DDPM always takes num_timesteps)
          "eta": 0.0,  # DDIM noise scale
          "ddpm_variance": "beta_tilde",  # beta_tilde (fixedsmall) | beta (fixedlarge)
          "clip_x0": True,  # ddpm: clip the x0 estimate to [-1, 1] at every step
          # edm: stochastic churn (Algorithm 2); 0 is the deterministic ODE.
          "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0,
          # The grids written while training (train.sample_every): "" uses `sampler` and `steps`.
          "preview_sampler": "",  # "" or one of the process's samplers
          "preview_steps": 50,  # steps of the preview
      },
  })


@dataclasses.dataclass(frozen=True)
class Process:
  """A noise process as the diffusion method uses it.

  losses: built-in objectives by name (config.loss.name), each loss(params, batch, rng, *, ctx).
  train_ctx, eval_ctx: the ctx they take, with the network in training and in eval mode.
  samplers: the registry of the sampler names it takes.
  draw(name, params, rng, shape, options) -> x_0 [shape] with sampler `name` (options: config.sample).
  nfe(name, steps) -> network evaluations of one draw.
  held_out(params, batch, rng) -> {metric: scalar} besides the loss (ddpm's bound), or None.
  """

  losses: dict
  train_ctx: Any
  eval_ctx: Any
  samplers: Registry
  draw: Callable
  nfe: Callable[[str, int], int]
  held_out: Callable | None = None


@PROCESSES.register("ddpm")
def ddpm_process(config: ml_collections.ConfigDict, network, image_shape) -> Process:
  """Ho et al. (2020) in discrete time, with eps / v / x0 prediction, DDPM or DDIM sampling, and the
  variational bound in bits/dim as the held-out metric."""
  d, s = config.diffusion, config.sample
  require(d.num_timesteps > 1, "diffusion.num_timesteps", "must be > 1")
  require(d.beta_schedule in noise.BETA_SCHEDULES, "diffusion.beta_schedule",
          f"must be one of {noise.BETA_SCHEDULES}")
  require(0 < d.beta_start <= d.beta_end < 1, "diffusion.beta_start", "need 0 < beta_start <= beta_end < 1")
  require(d.prediction in noise.PREDICTIONS, "diffusion.prediction", f"must be one of {noise.PREDICTIONS}")
  for field in ("steps", "preview_steps"):
    require(1 <= s[field] <= d.num_timesteps, f"sample.{field}",
            f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  require(s.eta >= 0.0, "sample.eta", "must be >= 0")
  require(s.ddpm_variance in noise.REVERSE_VARIANCES, "sample.ddpm_variance",
          f"must be one of {noise.REVERSE_VARIANCES}")
  schedule = noise.Schedule.from_betas(noise.beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start,
                                                           d.beta_end))
  parameterization = schedule.parameterizations[d.prediction]
  denoise = lambda train: lambda params, x_t, t, rng: network(params, x_t, t, rng, train)
  eval_ctx = dl.DenoiserContext(denoise(False), schedule, d.prediction)
  num_dims = image_shape[0] * image_shape[1] * image_shape[2]

  def draw(name, params, rng, shape, options):
    predict = lambda x_t, t: parameterization.x0_eps(network(params, x_t, t, None, False), x_t, t)
    return SAMPLERS[name](predict, schedule, rng, shape, options)

  def held_out(params, batch, rng):
    """Ho et al.'s variational bound of the sampler's reverse process: nats per image and bits/dim."""
    bound = dl.variational_bound(eval_ctx, params, batch["image"], rng, variance=s.ddpm_variance,
                                 clip_x0=s.clip_x0)
    metrics = {"vlb_nats": jnp.mean(bound["total"])}
    for part in ("total", "prior", "diffusion", "decoder"):
      name = "vlb_bpd" if part == "total" else f"vlb_{part}_bpd"
      metrics[name] = jnp.mean(likelihoods.bits_per_dim(bound[part], num_dims))
    return metrics

  return Process(dl.BUILTIN_LOSSES, dl.DenoiserContext(denoise(True), schedule, d.prediction), eval_ctx, SAMPLERS,
                 draw, lambda name, steps: d.num_timesteps if name == "ddpm" else steps, held_out)


@PROCESSES.register("edm")
def edm_process(config: ml_collections.ConfigDict, network, image_shape) -> Process:
  """Karras et al. (2022): x = x0 + sigma n, the preconditioned denoiser, log-normal training noise with
  the lambda weighting, and the Heun sampler over the rho-spaced levels (N steps: 2N - 1 evaluations)."""
  del image_shape
  d, s = config.diffusion, config.sample
  require(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", "need 0 < sigma_min < sigma_max")
  require(d.rho > 0 and d.sigma_data > 0 and d.p_std > 0, "diffusion.rho", "rho, sigma_data and p_std must be > 0")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(s.s_churn >= 0 and s.s_noise >= 0, "sample.s_churn", "s_churn and s_noise must be >= 0")
  ctx = lambda train: continuous.ContinuousContext(
      lambda params, x_in, c_noise, rng: network(params, x_in, c_noise, rng, train), d.sigma_data, d.p_mean, d.p_std)

  def draw(name, params, rng, shape, options):
    denoise = continuous.edm_denoiser(lambda x_in, c_noise: network(params, x_in, c_noise, None, False),
                                      d.sigma_data)
    return ode_samplers.EDM_SAMPLERS[name](denoise, rng, shape, options, d)

  return Process({"simple": continuous.edm_loss}, ctx(True), ctx(False), ode_samplers.EDM_SAMPLERS, draw,
                 lambda name, steps: ode_samplers.edm_heun_nfe(steps))


FLOW_TIME_SCALE = 999.0  # The flow network's noise label is 999 t, the range of the DDPM UNet's timesteps.


@PROCESSES.register("flow")
def flow_process(config: ml_collections.ConfigDict, network, image_shape) -> Process:
  """Rectified flow / conditional flow matching: x_t = (1 - t) x0 + t eps, the velocity eps - x0 as the
  target, Euler or Heun on the ODE from t = 1 to 0."""
  del image_shape
  d, s = config.diffusion, config.sample
  require(d.time_schedule in ("uniform", "logit_normal"), "diffusion.time_schedule",
          "must be one of ('uniform', 'logit_normal')")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  velocity_net = lambda train: lambda params, x_t, t, rng: network(params, x_t, FLOW_TIME_SCALE * t, rng, train)
  ctx = lambda train: continuous.ContinuousContext(velocity_net(train), time_schedule=d.time_schedule)

  def draw(name, params, rng, shape, options):
    return ode_samplers.FLOW_SAMPLERS[name](lambda x, t: velocity_net(False)(params, x, t, None), rng, shape, options)

  return Process({"simple": continuous.flow_loss}, ctx(True), ctx(False), ode_samplers.FLOW_SAMPLERS, draw,
                 lambda name, steps: ode_samplers.flow_ode_nfe(steps, name))


def _with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model, diffusion and sample sections are completed from default_config()
  (a run saved before a field existed gets its default)."""
  merged = ml_collections.ConfigDict(config.to_dict())
  for name, section in default_config().items():
    if name in ("model", "diffusion", "sample"):
      section.update(merged[name].to_dict())
      merged[name] = section
  return merged


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the diffusion method's pure functions from a config (validated on the way)."""
  config = _with_defaults(config)
  m, s = config.model, config.sample
  model_builder = DENOISERS.get_checked(m.arch)
  process_builder = PROCESSES.get_checked(config.diffusion.process)
  dtype = compute_dtype(m.dtype)
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  model = model_builder(config, image_shape, dtype)

  def network(params, x, noise_label, rng, train: bool):
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, x, noise_label, train=train, rngs=rngs)

  process = process_builder(config, network, image_shape)
  process.samplers.get_checked(s.sampler)
  if s.preview_sampler:
    process.samplers.get_checked(s.preview_sampler, "sample.preview_sampler")
  loss_fn = lookup("config.loss.name", config.loss.name, process.losses)
  require(callable(loss_fn), "loss.name", f"{config.loss.name!r} is not a function")
  tx, learning_rate = make_optimizer(config.optimizer)

  def init(rng):
    x = jnp.zeros((1,) + image_shape, jnp.float32)
    params = model.init({"params": rng}, x, jnp.zeros((1,), jnp.int32), train=False)["params"]
    return initial_state(params, tx)

  def eval_step(params, batch, rng):
    """The loss on held-out images, and the process's held-out metrics (ddpm: the bound in bits/dim)."""
    loss_rng, bound_rng = jax.random.split(rng)
    _, metrics = loss_fn(params, batch, loss_rng, ctx=process.eval_ctx)
    return dict(metrics, **process.held_out(params, batch, bound_rng)) if process.held_out else metrics

  def make_sample(sampler: str, num_steps: int):
    """sample(params, rng, num, labels=None) with the process's `sampler` over `num_steps` steps."""
    options = ml_collections.ConfigDict(dict(s.to_dict(), steps=num_steps))

    def sample(params, rng, num, labels=None):
      del labels  # Unconditional.
      return jnp.clip(process.draw(sampler, params, rng, (num,) + image_shape, options), -1.0, 1.0)

    return sample

  preview = make_sample(s.preview_sampler, s.preview_steps) if s.preview_sampler else None
  return Method(init=init, train_step=loss_train_step(functools.partial(loss_fn, ctx=process.train_ctx), tx,
                                                      learning_rate, config.ema.decay),
                sample=make_sample(s.sampler, s.steps), eval_step=eval_step, image_shape=image_shape,
                preview_sample=preview, sample_nfe=process.nfe(s.sampler, s.steps))
