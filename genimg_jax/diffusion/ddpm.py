"""DDPM (Ho et al. 2020): the discrete-time process, its denoising objective, and the DDPM and DDIM samplers.

Discrete time t in {0, ..., T-1}, t = 0 the least noisy: alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s,
and q(x_t | x_0) = N(a_t x_0, s_t^2 I) with a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t) (eq. 4). Every
per-timestep coefficient is computed once in float64 and cast once (`Schedule`). A parameterisation is a
linear map between the network output and (x_0, eps): the loss target and the samplers' estimates are read
from the same record (`Parameterization`). The network's noise label is the timestep t.
"""

import dataclasses
import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.diffusion import likelihood
from genimg_jax.diffusion.process import PROCESSES, Process
from genimg_jax.diffusion.samplers import sampler, steps_nfe
from genimg_jax.losses import likelihoods
from genimg_jax.registry import Registry

PREDICTIONS = ("eps", "v", "x0")
BETA_SCHEDULES = ("linear", "cosine")
REVERSE_VARIANCES = ("beta_tilde", "beta")


# ---- The schedule and the parameterisations. ----------------------------------------------------

def beta_schedule(name: str, num_timesteps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> np.ndarray:
  """Betas as float64 [T].

  linear: evenly spaced from beta_start to beta_end (Ho et al. 2020).
  cosine: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2), s = 0.008, betas clipped
    at 0.999 (Nichol & Dhariwal 2021); beta_start/beta_end are unused.
  """
  if name == "linear":
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  if name == "cosine":
    s = 0.008
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
  raise ValueError(f"unknown beta schedule {name!r}; choose one of {BETA_SCHEDULES}")


def at(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """coef[t] for t [B] int, as [B, 1, ..., 1] with `ndim` dims in all (broadcasts against images)."""
  return coef[t].reshape((-1,) + (1,) * (ndim - 1))


@flax.struct.dataclass
class Parameterization:
  """What the network outputs, per timestep [T]: the target out = target_x0 x_0 + target_eps eps,
  and its inverse at x_t, x_0 = x0_xt x_t + x0_out out and eps = eps_xt x_t + eps_out out.

  eps-prediction: out = eps. x0-prediction: out = x_0. v-prediction (Salimans & Ho 2022):
  out = a_t eps - s_t x_0.
  """

  target_x0: jax.Array
  target_eps: jax.Array
  x0_xt: jax.Array
  x0_out: jax.Array
  eps_xt: jax.Array
  eps_out: jax.Array

  @classmethod
  def of(cls, prediction: str, a: np.ndarray, s: np.ndarray, dtype=jnp.float32) -> "Parameterization":
    """The record of `prediction` for x_t = a x_0 + s eps (a, s float64 [T]): the 2x2 system
    [x_t; out] = [[a, s], [target_x0, target_eps]] [x_0; eps] solved in float64."""
    if prediction not in PREDICTIONS:
      raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    ones, zeros = np.ones_like(a), np.zeros_like(a)
    tx0, teps = {"eps": (zeros, ones), "x0": (ones, zeros), "v": (-s, a)}[prediction]
    det = a * teps - s * tx0
    cast = lambda x: jnp.asarray(x, dtype)
    return cls(target_x0=cast(tx0), target_eps=cast(teps), x0_xt=cast(teps / det), x0_out=cast(-s / det),
               eps_xt=cast(-tx0 / det), eps_out=cast(a / det))

  def target(self, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """What the network should output at x_t = a_t x0 + s_t eps. x0, eps [B, ...]; t [B] int."""
    return at(self.target_x0, t, x0.ndim) * x0 + at(self.target_eps, t, x0.ndim) * eps

  def x0_eps(self, out: jax.Array, x_t: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x0_hat, eps_hat) from a network output at x_t. Shapes as x_t; t [B] int."""
    n = x_t.ndim
    return (at(self.x0_xt, t, n) * x_t + at(self.x0_out, t, n) * out,
            at(self.eps_xt, t, n) * x_t + at(self.eps_out, t, n) * out)


@flax.struct.dataclass
class Schedule:
  """The process's coefficients [T], computed in float64 then cast to `dtype` (float32 by default).

  parameterizations: {prediction: Parameterization} for every name in PREDICTIONS.
  """

  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  posterior_variance: jax.Array  # beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
  # mean of q(x_{t-1} | x_t, x_0) = coef_x0 x_0 + coef_xt x_t; in float64 first, since
  # 1 - abar_t loses most of its digits in float32 at small t.
  posterior_coef_x0: jax.Array  # beta_t sqrt(abar_{t-1}) / (1 - abar_t)
  posterior_coef_xt: jax.Array  # (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
  signal: jax.Array  # a_t = sqrt(abar_t)
  noise: jax.Array  # s_t = sqrt(1 - abar_t)
  parameterizations: dict

  @classmethod
  def from_betas(cls, betas: np.ndarray, dtype=jnp.float32) -> "Schedule":
    betas = np.asarray(betas, np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    a, s = np.sqrt(abar), np.sqrt(1.0 - abar)
    cast = lambda x: jnp.asarray(x, dtype)
    return cls(betas=cast(betas), alphas_cumprod=cast(abar), alphas_cumprod_prev=cast(abar_prev),
               posterior_variance=cast(betas * (1.0 - abar_prev) / (1.0 - abar)),
               posterior_coef_x0=cast(betas * np.sqrt(abar_prev) / (1.0 - abar)),
               posterior_coef_xt=cast((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)),
               signal=cast(a), noise=cast(s),
               parameterizations={name: Parameterization.of(name, a, s, dtype) for name in PREDICTIONS})

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """A draw of q(x_t | x_0): a_t x0 + s_t noise. x0, noise [B, ...]; t [B] int."""
    return at(self.signal, t, x0.ndim) * x0 + at(self.noise, t, x0.ndim) * noise

  def posterior_mean(self, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The mean of q(x_{t-1} | x_t, x_0) (eq. 7). x0, x_t [B, ...]; t [B] int."""
    return at(self.posterior_coef_x0, t, x0.ndim) * x0 + at(self.posterior_coef_xt, t, x0.ndim) * x_t

  def posterior_log_variance(self, t: jax.Array, ndim: int) -> jax.Array:
    """log beta-tilde_t as [B, 1, ..., 1] (`at`); -inf at t = 0."""
    return at(jnp.log(self.posterior_variance), t, ndim)

  def reverse_log_variance(self, variance: str, t: jax.Array, ndim: int) -> jax.Array:
    """log variance of p(x_{t-1} | x_t) as [B, 1, ..., 1] (`at`): beta-tilde_t ("beta_tilde", "fixedsmall")
    or beta_t ("beta", "fixedlarge"). At t = 0 both use beta-tilde_1 (beta-tilde_0 is 0), as Ho et al.'s
    code does."""
    if variance not in REVERSE_VARIANCES:
      raise ValueError(f"unknown reverse variance {variance!r}; choose one of {REVERSE_VARIANCES}")
    chosen = self.posterior_variance if variance == "beta_tilde" else self.betas
    return at(jnp.log(jnp.concatenate([self.posterior_variance[1:2], chosen[1:]])), t, ndim)


# ---- The objective. ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DenoiserContext:
  """What a DDPM loss needs besides (params, batch, rng); static under jit.

  denoise(params, x_t [B,H,W,C], t [B] int32, rng, labels=None) -> network output [B,H,W,C]
  in the `prediction` parameterization, in training mode (dropout on); labels: the batch's "label"
  [B] int32, which an unconditional network ignores (None: a conditional one's null label).
  """

  denoise: Callable[..., jax.Array]
  schedule: Schedule
  prediction: str  # one of PREDICTIONS


def noised_batch(ctx: DenoiserContext, x0: jax.Array, rng: jax.Array):
  """Draw t ~ U{0..T-1} and eps ~ N(0, I) and noise x0.

  Returns (t [B] int32, eps, x_t, dropout_rng); eps and x_t shaped like x0.
  """
  t_rng, n_rng, d_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, ctx.schedule.num_timesteps, dtype=jnp.int32)
  eps = jax.random.normal(n_rng, x0.shape, x0.dtype)
  return t, eps, ctx.schedule.q_sample(x0, t, eps), d_rng


LOSSES = Registry("loss.name", "DDPM loss")


@LOSSES.register("simple")
def simple_loss(params, batch: dict, rng: jax.Array, *, ctx: DenoiserContext):
  """The 'simple' objective: mean squared error of the network's prediction target.

  batch["image"]: [B, H, W, C] float32 in [-1, 1]. Returns (scalar loss, metrics).
  With prediction="eps" this is L_simple of Ho et al. (2020), eq. 14.
  """
  x0 = batch["image"]
  t, eps, x_t, d_rng = noised_batch(ctx, x0, rng)
  output = ctx.denoise(params, x_t, t, d_rng, batch.get("label"))
  target = ctx.schedule.parameterizations[ctx.prediction].target(x0, eps, t)
  loss = jnp.mean(jnp.square(output - target))
  return loss, {"loss": loss}


# ---- The samplers. ----------------------------------------------------------------------------
# Each runs its whole loop in one `lax.scan`. predict(x_t, t [B]) -> (x0_hat, eps_hat) is the denoiser in
# eval mode. The noise added at timestep t is normal(fold_in(rng, t)), so two samplers visiting the same
# timesteps with the same `rng` see the same noise; x_T is normal(fold_in(rng, T)).

Predictor = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def initial_noise(rng: jax.Array, schedule: Schedule, shape) -> jax.Array:
  """x_T ~ N(0, I) of `shape` [B, H, W, C], in the schedule's dtype."""
  return jax.random.normal(jax.random.fold_in(rng, schedule.num_timesteps), shape, schedule.betas.dtype)


def _step_noise(rng, t, shape, dtype):
  return jax.random.normal(jax.random.fold_in(rng, t), shape, dtype)


def _x0_eps(predict, schedule, x, t, clip_x0):
  """The denoiser's (x0_hat, eps_hat); when clipping, eps_hat is re-derived from the clipped x0
  (the x0-parameterisation's inverse)."""
  tb = jnp.full((x.shape[0],), t, jnp.int32)
  x0, eps = predict(x, tb)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = schedule.parameterizations["x0"].x0_eps(x0, x, tb)[1]
  return x0, eps


def ddpm(predict: Predictor, schedule: Schedule, rng: jax.Array, shape, *, variance: str = "beta_tilde",
         clip_x0: bool = True) -> jax.Array:
  """Ancestral sampling through all T steps (Algorithm 2). Returns x_0 [B, H, W, C] in the schedule's dtype.

  x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z (the posterior mean with the schedule's float64-computed
  coefficients), sigma_t^2 = beta-tilde_t (the posterior variance, "fixedsmall") or beta_t
  ("fixedlarge"); no noise at t = 0.
  """
  if variance not in REVERSE_VARIANCES:
    raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {REVERSE_VARIANCES}")
  std = jnp.sqrt(schedule.posterior_variance if variance == "beta_tilde" else schedule.betas)

  def step(x, t):
    x0, _ = _x0_eps(predict, schedule, x, t, clip_x0)
    mean = schedule.posterior_coef_x0[t] * x0 + schedule.posterior_coef_xt[t] * x
    return mean + jnp.where(t > 0, std[t], 0.0) * _step_noise(rng, t, shape, x.dtype), None

  timesteps = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x, _ = jax.lax.scan(step, initial_noise(rng, schedule, shape), timesteps)
  return x


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """`num_steps` distinct timesteps evenly spread over [0, T-1], ascending, int32."""
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"DDIM steps must be in [1, {num_timesteps}], got {num_steps}")
  return np.unique(np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32))


