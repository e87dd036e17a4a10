"""The diffusion noise process: its schedule, the forward process, its posterior, and what the network
predicts, each as per-timestep coefficients computed once in float64 and cast once.

Discrete time t in {0, ..., T-1}, t = 0 the least noisy (Ho et al. 2020): alpha_t = 1 - beta_t,
abar_t = prod_{s<=t} alpha_s, and x_t = a_t x_0 + s_t eps with a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t).
A parameterisation is a linear map between the network output and (x_0, eps): the loss target
and the samplers' estimates are read from the same record (`Parameterization`), so a process with
other (a_t, s_t) gives its own arrays to the same code.
"""

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "v", "x0")
BETA_SCHEDULES = ("linear", "cosine")


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
    return cls(cast(tx0), cast(teps), cast(teps / det), cast(-s / det), cast(-tx0 / det), cast(a / det))

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
  """The discrete process's coefficients [T], computed in float64 then cast to `dtype` (float32 by default).

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
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
    a, s = np.sqrt(abar), np.sqrt(1.0 - abar)
    cast = lambda x: jnp.asarray(x, dtype)
    return cls(cast(betas), cast(abar), cast(abar_prev), cast(post_var), cast(coef_x0), cast(coef_xt), cast(a),
               cast(s), {name: Parameterization.of(name, a, s, dtype) for name in PREDICTIONS})

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of q(x_t | x_0): a_t x0 + s_t noise. x0, noise [B, ...]; t [B] int."""
  return at(schedule.signal, t, x0.ndim) * x0 + at(schedule.noise, t, x0.ndim) * noise


def posterior_mean(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The mean of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7). x0, x_t [B, ...]; t [B] int."""
  return at(schedule.posterior_coef_x0, t, x0.ndim) * x0 + at(schedule.posterior_coef_xt, t, x0.ndim) * x_t


REVERSE_VARIANCES = ("beta_tilde", "beta")


def reverse_log_variances(schedule: Schedule, variance: str) -> jax.Array:
  """[T] log variances of p(x_{t-1} | x_t): beta-tilde_t ("beta_tilde", "fixedsmall") or beta_t
  ("beta", "fixedlarge"). At t = 0 both use beta-tilde_1 (beta-tilde_0 is 0), as Ho et al.'s code does."""
  if variance not in REVERSE_VARIANCES:
    raise ValueError(f"unknown reverse variance {variance!r}; choose one of {REVERSE_VARIANCES}")
  chosen = schedule.posterior_variance if variance == "beta_tilde" else schedule.betas
  return jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], chosen[1:]]))
