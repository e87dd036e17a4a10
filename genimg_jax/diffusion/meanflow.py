"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): the network learns the average
velocity of flow matching's ODE over an interval and samples in one or a few jumps.

On flow.py's linear path z_t = (1 - t) x + t eps (t = 1 noise, t = 0 data) with velocity v(z_t, t), the
average velocity over [r, t] is (eq. 3)

  u(z_t, r, t) = 1 / (t - r) int_r^t v(z_tau, tau) dtau,   u(z, t, t) = v(z, t),

so z_r = z_t - (t - r) u(z_t, r, t) exactly: one jump per step (the paper's sampling, Algorithm 2).
Differentiating (t - r) u = int_r^t v in t gives the MeanFlow identity (eq. 6) u = v - (t - r) d/dt u, with
the total derivative along the ODE (eq. 8)

  d/dt u(z_t, r, t) = v d_z u + d_t u,   a Jacobian-vector product of u along (v, 0, 1) in (z, r, t),

taken by `jax.jvp` through the network. The network u_theta regresses the stop-gradient target (eq. 10)

  u_tgt = v - (t - r) d/dt u_theta(z_t, r, t),   v = eps - x (conditional velocity, as flow matching),

with the paper's adaptive loss weight w = 1 / (||u_theta - u_tgt||^2 + c)^p (stop-gradient). Class-conditional
models fold classifier-free guidance into training (the paper's "Mean Flows with Guidance"; kappa is its
appendix's improved form, as the official JAX code's guidance_fn): v is replaced by
v_g = omega v + (1 - omega - kappa) u(z_t, t, t | null) + kappa u(z_t, t, t | c) inside a t interval, so one
network pass samples the guided field (sample.guidance stays 0).

The network sees two times (`build.time_inputs = 2`): noise_label [B, 2] = (t, t - r), unscaled, as the
official code (py-meanflow) embeds them. Unlike flow.py's 999 t, the scale matters here: the target holds
d/dt u, and at 999 t the sinusoidal embeddings' fastest features turn at up to 999 radians per unit t, so the
derivative, and with it the target, grows as the network learns to use them (measured on the digits: the
unweighted error of u against its target rose from 124 to 50472 over 900 steps, and the samples were blurs).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.diffusion import flow, likelihood
from genimg_jax.diffusion.process import PROCESSES, Process
from genimg_jax.diffusion.samplers import every_image, sampler, steps_nfe
from genimg_jax.registry import Registry

TIME_SCHEDULES = ("logit_normal", "uniform")
# How a pair (r, t) is made from two independent draws, as the official code's two (t, r) samplers:
# "sort" (the paper, py-meanflow tr_sampler v0): t, r = max, min of the draws, then r = t for a fraction;
# "clip" (py-meanflow tr_sampler v1, its CIFAR-10 run): r = t for a fraction, then r = min(t, r).
TIME_PAIRS = ("sort", "clip")


# ---- The network's times. ---------------------------------------------------------------------

def noise_labels(r: jax.Array, t: jax.Array) -> jax.Array:
  """The network's two time inputs [B, 2] float32, (t, t - r) unscaled, from r, t [B] in [0, 1], r <= t."""
  return jnp.stack([t, t - r], axis=-1).astype(jnp.float32)


def _images(a: jax.Array, like: jax.Array) -> jax.Array:
  """a [B] shaped to broadcast against like [B, ...]."""
  return a.reshape((-1,) + (1,) * (like.ndim - 1))


# ---- The training times. ----------------------------------------------------------------------

def _draw_times(rng: jax.Array, num: int, schedule: str, mean: float, std: float) -> jax.Array:
  """[num] float32 in (0, 1): sigmoid(N(mean, std^2)) (logit-normal) or uniform."""
  if schedule == "logit_normal":
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (num,), jnp.float32))
  if schedule == "uniform":
    return jax.random.uniform(rng, (num,), jnp.float32)
  raise ValueError(f"unknown MeanFlow time schedule {schedule!r}; choose one of {TIME_SCHEDULES}")


def training_times(rng: jax.Array, num: int, *, schedule: str = "logit_normal", t_mean: float = -0.6,
                   t_std: float = 1.6, r_mean: float = -4.0, r_std: float = 1.6, equal_fraction: float = 0.25,
                   pairs: str = "clip") -> tuple[jax.Array, jax.Array]:
  """(r, t), each [num] float32 with 0 < r <= t < 1: two independent draws from `schedule` (t from
  logit-normal(t_mean, t_std) drawn with rng itself, as flow.training_times draws its t; r from
  logit-normal(r_mean, r_std) with fold_in(rng, 1)), made a pair by `pairs` (TIME_PAIRS), with r = t for
  each image with probability equal_fraction (fold_in(rng, 2)). Defaults: py-meanflow's CIFAR-10 run."""
  t = _draw_times(rng, num, schedule, t_mean, t_std)
  r = _draw_times(jax.random.fold_in(rng, 1), num, schedule, r_mean, r_std)
  equal = jax.random.bernoulli(jax.random.fold_in(rng, 2), equal_fraction, (num,))
  if pairs == "sort":
    t, r = jnp.maximum(t, r), jnp.minimum(t, r)
    return jnp.where(equal, t, r), t
  if pairs == "clip":
    return jnp.minimum(t, jnp.where(equal, t, r)), t
  raise ValueError(f"unknown MeanFlow time pairs {pairs!r}; choose one of {TIME_PAIRS}")


