"""EDM (Karras et al. 2022): x = x_0 + sigma n, sigma in [sigma_min, sigma_max], the preconditioned denoiser,
its training loss and the Heun sampler, and the probability-flow ODE likelihood.

The denoiser is D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7 and Table 1), trained at
log-normal sigma with the weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2. The
network's noise label is c_noise = ln(sigma) / 4.
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
from genimg_jax.diffusion.samplers import every_image, sampler
from genimg_jax.registry import Registry

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


# ---- Preconditioning, noise levels and the ODE. ------------------------------------------------

def preconditioning(sigma: jax.Array, sigma_data: float = SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` (any shape, float): Table 1.

  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4.
  """
  total = sigma**2 + sigma_data**2
  return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0


def loss_weight(sigma: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which makes lambda c_out^2 = 1 (eq. 8)."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def training_sigmas(rng: jax.Array, num: int, p_mean: float = P_MEAN, p_std: float = P_STD) -> jax.Array:
  """num noise levels [num] float32, ln(sigma) ~ N(p_mean, p_std^2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (num,), jnp.float32))


def sigma_steps(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> np.ndarray:
  """The sampler's noise levels, float64 [num_steps + 1] (eq. 5), from sigma_max down to sigma_min, then 0:
  sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
  if num_steps < 1:
    raise ValueError(f"the EDM sampler needs at least one step, got {num_steps}")
  i = np.arange(num_steps, dtype=np.float64)
  ramp = i / max(num_steps - 1, 1)
  sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.concatenate([sigmas, [0.0]])


def denoiser(network, sigma_data: float = SIGMA_DATA):
  """D(x, sigma) = c_skip x + c_out network(c_in x, c_noise) for x [B, ...] and sigma [B] (eq. 7)."""
  def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    expand = lambda c: c.reshape((-1,) + (1,) * (x.ndim - 1))
    return expand(c_skip) * x + expand(c_out) * network(expand(c_in) * x, c_noise)

  return denoise


def ode_drift(denoise):
  """The probability-flow ODE (eq. 3 with sigma(t) = t): f(x, sigma) = dx/dsigma = (x - D(x; sigma)) / sigma
  for x [B, ...] and sigma [B] > 0, with denoise(x, sigma) -> D(x; sigma)."""
  def drift(x: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x - denoise(x, sigma)) / sigma.reshape((-1,) + (1,) * (x.ndim - 1))

  return drift


# ---- The objective. ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EDMContext:
  """What the EDM loss needs besides (params, batch, rng); static under jit.

  network(params, x_in [B, H, W, C], c_noise [B] float32, rng, labels=None) -> F [B, H, W, C], the raw
  output of D = c_skip x + c_out F(c_in x; c_noise), in training mode; labels: the batch's "label" [B]
  int32, which an unconditional network ignores (None: a conditional one's null label).
  """

  network: Callable[..., jax.Array]
  sigma_data: float = SIGMA_DATA
  p_mean: float = P_MEAN
  p_std: float = P_STD


LOSSES = Registry("loss.name", "EDM loss")


@LOSSES.register("simple")
def edm_loss(params, batch: dict, rng: jax.Array, *, ctx: EDMContext):
  """EDM's training loss (eq. 2 with Table 1): ln(sigma) ~ N(P_mean, P_std^2), x = x0 + sigma n,
  loss = mean of lambda(sigma) ||D(x; sigma) - x0||^2 over pixels and images.
  batch["image"]: [B, H, W, C] float32 in [-1, 1]. Returns (scalar, metrics)."""
  x0 = batch["image"]
  sigma_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  sigma = training_sigmas(sigma_rng, x0.shape[0], ctx.p_mean, ctx.p_std)
  x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * jax.random.normal(noise_rng, x0.shape, x0.dtype)
  denoised = denoiser(lambda x_in, c_noise: ctx.network(params, x_in, c_noise, dropout_rng, batch.get("label")),
                      ctx.sigma_data)
  per_image = jnp.mean(jnp.square(denoised(x, sigma) - x0), axis=tuple(range(1, x0.ndim)))
  loss = jnp.mean(loss_weight(sigma, ctx.sigma_data) * per_image)
  return loss, {"loss": loss}


# ---- The sampler. -----------------------------------------------------------------------------

def heun_nfe(num_steps: int) -> int:
  """Denoiser calls of `heun` over num_steps steps: 2N - 1 (the last step is an Euler step)."""
  return 2 * num_steps - 1


def heun(denoise, sigmas: np.ndarray, rng: jax.Array, shape, *, s_churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = float("inf"), s_noise: float = 1.0) -> jax.Array:
  """Algorithm 2: Heun's 2nd-order method on dx/dsigma = (x - D(x; sigma)) / sigma, one `lax.scan`.

  x_0 [shape] float32 from x_N ~ N(0, sigmas[0]^2 I), through the levels `sigmas` (float64 [N + 1],
  decreasing, last 0: `sigma_steps`). denoise(x [B, ...], sigma [B]) -> D(x; sigma). The last step, to
  sigma = 0, is an Euler step, so N steps cost 2N - 1 denoiser calls (18 steps: 35).
  Churn: at levels in [s_tmin, s_tmax], gamma = min(s_churn / N, sqrt(2) - 1) raises sigma to
  sigma (1 + gamma) with fresh noise of scale s_noise (normal(fold_in(rng, i + 1)) at step i).
  """
  sigmas = np.asarray(sigmas, np.float64)
  num_steps = len(sigmas) - 1
  if num_steps < 1 or sigmas[-1] != 0.0 or np.any(np.diff(sigmas) >= 0):
    raise ValueError("sigmas must decrease to a final 0, with at least one step")
  gamma = np.where((sigmas[:-1] >= s_tmin) & (sigmas[:-1] <= s_tmax), min(s_churn / num_steps, np.sqrt(2) - 1), 0.0)
  sigma_hat = sigmas[:-1] * (1.0 + gamma)
  noise_scale = s_noise * np.sqrt(np.maximum(sigma_hat**2 - sigmas[:-1] ** 2, 0.0))
  drift = ode_drift(denoise)

  def churn_and_euler(x, i, s_hat, scale, s_next):
    x_hat = x + scale * jax.random.normal(jax.random.fold_in(rng, i + 1), shape, jnp.float32)
    d = drift(x_hat, every_image(s_hat, x))
    return x_hat, d, x_hat + (s_next - s_hat) * d

  def heun_step(x, step):
    i, s_hat, scale, s_next = step
    x_hat, d, x_next = churn_and_euler(x, i, s_hat, scale, s_next)
    d_next = drift(x_next, every_image(s_next, x))
    return x_hat + (s_next - s_hat) * 0.5 * (d + d_next), None

  cast = lambda a: jnp.asarray(a, jnp.float32)
  x = sigmas[0] * jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
  steps = (jnp.arange(num_steps - 1), cast(sigma_hat[:-1]), cast(noise_scale[:-1]), cast(sigmas[1:-1]))
  x, _ = jax.lax.scan(heun_step, x, steps)
  return churn_and_euler(x, num_steps - 1, sigma_hat[-1], noise_scale[-1], 0.0)[2]


SAMPLERS = Registry("sample.sampler", "EDM sampler")


@SAMPLERS.register("heun")
@sampler(nfe=lambda process, options: heun_nfe(options.steps))
def heun_sampler(process: "EDM", net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
  """`heun` over options.steps levels of `sigma_steps`, with the churn settings s_churn, s_tmin, s_tmax,
  s_noise."""
  sigmas = sigma_steps(options.steps, process.sigma_min, process.sigma_max, process.rho)
  return heun(process.denoiser(net), sigmas, rng, shape, s_churn=options.s_churn, s_tmin=options.s_tmin,
              s_tmax=options.s_tmax, s_noise=options.s_noise)


# ---- The likelihood. --------------------------------------------------------------------------

def log_likelihood(denoise, x0: jax.Array, rng: jax.Array, sigma_min: float = SIGMA_MIN,
                   sigma_max: float = SIGMA_MAX, *, trace: str = "hutchinson", probe: str = "rademacher",
                   rtol: float = likelihood.RTOL, atol: float = likelihood.ATOL) -> jax.Array:
  """log p_{sigma_min}(x0) in nats per image [B] float32.

  denoise(x [B, ...], sigma [B]) -> D(x; sigma); x0 [B, ...] float32. The probability-flow ODE
  dx/dsigma = (x - D(x; sigma)) / sigma runs in sigma itself: far above the data's scale x grows
  linearly in sigma, which Dormand-Prince crosses in a few steps (on the tests' Gaussian, 92 drift
  evaluations against 140 in ln sigma). The prior is N(0, sigma_max^2 I) in place of
  p_data * N(0, sigma_max^2 I): off by log E[exp(x . x0 / sigma_max^2 - |x0|^2 / (2 sigma_max^2))], of
  order |x0| / sigma_max nats (32x32x3 images in [-1, 1] at sigma_max = 80: under 1 nat, 5e-4 bits/dim).
  rng, trace, probe, rtol, atol: as `likelihood.ode_log_likelihood`.
  """
  return likelihood.ode_log_likelihood(ode_drift(denoise), lambda x: likelihood.normal_log_prob(x, sigma_max), x0,
                                       rng, sigma_min, sigma_max, trace=trace, probe=probe, rtol=rtol, atol=atol)


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class EDM(Process):
  """EDM with its data scale and the sampler's noise-level range."""

  sigma_data: float = SIGMA_DATA
  sigma_min: float = SIGMA_MIN
  sigma_max: float = SIGMA_MAX
  rho: float = RHO

  def denoiser(self, net):
    """D(x, sigma [B]) from net(x_in, c_noise) -> F."""
    return denoiser(net, self.sigma_data)

  def sigma_of(self, c_noise: jax.Array) -> jax.Array:
    """sigma = exp(4 c_noise)."""
    return jnp.exp(4.0 * c_noise)


@PROCESSES.register("edm")
def build(config: ml_collections.ConfigDict, network, image_shape) -> EDM:
  """Karras et al. (2022): the preconditioned denoiser, log-normal training noise with the lambda weighting,
  the Heun sampler over the rho-spaced levels, and the probability-flow ODE's bits/dim held out."""
  d, s = config.diffusion, config.sample
  likelihood.check_trace(d.likelihood_trace)
  require(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", "need 0 < sigma_min < sigma_max")
  require(d.rho > 0 and d.sigma_data > 0 and d.p_std > 0, "diffusion.rho", "rho, sigma_data and p_std must be > 0")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  require(s.s_churn >= 0 and s.s_noise >= 0, "sample.s_churn", "s_churn and s_noise must be >= 0")
  ctx = lambda train: EDMContext(
      lambda params, x_in, c_noise, rng, labels=None: network(params, x_in, c_noise, rng, train, labels),
      d.sigma_data, d.p_mean, d.p_std)

  def held_out_log_likelihood(net, x, rng):
    return log_likelihood(denoiser(net, d.sigma_data), x, rng, d.sigma_min, d.sigma_max, trace=d.likelihood_trace)

  return EDM(losses=LOSSES, train_ctx=ctx(True), eval_ctx=ctx(False), samplers=SAMPLERS,
             held_out=likelihood.ode_bpd(network, held_out_log_likelihood, image_shape), sigma_data=d.sigma_data,
             sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho)
