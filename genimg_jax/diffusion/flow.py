"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t) x_0 + t eps, t in [0, 1];
the network predicts the velocity eps - x_0, sampled by Euler or Heun on the ODE dx/dt = v(x, t) from t = 1
(noise) to t = 0 (data), or Euler-Maruyama on an SDE with the same marginals. The network's noise label is
999 t (`TIME_SCALE`).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.diffusion import likelihood
from genimg_jax.diffusion.process import PROCESSES, Process
from genimg_jax.diffusion.samplers import every_image, sampler, steps_nfe
from genimg_jax.registry import Registry

TIME_SCALE = 999.0  # The network's noise label is 999 t, the range of the DDPM UNet's timesteps.
TIME_SCHEDULES = ("uniform", "logit_normal")
T_MIN = 1e-5  # the likelihood ODE starts here: keeps the time embedding off t = 0 (score_sde's eps), ~D t_min nats


# ---- The path. --------------------------------------------------------------------------------

def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t eps; x0, eps [B, ...], t [B] in [0, 1]."""
  t = t.reshape((-1,) + (1,) * (x0.ndim - 1))
  return (1.0 - t) * x0 + t * eps


def velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
  """d x_t / dt = eps - x0, the flow-matching regression target."""
  return eps - x0


def training_times(rng: jax.Array, num: int, schedule: str = "uniform") -> jax.Array:
  """t [num] float32 in (0, 1): uniform, or logit-normal (sigmoid of N(0, 1), Esser et al. 2024)."""
  if schedule == "uniform":
    return jax.random.uniform(rng, (num,), jnp.float32)
  if schedule == "logit_normal":
    return jax.nn.sigmoid(jax.random.normal(rng, (num,), jnp.float32))
  raise ValueError(f"unknown flow time schedule {schedule!r}; choose one of {TIME_SCHEDULES}")


# ---- The objective. ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FlowContext:
  """What the flow-matching loss needs besides (params, batch, rng); static under jit.

  network(params, x_t [B, H, W, C], t [B] float32, rng, labels=None) -> the velocity [B, H, W, C] in training
  mode; labels: the batch's "label" [B] int32, which an unconditional network ignores (None: a conditional
  one's null label).
  """

  network: Callable[..., jax.Array]
  time_schedule: str = "uniform"  # one of TIME_SCHEDULES


LOSSES = Registry("loss.name", "flow loss")


@LOSSES.register("simple")
def flow_loss(params, batch: dict, rng: jax.Array, *, ctx: FlowContext):
  """Conditional flow matching: t from ctx.time_schedule, x_t = (1 - t) x0 + t eps, loss = mean
  squared error of the predicted velocity against eps - x0. Returns (scalar, metrics)."""
  x0 = batch["image"]
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = training_times(t_rng, x0.shape[0], ctx.time_schedule)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  velocity = ctx.network(params, interpolate(x0, eps, t), t, dropout_rng, batch.get("label"))
  loss = jnp.mean(jnp.square(velocity - velocity_target(x0, eps)))
  return loss, {"loss": loss}


# ---- The samplers. ----------------------------------------------------------------------------
# velocity(x [B, ...], t [B]) -> dx/dt. Times are fixed on the host in float64 and cast once.

def times(num_steps: int) -> np.ndarray:
  """Times float64 [num_steps + 1], evenly from 1 (noise) down to 0 (data)."""
  if num_steps < 1:
    raise ValueError(f"the flow sampler needs at least one step, got {num_steps}")
  return np.linspace(1.0, 0.0, num_steps + 1)


def euler_step(velocity, x: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """x + (t_next - t) v(x, t): one velocity evaluation."""
  return x + (t_next - t) * velocity(x, every_image(t, x))


def heun_step(velocity, x: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """The trapezoid of v at x and at the Euler step's end: two velocity evaluations."""
  v = velocity(x, every_image(t, x))
  x_euler = x + (t_next - t) * v
  return x + (t_next - t) * 0.5 * (v + velocity(x_euler, every_image(t_next, x)))


def ode(velocity, path_times: np.ndarray, x1: jax.Array, step=euler_step) -> jax.Array:
  """Integrates dx/dt = velocity(x, t) from x1 at path_times[0] to path_times[-1] (float64 [N + 1], e.g.
  `times`) by step(velocity, x, t, t_next) (`euler_step` or `heun_step`), one `lax.scan`; returns x at
  path_times[-1], like x1."""
  path_times = jnp.asarray(path_times, jnp.float32)
  x, _ = jax.lax.scan(lambda x, ts: (step(velocity, x, *ts), None), x1, (path_times[:-1], path_times[1:]))
  return x