# ---- The objective. ---------------------------------------------------------------------------

def time_derivative(u_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], z: jax.Array, r: jax.Array,
                    t: jax.Array, velocity: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(u, du/dt): u = u_fn(z, r, t) and its total derivative along the ODE, d/dt u(z_t, r, t) =
  velocity . d_z u + d_t u (eq. 8), one `jax.jvp` along the tangent (velocity, 0, 1) of (z, r, t).
  z, velocity [B, ...]; r, t [B]; both results like z. The primal output is the same network pass."""
  return jax.jvp(u_fn, (z, r, t), (velocity, jnp.zeros_like(r), jnp.ones_like(t)))


def meanflow_target(velocity: jax.Array, r: jax.Array, t: jax.Array, du_dt: jax.Array) -> jax.Array:
  """u_tgt = sg(v - (t - r) du/dt) (eq. 10), [B, ...] like velocity; r, t [B]."""
  return jax.lax.stop_gradient(velocity - _images(t - r, velocity) * du_dt)


def adaptive_loss(u: jax.Array, target: jax.Array, p: float, c: float) -> tuple[jax.Array, jax.Array]:
  """(weighted loss, unweighted mean squared error), scalars, of u against target [B, ...].

  Per image the squared error is ||delta||^2 = sum (u - target)^2 and the weight w = sg(1 / (||delta||^2 + c)^p)
  (the paper's adaptive weighting; c, p in its units, on the sum). The loss is mean_B(w ||delta||^2) / D, D the
  dimensions of an image: the official code's loss divided by the constant D, so that p = 0 is flow
  matching's mean squared error (flow.flow_loss), up to float rounding; Adam's steps do not see the constant.
  """
  num_dims = np.prod(u.shape[1:])
  squared = jnp.sum(jnp.square(u - target).reshape(u.shape[0], -1), axis=-1)
  weight = jax.lax.stop_gradient(1.0 / (squared + c) ** p)
  return jnp.mean(weight * squared) / num_dims, jnp.mean(squared) / num_dims


@dataclasses.dataclass(frozen=True)
class MeanFlowContext:
  """What the MeanFlow loss needs besides (params, batch, rng); static under jit.

  network(params, z [B, H, W, C], r [B], t [B], rng, labels) -> u(z, r, t) [B, H, W, C] in the ctx's mode;
  labels: the batch's "label" [B] int32 (null_label where label dropout replaced it), None if unconditional.
  guide(params, z, t, labels) -> u(z, t, t | labels) = v in eval mode (the guidance terms); None when
  unguided. Time fields: `training_times`; p, c: `adaptive_loss`; guidance (omega), kappa, interval (t_lo,
  t_hi) and null_label: `guided_velocity`.
  """

  network: Callable[..., jax.Array]
  guide: Callable[..., jax.Array] | None = None
  schedule: str = "logit_normal"
  t_mean: float = -0.6
  t_std: float = 1.6
  r_mean: float = -4.0
  r_std: float = 1.6
  equal_fraction: float = 0.25
  pairs: str = "clip"
  p: float = 0.75
  c: float = 1e-3
  guidance: float = 1.0
  kappa: float = 0.0
  interval: tuple[float, float] = (0.0, 1.0)
  null_label: int = 0


def guided_velocity(params, ctx: MeanFlowContext, z: jax.Array, t: jax.Array, velocity: jax.Array,
                    labels: jax.Array) -> jax.Array:
  """The guided field v_g [B, ...] that replaces the conditional velocity `velocity` in the target (the
  paper's guided target with its appendix's kappa, as the official JAX code's guidance_fn and cond_drop):

    v_g = omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | c)   where t in ctx.interval,
    v_g = v                                                                        elsewhere,

  and v_g = v for the images whose label dropout made `labels` [B] int32 the null label (they train the
  unconditional field). omega = 1, kappa = 0 is no guidance; with kappa = 0, u(z, t, t | c) is not needed.
  The u terms come from ctx.guide (eval mode, no gradient reaches them through the stop-gradient target).
  """
  null = jnp.full_like(labels, ctx.null_label)
  if ctx.kappa:
    both = ctx.guide(params, jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([null, labels]))
    unconditional, conditional = jnp.split(both, 2)
  else:
    unconditional, conditional = ctx.guide(params, z, t, null), 0.0
  inside = (t >= ctx.interval[0]) & (t <= ctx.interval[1])
  omega = _images(jnp.where(inside, ctx.guidance, 1.0), z)
  kappa = _images(jnp.where(inside, ctx.kappa, 0.0), z)
  guided = omega * velocity + (1.0 - omega - kappa) * unconditional + kappa * conditional
  return jnp.where(_images(labels == ctx.null_label, z), velocity, guided)


LOSSES = Registry("loss.name", "MeanFlow loss")


@LOSSES.register("simple")
def meanflow_loss(params, batch: dict, rng: jax.Array, *, ctx: MeanFlowContext):
  """The MeanFlow objective (Algorithm 1): (r, t) by `training_times`, z_t = (1 - t) x + t eps, v = eps - x
  (or the guided v_g), u and du/dt by one jvp through the network, loss `adaptive_loss`(u, u_tgt).
  The draws use rng as flow.flow_loss does (times, noise, dropout = split(rng, 3)), so with r = t
  everywhere and p = 0 this is flow matching's loss on the same draws. Returns (scalar, {"loss", "mse"}),
  mse being the unweighted mean squared error per dimension."""
  x0 = batch["image"]
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  r, t = training_times(t_rng, x0.shape[0], schedule=ctx.schedule, t_mean=ctx.t_mean, t_std=ctx.t_std,
                        r_mean=ctx.r_mean, r_std=ctx.r_std, equal_fraction=ctx.equal_fraction, pairs=ctx.pairs)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  z = flow.interpolate(x0, eps, t)
  velocity = flow.velocity_target(x0, eps)
  labels = batch.get("label")
  if ctx.guide is not None:
    velocity = jax.lax.stop_gradient(guided_velocity(params, ctx, z, t, velocity, labels))
  u, du_dt = time_derivative(lambda z, r, t: ctx.network(params, z, r, t, dropout_rng, labels), z, r, t, velocity)
  loss, mse = adaptive_loss(u, meanflow_target(velocity, r, t, du_dt), ctx.p, ctx.c)
  return loss, {"loss": loss, "mse": mse}


# ---- The samplers. ----------------------------------------------------------------------------
# average_velocity(z [B, ...], r [B], t [B]) -> u. Times are fixed on the host in float64 and cast once.

def jump(average_velocity, z: jax.Array, t: jax.Array, r: jax.Array) -> jax.Array:
  """z_r = z_t - (t - r) u(z_t, r, t) from z_t [B, ...], t and r scalars: one network evaluation."""
  return z - (t - r) * average_velocity(z, every_image(r, z), every_image(t, z))


def jumps(average_velocity, path_times: np.ndarray, z1: jax.Array) -> jax.Array:
  """`jump`s from z1 at path_times[0] through path_times[1:] (float64 [N + 1], e.g. flow.times(N)), one
  `lax.scan`: N network evaluations; returns z at path_times[-1], like z1."""
  path_times = jnp.asarray(path_times, jnp.float32)
  z, _ = jax.lax.scan(lambda z, ts: (jump(average_velocity, z, *ts), None), z1, (path_times[:-1], path_times[1:]))
  return z


SAMPLERS = Registry("sample.sampler", "MeanFlow sampler")


@SAMPLERS.register("onestep")
@sampler(nfe=lambda process, options: 1)
def onestep_sampler(process: "MeanFlow", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """x_0 = z_1 - u(z_1, 0, 1) from z_1 ~ N(0, I) (Algorithm 2): one network evaluation, whatever options.steps."""
  return jump(process.average_velocity(net), flow.prior(rng, shape), 1.0, 0.0)


@SAMPLERS.register("meanflow")
@sampler(nfe=steps_nfe)
def meanflow_sampler(process: "MeanFlow", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`jumps` over options.steps evenly spaced times from 1 to 0, from z_1 ~ N(0, I): options.steps network
  evaluations (1 step is `onestep`)."""
  return jumps(process.average_velocity(net), flow.times(options.steps), flow.prior(rng, shape))


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanFlow(Process):
  """The linear path from data (t = 0) to noise (t = 1), learnt as its average velocity."""

  def average_velocity(self, net):
    """u(z, r [B], t [B]) from net(z, (t, t - r))."""
    return lambda z, r, t: net(z, noise_labels(r, t))

  def velocity(self, net):
    """The instantaneous velocity v(z, t [B]) = u(z, t, t)."""
    return lambda z, t: net(z, noise_labels(t, t))

  def sigma_of(self, noise_label: jax.Array) -> jax.Array:
    """t / (1 - t) at the noise label (t, t - r) (its time column, [..., 0])."""
    t = noise_label[..., 0]
    return t / (1.0 - t)


@PROCESSES.register("meanflow", fields={
    # (r, t) (training_times): logit_normal | uniform; logit-normal (mean, std) of t and of r; sort | clip;
    # the fraction of images with r = t. Defaults: py-meanflow's CIFAR-10 run (tr_sampler v1, ratio 0.75).
    "meanflow_time_schedule": "logit_normal", "meanflow_t_mean": -0.6, "meanflow_t_std": 1.6,
    "meanflow_r_mean": -4.0, "meanflow_r_std": 1.6, "meanflow_time_pairs": "clip", "meanflow_equal_fraction": 0.25,
    # The adaptive loss weight 1 / (||delta||^2 + c)^p (the paper's CIFAR-10 p = 0.75, c = 1e-3).
    "meanflow_p": 0.75, "meanflow_c": 1e-3,
    # Guidance folded into training (class-conditional models): omega, kappa, and the t interval where they
    # apply; omega = 1, kappa = 0 is none.
    "meanflow_guidance": 1.0, "meanflow_guidance_kappa": 0.0, "meanflow_guidance_interval": (0.0, 1.0)})
def build(config: ml_collections.ConfigDict, network, image_shape) -> MeanFlow:
  """MeanFlow with one-step and multi-step sampling, and the probability-flow ODE's bits/dim of its
  instantaneous velocity u(z, t, t) held out (flow.log_likelihood): the density of the model's own ODE,
  whose exact solution the jumps approximate."""
  d, s, num_classes = config.diffusion, config.sample, config.model.num_classes
  likelihood.check_trace(d.likelihood_trace)
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(d.meanflow_time_schedule in TIME_SCHEDULES, "diffusion.meanflow_time_schedule",
          f"must be one of {TIME_SCHEDULES}")
  require(d.meanflow_t_std > 0, "diffusion.meanflow_t_std", "must be > 0")
  require(d.meanflow_r_std > 0, "diffusion.meanflow_r_std", "must be > 0")
  require(d.meanflow_time_pairs in TIME_PAIRS, "diffusion.meanflow_time_pairs", f"must be one of {TIME_PAIRS}")
  require(0.0 <= d.meanflow_equal_fraction <= 1.0, "diffusion.meanflow_equal_fraction", "must be in [0, 1]")
  require(d.meanflow_p >= 0, "diffusion.meanflow_p", "must be >= 0")
  require(d.meanflow_c > 0, "diffusion.meanflow_c", "must be > 0")
  guided = d.meanflow_guidance != 1.0 or d.meanflow_guidance_kappa != 0.0
  require(not guided or num_classes > 0, "diffusion.meanflow_guidance",
          "guidance folded into training needs a class-conditional model (model.num_classes > 0); 1 is none")
  require(not guided or d.label_dropout > 0, "diffusion.meanflow_guidance",
          "needs the unconditional field trained alongside: diffusion.label_dropout > 0")
  require(d.meanflow_guidance_kappa >= 0, "diffusion.meanflow_guidance_kappa", "must be >= 0")
  interval = tuple(d.meanflow_guidance_interval)
  require(len(interval) == 2 and 0.0 <= interval[0] <= interval[1] <= 1.0, "diffusion.meanflow_guidance_interval",
          "must be (t_low, t_high) with 0 <= t_low <= t_high <= 1")

  def guide(params, z, t, labels):
    return network(params, z, noise_labels(t, t), None, False, labels)

  ctx = lambda train: MeanFlowContext(
      network=lambda params, z, r, t, rng, labels=None: network(params, z, noise_labels(r, t), rng, train, labels),
      guide=guide if guided else None, schedule=d.meanflow_time_schedule, t_mean=d.meanflow_t_mean,
      t_std=d.meanflow_t_std, r_mean=d.meanflow_r_mean, r_std=d.meanflow_r_std,
      equal_fraction=d.meanflow_equal_fraction, pairs=d.meanflow_time_pairs, p=d.meanflow_p, c=d.meanflow_c,
      guidance=d.meanflow_guidance, kappa=d.meanflow_guidance_kappa, interval=interval, null_label=num_classes)

  def held_out_log_likelihood(net, x, rng):
    return flow.log_likelihood(lambda z, t: net(z, noise_labels(t, t)), x, rng, trace=d.likelihood_trace)

  return MeanFlow(losses=LOSSES, train_ctx=ctx(True), eval_ctx=ctx(False), samplers=SAMPLERS,
                  held_out=likelihood.ode_bpd(network, held_out_log_likelihood, image_shape))


build.time_inputs = 2  # the network takes (t, t - r): noise_label [B, 2]