def ddim(predict: Predictor, schedule: Schedule, rng: jax.Array, shape, *, num_steps: int,
         eta: float = 0.0, clip_x0: bool = True) -> jax.Array:
  """DDIM (Song et al. 2021, eq. 12) over `num_steps` timesteps; eta=0 is deterministic, eta=1 with all T
  steps is DDPM ancestral sampling with variance beta-tilde. Returns x_0 [B, H, W, C].

  From t to the previous visited timestep s (abar_s = 1 past the end):
  x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
  sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
  """
  ts = ddim_timesteps(schedule.num_timesteps, num_steps)
  prev = np.concatenate([[-1], ts[:-1]]).astype(np.int32)

  def step(x, ts_pair):
    t, s = ts_pair
    x0, eps = _x0_eps(predict, schedule, x, t, clip_x0)
    abar = schedule.alphas_cumprod[t]
    abar_s = jnp.where(s >= 0, schedule.alphas_cumprod[jnp.maximum(s, 0)], 1.0)
    sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar) * (1.0 - abar / abar_s))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0))
    return jnp.sqrt(abar_s) * x0 + direction * eps + sigma * _step_noise(rng, t, shape, x.dtype), None

  pairs = (jnp.asarray(ts[::-1]), jnp.asarray(prev[::-1]))
  x, _ = jax.lax.scan(step, initial_noise(rng, schedule, shape), pairs)
  return x


