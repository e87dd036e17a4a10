"""Diffusion method: a registered noise process (`diffusion.process`: ddpm, edm, flow), its denoising
objective, EMA, and sampling by one of the process's registered samplers.

The network is a registered architecture (`model.arch`): a function
build(config, image_shape, dtype) -> flax module applied as
module.apply(variables, x [B, H, W, C], noise_label [B], labels [B] int32 or None, train=...), which
checks its own config fields. With model.num_classes > 0 it is class-conditional: trained with label
dropout (diffusion.label_dropout) and sampled with classifier-free guidance (sample.guidance, inside
sample.guidance_interval), see methods/guidance.py. A new architecture is one function decorated with
`@DENOISERS.register(name)`; a new process is one decorated with `@PROCESSES.register(name)`, returning
a `Process`.
The noise label is the timestep (ddpm), c_noise = ln(sigma) / 4 (edm), or 999 t (flow).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.config import require
from genimg_jax.losses import continuous
from genimg_jax.losses import diffusion as dl
from genimg_jax.losses import likelihoods, noise, ode_likelihood
from genimg_jax.methods.base import (Method, compute_dtype, default_labels, initial_state, loss_train_step,
                                     make_optimizer, optimizer_config)
from genimg_jax.methods import guidance, ode_samplers
from genimg_jax.methods.diffusion_samplers import SAMPLERS
from genimg_jax.models.dit import DiT
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
              num_heads=m.num_heads, norm_groups=m.norm_groups, num_classes=m.num_classes, dtype=dtype)


@DENOISERS.register("dit")
def dit(config: ml_collections.ConfigDict, image_shape, dtype) -> nn.Module:
  """The Diffusion Transformer (Peebles & Xie 2023): patchify by model.patch_size, model.depth adaLN-Zero
  blocks of width model.hidden_size with model.num_heads heads and MLP ratio model.mlp_ratio, conditioned
  on the noise label and the class; model.dropout on the residual branches."""
  m = config.model
  require(m.patch_size > 0 and image_shape[0] % m.patch_size == 0, "model.patch_size",
          f"must be > 0 and divide the image size {image_shape[0]}")
  require(m.hidden_size > 0 and m.hidden_size % 4 == 0, "model.hidden_size", "must be a positive multiple of 4")
  require(m.num_heads > 0 and m.hidden_size % m.num_heads == 0, "model.num_heads",
          f"must divide model.hidden_size={m.hidden_size}")
  require(m.depth > 0, "model.depth", "must be > 0")
  require(m.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")
  require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
  return DiT(patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
             out_ch=image_shape[-1], mlp_ratio=m.mlp_ratio, num_classes=m.num_classes, dropout=m.dropout,
             dtype=dtype)


def default_config() -> ml_collections.ConfigDict:
  """The sections the diffusion method reads, with DDPM defaults."""
  return ml_collections.ConfigDict({
      "model": {
          "arch": "unet",  # a name in DENOISERS: unet | dit
          # unet
          "ch": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,), "norm_groups": 32,
          # dit (DiT-S/2's widths)
          "patch_size": 2, "hidden_size": 384, "depth": 12, "mlp_ratio": 4.0,
          # both: dropout, attention heads, classes
          "dropout": 0.1, "num_heads": 1,
          "num_classes": 0,  # > 0: class-conditional (labels from the data's "label")
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
          # Class-conditional models: the probability a training label is replaced by the null label.
          "label_dropout": 0.1,
          # edm, flow: the held-out bits/dim of the probability-flow ODE (dopri5, rtol = atol = 1e-5) takes
          # the divergence as Hutchinson's estimate (one Rademacher probe per image) or exactly (D
          # Jacobian-vector products per evaluation: small images only).
          "likelihood_trace": "hutchinson",
      },
      # A built-in loss name ("simple": the process's own objective) or your own pure function as 'module:function'.
      "loss": {"name": "simple"},
      "optimizer": optimizer_config(),
      "ema": {"decay": 0.9999},
      "sample": {
          "sampler": "ddpm",  # ddpm: ddpm | ddim; edm: heun; flow: euler | heun | euler_maruyama
          "steps": 1000,  # DDIM, Heun or Euler steps (DDPM always takes num_timesteps)
          "eta": 0.0,  # DDIM noise scale
          "ddpm_variance": "beta_tilde",  # beta_tilde (fixedsmall) | beta (fixedlarge)
          "clip_x0": True,  # ddpm: clip the x0 estimate to [-1, 1] at every step
          # edm: stochastic churn (Algorithm 2); 0 is the deterministic ODE.
          "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0,
          "sde_noise": 1.0,  # flow euler_maruyama: a in g(t)^2 = 2 a t (0 is the Euler ODE)
          # Class-conditional models: out_c + w (out_c - out_u) with w = guidance (0: the conditional
          # model), applied where the noise level sigma (EDM's units: noise / signal) lies in the interval.
          "guidance": 0.0, "guidance_interval": (0.0, float("inf")),
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
  draw(name, net, rng, shape, options) -> x_0 [shape] with sampler `name` (options: config.sample), where
    net(x [B, H, W, C], noise_label [B]) -> the network's output in eval mode (guided or not).
  sigma_of(noise_label scalar) -> the noise level in EDM's units (noise / signal ratio), for the
    guidance interval.
  nfe(name, steps) -> network evaluations of one draw.
  held_out(params, batch, rng) -> {metric: scalar} besides the loss: ddpm's variational bound, the
    others' probability-flow ODE likelihood, both in bits/dim over 8-bit pixels.
  """

  losses: dict
  train_ctx: Any
  eval_ctx: Any
  samplers: Registry
  draw: Callable
  sigma_of: Callable[[jax.Array], jax.Array]
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
  denoise = lambda train: lambda params, x_t, t, rng, labels=None: network(params, x_t, t, rng, train, labels)
  eval_ctx = dl.DenoiserContext(denoise(False), schedule, d.prediction)
  num_dims = image_shape[0] * image_shape[1] * image_shape[2]

  def draw(name, net, rng, shape, options):
    predict = lambda x_t, t: parameterization.x0_eps(net(x_t, t), x_t, t)
    return SAMPLERS[name](predict, schedule, rng, shape, options)

  def sigma_of(t):
    abar = schedule.alphas_cumprod[t]
    return jnp.sqrt((1.0 - abar) / abar)

  def held_out(params, batch, rng):
    """Ho et al.'s variational bound of the sampler's reverse process: nats per image and bits/dim."""
    bound = dl.variational_bound(eval_ctx, params, batch["image"], rng, variance=s.ddpm_variance,
                                 clip_x0=s.clip_x0, labels=batch.get("label"))
    metrics = {"vlb_nats": jnp.mean(bound["total"])}
    for part in ("total", "prior", "diffusion", "decoder"):
      name = "vlb_bpd" if part == "total" else f"vlb_{part}_bpd"
      metrics[name] = jnp.mean(likelihoods.bits_per_dim(bound[part], num_dims))
    return metrics

  return Process(dl.BUILTIN_LOSSES, dl.DenoiserContext(denoise(True), schedule, d.prediction), eval_ctx, SAMPLERS,
                 draw, sigma_of, lambda name, steps: d.num_timesteps if name == "ddpm" else steps, held_out)


