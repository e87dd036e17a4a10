"""Continuous-time noise processes: EDM (Karras et al. 2022) and flow matching / rectified flow
(Lipman et al. 2023; Liu et al. 2023), as pure functions of the noise level.

EDM: x = x_0 + sigma n, sigma in [sigma_min, sigma_max]; the denoiser is preconditioned,
D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (the paper's eq. 7 and Table 1), trained at
log-normal sigma with the weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
Flow: x_t = (1 - t) x_0 + t eps, t in [0, 1]; the network predicts the velocity eps - x_0.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def edm_preconditioning(sigma: jax.Array, sigma_data: float = SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` (any shape, float): Table 1 of Karras et al.

  c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4.
  """
  total = sigma**2 + sigma_data**2
  return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0


def edm_loss_weight(sigma: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which makes lambda c_out^2 = 1 (eq. 8)."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_training_sigmas(rng: jax.Array, num: int, p_mean: float = P_MEAN, p_std: float = P_STD) -> jax.Array:
  """num noise levels [num] float32, ln(sigma) ~ N(p_mean, p_std^2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (num,), jnp.float32))


def edm_sigma_steps(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                    rho: float = RHO) -> np.ndarray:
  """The sampler's noise levels, float64 [num_steps + 1] (eq. 5), from sigma_max down to sigma_min, then 0:
  sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
  if num_steps < 1:
    raise ValueError(f"the EDM sampler needs at least one step, got {num_steps}")
  i = np.arange(num_steps, dtype=np.float64)
  ramp = i / max(num_steps - 1, 1)
  sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.concatenate([sigmas, [0.0]])


def edm_denoiser(network, sigma_data: float = SIGMA_DATA):
  """D(x, sigma) = c_skip x + c_out network(c_in x, c_noise) for x [B, ...] and sigma [B] (eq. 7)."""
  def denoise(x: jax.Array, sigma: jax.Array) -> jax.Array:
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
    expand = lambda c: c.reshape((-1,) + (1,) * (x.ndim - 1))
    return expand(c_skip) * x + expand(c_out) * network(expand(c_in) * x, c_noise)

  return denoise


def edm_ode_drift(denoise):
  """The probability-flow ODE of EDM (eq. 3 with sigma(t) = t): f(x, sigma) = dx/dsigma =
  (x - D(x; sigma)) / sigma for x [B, ...] and sigma [B] > 0, with denoise(x, sigma) -> D(x; sigma)."""
  def drift(x: jax.Array, sigma: jax.Array) -> jax.Array:
    return (x - denoise(x, sigma)) / sigma.reshape((-1,) + (1,) * (x.ndim - 1))

  return drift


def flow_interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t eps; x0, eps [B, ...], t [B] in [0, 1]."""
  t = t.reshape((-1,) + (1,) * (x0.ndim - 1))
  return (1.0 - t) * x0 + t * eps


def flow_velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
  """d x_t / dt = eps - x0, the flow-matching regression target."""
  return eps - x0


def flow_training_times(rng: jax.Array, num: int, schedule: str = "uniform") -> jax.Array:
  """t [num] float32 in (0, 1): uniform, or logit-normal (sigmoid of N(0, 1), Esser et al. 2024)."""
  if schedule == "uniform":
    return jax.random.uniform(rng, (num,), jnp.float32)
  if schedule == "logit_normal":
    return jax.nn.sigmoid(jax.random.normal(rng, (num,), jnp.float32))
  raise ValueError(f"unknown flow time schedule {schedule!r}; choose uniform or logit_normal")


@dataclasses.dataclass(frozen=True)
class ContinuousContext:
  """What the continuous-time losses need besides (params, batch, rng); static under jit.

  network(params, x_in [B, H, W, C], noise_label [B] float32, rng, labels=None) -> output [B, H, W, C] in
  training mode: for EDM the raw F of D = c_skip x + c_out F(c_in x; c_noise), for flow the velocity;
  labels: the batch's "label" [B] int32, which an unconditional network ignores (None: a conditional
  one's null label).
  """

  network: Callable[..., jax.Array]
  sigma_data: float = SIGMA_DATA
  p_mean: float = P_MEAN
  p_std: float = P_STD
  time_schedule: str = "uniform"  # flow: uniform | logit_normal


def edm_loss(params, batch: dict, rng: jax.Array, *, ctx: ContinuousContext):
  """EDM's training loss (Karras et al. 2022, eq. 2 with Table 1): ln(sigma) ~ N(P_mean, P_std^2),
  x = x0 + sigma n, loss = mean of lambda(sigma) ||D(x; sigma) - x0||^2 over pixels and images.
  batch["image"]: [B, H, W, C] float32 in [-1, 1]. Returns (scalar, metrics)."""
  x0 = batch["image"]
  sigma_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  sigma = edm_training_sigmas(sigma_rng, x0.shape[0], ctx.p_mean, ctx.p_std)
  x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * jax.random.normal(noise_rng, x0.shape, x0.dtype)
  denoised = edm_denoiser(lambda x_in, c_noise: ctx.network(params, x_in, c_noise, dropout_rng, batch.get("label")),
                          ctx.sigma_data)
  per_image = jnp.mean(jnp.square(denoised(x, sigma) - x0), axis=tuple(range(1, x0.ndim)))
  loss = jnp.mean(edm_loss_weight(sigma, ctx.sigma_data) * per_image)
  return loss, {"loss": loss}


def flow_loss(params, batch: dict, rng: jax.Array, *, ctx: ContinuousContext):
  """Conditional flow matching: t from ctx.time_schedule, x_t = (1 - t) x0 + t eps, loss = mean
  squared error of the predicted velocity against eps - x0. Returns (scalar, metrics)."""
  x0 = batch["image"]
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = flow_training_times(t_rng, x0.shape[0], ctx.time_schedule)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  velocity = ctx.network(params, flow_interpolate(x0, eps, t), t, dropout_rng, batch.get("label"))
  loss = jnp.mean(jnp.square(velocity - flow_velocity_target(x0, eps)))
  return loss, {"loss": loss}