SAMPLERS = Registry("sample.sampler", "DDPM sampler")


@SAMPLERS.register("ddpm")
@sampler(nfe=lambda process, options: process.schedule.num_timesteps)
def ddpm_sampler(process: "DDPM", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`ddpm` with options.ddpm_variance and options.clip_x0 (options.steps is not used: all T steps)."""
  return ddpm(process.predictor(net), process.schedule, rng, shape, variance=options.ddpm_variance,
              clip_x0=options.clip_x0)


@SAMPLERS.register("ddim")
@sampler(nfe=steps_nfe)
def ddim_sampler(process: "DDPM", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`ddim` over options.steps timesteps with options.eta and options.clip_x0."""
  return ddim(process.predictor(net), process.schedule, rng, shape, num_steps=options.steps, eta=options.eta,
              clip_x0=options.clip_x0)


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPM(Process):
  """The discrete process with its schedule and the network's parameterisation (`prediction`)."""

  schedule: Schedule
  prediction: str

  def predictor(self, net) -> Predictor:
    """predict(x_t, t [B]) -> (x0_hat, eps_hat) from net(x_t, t) -> the raw output."""
    parameterization = self.schedule.parameterizations[self.prediction]
    return lambda x_t, t: parameterization.x0_eps(net(x_t, t), x_t, t)

  def sigma_of(self, t: jax.Array) -> jax.Array:
    """sqrt((1 - abar_t) / abar_t) at timestep t."""
    abar = self.schedule.alphas_cumprod[t]
    return jnp.sqrt((1.0 - abar) / abar)


@PROCESSES.register("ddpm")
def build(config: ml_collections.ConfigDict, network, image_shape) -> DDPM:
  """Ho et al. (2020) with eps / v / x0 prediction, DDPM or DDIM sampling, and the variational bound in
  bits/dim as the held-out metric."""
  d, s = config.diffusion, config.sample
  require(d.num_timesteps > 1, "diffusion.num_timesteps", "must be > 1")
  require(d.beta_schedule in BETA_SCHEDULES, "diffusion.beta_schedule", f"must be one of {BETA_SCHEDULES}")
  require(0 < d.beta_start <= d.beta_end < 1, "diffusion.beta_start", "need 0 < beta_start <= beta_end < 1")
  require(d.prediction in PREDICTIONS, "diffusion.prediction", f"must be one of {PREDICTIONS}")
  for field in ("steps", "preview_steps"):
    require(1 <= s[field] <= d.num_timesteps, f"sample.{field}",
            f"must be in [1, diffusion.num_timesteps={d.num_timesteps}]")
  require(s.eta >= 0.0, "sample.eta", "must be >= 0")
  require(s.ddpm_variance in REVERSE_VARIANCES, "sample.ddpm_variance", f"must be one of {REVERSE_VARIANCES}")
  schedule = Schedule.from_betas(beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end))
  parameterization = schedule.parameterizations[d.prediction]
  denoise = lambda train: lambda params, x_t, t, rng, labels=None: network(params, x_t, t, rng, train, labels)
  num_dims = math.prod(image_shape)

  def held_out(params, batch, rng):
    """Ho et al.'s variational bound of the sampler's reverse process: nats per image and bits/dim."""
    x0_estimate = lambda x_t, t: parameterization.x0_eps(
        network(params, x_t, t, None, False, batch.get("label")), x_t, t)[0]
    bound = likelihood.variational_bound(x0_estimate, schedule, batch["image"], rng, variance=s.ddpm_variance,
                                         clip_x0=s.clip_x0)
    metrics = {"vlb_nats": jnp.mean(bound["total"])}
    for part in ("total", "prior", "diffusion", "decoder"):
      name = "vlb_bpd" if part == "total" else f"vlb_{part}_bpd"
      metrics[name] = jnp.mean(likelihoods.bits_per_dim(bound[part], num_dims))
    return metrics

  return DDPM(losses=LOSSES, train_ctx=DenoiserContext(denoise(True), schedule, d.prediction),
              eval_ctx=DenoiserContext(denoise(False), schedule, d.prediction), samplers=SAMPLERS,
              held_out=held_out, schedule=schedule, prediction=d.prediction)