def _check_likelihood_trace(d: ml_collections.ConfigDict) -> None:
  require(d.likelihood_trace in ode_likelihood.TRACES, "diffusion.likelihood_trace",
          f"must be one of {ode_likelihood.TRACES}")


def _ode_held_out(network, log_likelihood, image_shape):
  """held_out(params, batch, rng) -> {"ode_bpd"}: the mean over the batch of the probability-flow ODE's
  bits/dim of uniformly dequantized images (an upper bound on the 8-bit NLL, up to the solver's
  tolerance and, with Hutchinson's trace, an unbiased estimate of it), given their labels if the
  model is class-conditional. log_likelihood(net, x, rng) -> log p(x) [B] nats, net(x, noise_label)
  the network in eval mode."""
  num_dims = image_shape[0] * image_shape[1] * image_shape[2]

  def held_out(params, batch, rng):
    dequantize_rng, probe_rng = jax.random.split(rng)
    net = lambda x, noise_label: network(params, x, noise_label, None, False, batch.get("label"))
    log_p = log_likelihood(net, ode_likelihood.dequantize(batch["image"], dequantize_rng), probe_rng)
    return {"ode_bpd": jnp.mean(ode_likelihood.bits_per_dim_dequantized(log_p, num_dims))}

  return held_out


@PROCESSES.register("edm")
def edm_process(config: ml_collections.ConfigDict, network, image_shape) -> Process:
  """Karras et al. (2022): x = x0 + sigma n, the preconditioned denoiser, log-normal training noise with
  the lambda weighting, and the Heun sampler over the rho-spaced levels (N steps: 2N - 1 evaluations)."""
  d, s = config.diffusion, config.sample
  _check_likelihood_trace(d)
  require(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", "need 0 < sigma_min < sigma_max")
  require(d.rho > 0 and d.sigma_data > 0 and d.p_std > 0, "diffusion.rho", "rho, sigma_data and p_std must be > 0")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(s.s_churn >= 0 and s.s_noise >= 0, "sample.s_churn", "s_churn and s_noise must be >= 0")
  ctx = lambda train: continuous.ContinuousContext(
      lambda params, x_in, c_noise, rng, labels=None: network(params, x_in, c_noise, rng, train, labels),
      d.sigma_data, d.p_mean, d.p_std)

  def draw(name, net, rng, shape, options):
    return ode_samplers.EDM_SAMPLERS[name](continuous.edm_denoiser(net, d.sigma_data), rng, shape, options, d)

  def log_likelihood(net, x, rng):
    return ode_likelihood.edm_log_likelihood(continuous.edm_denoiser(net, d.sigma_data), x, rng, d.sigma_min,
                                             d.sigma_max, trace=d.likelihood_trace)

  return Process({"simple": continuous.edm_loss}, ctx(True), ctx(False), ode_samplers.EDM_SAMPLERS, draw,
                 lambda c_noise: jnp.exp(4.0 * c_noise), lambda name, steps: ode_samplers.edm_heun_nfe(steps),
                 _ode_held_out(network, log_likelihood, image_shape))


FLOW_TIME_SCALE = 999.0  # The flow network's noise label is 999 t, the range of the DDPM UNet's timesteps.


@PROCESSES.register("flow")
def flow_process(config: ml_collections.ConfigDict, network, image_shape) -> Process:
  """Rectified flow / conditional flow matching: x_t = (1 - t) x0 + t eps, the velocity eps - x0 as the
  target, Euler or Heun on the ODE or Euler-Maruyama on an SDE with its marginals, from t = 1 to 0."""
  d, s = config.diffusion, config.sample
  _check_likelihood_trace(d)
  require(d.time_schedule in ("uniform", "logit_normal"), "diffusion.time_schedule",
          "must be one of ('uniform', 'logit_normal')")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(s.sde_noise >= 0, "sample.sde_noise", "must be >= 0")
  velocity_net = lambda train: lambda params, x_t, t, rng, labels=None: network(params, x_t, FLOW_TIME_SCALE * t,
                                                                                rng, train, labels)
  ctx = lambda train: continuous.ContinuousContext(velocity_net(train), time_schedule=d.time_schedule)

  def draw(name, net, rng, shape, options):
    return ode_samplers.FLOW_SAMPLERS[name](lambda x, t: net(x, FLOW_TIME_SCALE * t), rng, shape, options)

  def sigma_of(noise_label):
    t = noise_label / FLOW_TIME_SCALE
    return t / (1.0 - t)

  def log_likelihood(net, x, rng):
    return ode_likelihood.flow_log_likelihood(lambda x, t: net(x, FLOW_TIME_SCALE * t), x, rng,
                                              trace=d.likelihood_trace)

  return Process({"simple": continuous.flow_loss}, ctx(True), ctx(False), ode_samplers.FLOW_SAMPLERS, draw,
                 sigma_of, lambda name, steps: ode_samplers.flow_ode_nfe(steps, name),
                 _ode_held_out(network, log_likelihood, image_shape))


def _with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model, diffusion and sample sections are completed from default_config()
  (a run saved before a field existed gets its default)."""
  merged = ml_collections.ConfigDict(config.to_dict())
  for name, section in default_config().items():
    if name in ("model", "diffusion", "sample"):
      section.update(merged[name].to_dict())
      merged[name] = section
  return merged


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  m, s = config.model, config.sample
  require(m.num_classes >= 0, "model.num_classes", "must be >= 0 (0: unconditional)")
  require(0.0 <= config.diffusion.label_dropout < 1.0, "diffusion.label_dropout", "must be in [0, 1)")
  require(len(s.guidance_interval) == 2 and 0.0 <= s.guidance_interval[0] <= s.guidance_interval[1],
          "sample.guidance_interval", "must be (low, high) with 0 <= low <= high")
  require(s.guidance == 0.0 or m.num_classes > 0, "sample.guidance",
          "classifier-free guidance needs a class-conditional model (model.num_classes > 0)")
  require(s.guidance == 0.0 or config.diffusion.label_dropout > 0, "sample.guidance",
          "needs an unconditional model trained alongside: diffusion.label_dropout > 0")


def make(config: ml_collections.ConfigDict) -> Method:
  """Builds the diffusion method's pure functions from a config (validated on the way)."""
  config = _with_defaults(config)
  m, s = config.model, config.sample
  model_builder = DENOISERS.get_checked(m.arch)
  process_builder = PROCESSES.get_checked(config.diffusion.process)
  dtype = compute_dtype(m.dtype)
  require(0.0 <= config.ema.decay < 1.0, "ema.decay", "must be in [0, 1)")
  _check_conditioning(config)
  num_classes = m.num_classes
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  model = model_builder(config, image_shape, dtype)

  def network(params, x, noise_label, rng, train: bool, labels=None):
    rngs = {"dropout": rng} if train else {}
    return model.apply({"params": params}, x, noise_label, labels, train=train, rngs=rngs)

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

  def train_loss(params, batch, rng):
    """The objective; a class-conditional model sees the null label in place of a dropped one."""
    if not num_classes:
      return loss_fn(params, batch, rng, ctx=process.train_ctx)
    drop_rng, rng = jax.random.split(rng)
    labels = guidance.drop_labels(batch["label"], drop_rng, config.diffusion.label_dropout, num_classes)
    return loss_fn(params, dict(batch, label=labels), rng, ctx=process.train_ctx)

  def eval_step(params, batch, rng):
    """The loss on held-out images, and the process's held-out metrics (ddpm: the bound in bits/dim)."""
    loss_rng, bound_rng = jax.random.split(rng)
    _, metrics = loss_fn(params, batch, loss_rng, ctx=process.eval_ctx)
    return dict(metrics, **process.held_out(params, batch, bound_rng)) if process.held_out else metrics

  def sampling_network(params, labels, options):
    """net(x, noise_label) in eval mode: unconditional, or guided towards `labels` [B] int32."""
    net = lambda x, noise_label, labels: network(params, x, noise_label, None, False, labels)
    if not num_classes:
      return lambda x, noise_label: net(x, noise_label, None)
    return guidance.guided(net, labels, num_classes, options.guidance, tuple(options.guidance_interval),
                           process.sigma_of)

  def make_sample(sampler: str, num_steps: int):
    """sample(params, rng, num, labels=None) with the process's `sampler` over `num_steps` steps."""
    options = ml_collections.ConfigDict(dict(s.to_dict(), steps=num_steps))

    def sample(params, rng, num, labels=None):
      if labels is None:
        labels = default_labels(num, num_classes)
      net = sampling_network(params, labels, options)
      return jnp.clip(process.draw(sampler, net, rng, (num,) + image_shape, options), -1.0, 1.0)

    return sample

  def count_network_passes():
    draw = lambda net: process.draw(s.sampler, net, jax.random.PRNGKey(0), (1,) + image_shape, s)
    return guidance.network_passes(draw, num_classes, s.guidance, tuple(s.guidance_interval), process.sigma_of)

  preview = make_sample(s.preview_sampler, s.preview_steps) if s.preview_sampler else None
  return Method(init=init, train_step=loss_train_step(train_loss, tx, learning_rate, config.ema.decay),
                sample=make_sample(s.sampler, s.steps), eval_step=eval_step, image_shape=image_shape,
                preview_sample=preview, num_classes=num_classes, sample_nfe=process.nfe(s.sampler, s.steps),
                count_network_passes=count_network_passes if num_classes and s.guidance != 0.0 else None)