def sde(velocity, path_times: np.ndarray, x1: jax.Array, rng: jax.Array, noise_scale: float = 1.0) -> jax.Array:
  """Euler-Maruyama from x1 at path_times[0] = 1 to path_times[-1] = 0 (float64 [N + 1], decreasing, e.g.
  `times`) on the reverse-time SDE dx = [v + a eps_hat(x, t)] dt + sqrt(2 a t) dW, a = noise_scale.
  Returns x at time 0, like x1.

  For x_t = (1 - t) x0 + t eps the score is -eps_hat / t with eps_hat = x + (1 - t) v, so for every
  a >= 0 this SDE has the ODE's marginals (diffusion coefficient g^2 = 2 a t, SiT's "sigma" form);
  a = 0 is Euler on the ODE. The drift stays finite at t = 1, unlike g^2 proportional to t / (1 - t).
  The noise at step i is normal(fold_in(rng, i + 1)); the last step adds none (its mean).
  """
  num_steps = len(path_times) - 1

  def step(x, inputs):
    i, t, t_next = inputs
    v = velocity(x, every_image(t, x))
    h = t - t_next
    eps_hat = x + (1.0 - t) * v
    noise = jax.random.normal(jax.random.fold_in(rng, i + 1), x.shape, x.dtype)
    scale = jnp.where(i < num_steps - 1, jnp.sqrt(2.0 * noise_scale * t * h), 0.0)
    return x - h * (v + noise_scale * eps_hat) + scale * noise, None

  path_times = jnp.asarray(path_times, jnp.float32)
  x, _ = jax.lax.scan(step, x1, (jnp.arange(num_steps), path_times[:-1], path_times[1:]))
  return x


def prior(rng: jax.Array, shape) -> jax.Array:
  """x_1 ~ N(0, I) [shape] float32, from normal(fold_in(rng, 0))."""
  return jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)


SAMPLERS = Registry("sample.sampler", "flow sampler")


@SAMPLERS.register("euler")
@sampler(nfe=steps_nfe)
def euler_sampler(process: "Flow", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`ode` with Euler steps over options.steps evenly spaced times, from x_1 ~ N(0, I)."""
  return ode(process.velocity(net), times(options.steps), prior(rng, shape), euler_step)


@SAMPLERS.register("heun")
@sampler(nfe=lambda process, options: 2 * options.steps)
def heun_sampler(process: "Flow", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`ode` with Heun steps over options.steps evenly spaced times, from x_1 ~ N(0, I)."""
  return ode(process.velocity(net), times(options.steps), prior(rng, shape), heun_step)


@SAMPLERS.register("euler_maruyama")
@sampler(nfe=steps_nfe)
def euler_maruyama_sampler(process: "Flow", net, rng: jax.Array, shape,
                           options: ml_collections.ConfigDict) -> jax.Array:
  """`sde` over options.steps evenly spaced times with noise_scale options.sde_noise, from x_1 ~ N(0, I)."""
  return sde(process.velocity(net), times(options.steps), prior(rng, shape), rng, options.sde_noise)


# ---- The likelihood. --------------------------------------------------------------------------

def log_likelihood(velocity, x0: jax.Array, rng: jax.Array, *, t_min: float = T_MIN, trace: str = "hutchinson",
                   probe: str = "rademacher", rtol: float = likelihood.RTOL,
                   atol: float = likelihood.ATOL) -> jax.Array:
  """log p(x0) in nats per image [B] float32.

  velocity(x [B, ...], t [B]) -> dx/dt; x0 [B, ...] float32. The ODE runs from t_min to 1 into the
  prior N(0, I), so this is the density of x_{t_min}, within about D t_min nats of that of x_0.
  rng, trace, probe, rtol, atol: as `likelihood.ode_log_likelihood`.
  """
  return likelihood.ode_log_likelihood(velocity, likelihood.normal_log_prob, x0, rng, t_min, 1.0, trace=trace,
                                       probe=probe, rtol=rtol, atol=atol)


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Flow(Process):
  """The linear path from data (t = 0) to noise (t = 1)."""

  def velocity(self, net):
    """v(x, t [B]) from net(x, 999 t)."""
    return lambda x, t: net(x, TIME_SCALE * t)

  def sigma_of(self, noise_label: jax.Array) -> jax.Array:
    """t / (1 - t) at the noise label 999 t."""
    t = noise_label / TIME_SCALE
    return t / (1.0 - t)


@PROCESSES.register("flow")
def build(config: ml_collections.ConfigDict, network, image_shape) -> Flow:
  """Conditional flow matching with Euler / Heun / Euler-Maruyama sampling and the probability-flow ODE's
  bits/dim held out."""
  d, s = config.diffusion, config.sample
  likelihood.check_trace(d.likelihood_trace)
  require(d.time_schedule in TIME_SCHEDULES, "diffusion.time_schedule", f"must be one of {TIME_SCHEDULES}")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(s.sde_noise >= 0, "sample.sde_noise", "must be >= 0")
  ctx = lambda train: FlowContext(
      lambda params, x_t, t, rng, labels=None: network(params, x_t, TIME_SCALE * t, rng, train, labels),
      d.time_schedule)

  def held_out_log_likelihood(net, x, rng):
    return log_likelihood(lambda x, t: net(x, TIME_SCALE * t), x, rng, trace=d.likelihood_trace)

  return Flow(losses=LOSSES, train_ctx=ctx(True), eval_ctx=ctx(False), samplers=SAMPLERS,
              held_out=likelihood.ode_bpd(network, held_out_log_likelihood, image_shape))
