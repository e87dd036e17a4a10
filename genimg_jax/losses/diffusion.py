"""Diffusion objectives: beta schedules, the forward process, and denoising losses.

Discrete time t in {0, ..., T-1}; t = 0 is the least noisy step. Notation follows
Ho et al. (2020): alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s,
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
"""

import dataclasses
import math
from typing import Callable, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Prediction = Literal["eps", "v", "x0"]
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


@flax.struct.dataclass
class Schedule:
  """Per-timestep coefficients [T], computed in float64 then cast to `dtype` (float32 by default)."""

  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  posterior_variance: jax.Array  # beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)

  @classmethod
  def from_betas(cls, betas: np.ndarray, dtype=jnp.float32) -> "Schedule":
    betas = np.asarray(betas, np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    cast = lambda a: jnp.asarray(a, dtype)
    return cls(cast(betas), cast(abar), cast(abar_prev), cast(post_var))

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def _bcast(coef: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """coef[t] as [B, 1, ..., 1] with `ndim` dims in all."""
  return coef[t].reshape((-1,) + (1,) * (ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise [B, ...]; t [B] int."""
  abar = _bcast(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def prediction_target(prediction: Prediction, schedule: Schedule, x0, t, noise) -> jax.Array:
  """What a network of the given parameterization should output. Shapes as x0."""
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  if prediction == "v":
    abar = _bcast(schedule.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def to_x0_and_eps(prediction: Prediction, schedule: Schedule, output, x_t, t):
  """(x0_hat, eps_hat) from a network output of the given parameterization. Shapes as x_t."""
  abar = _bcast(schedule.alphas_cumprod, t, x_t.ndim)
  sa, s1a = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if prediction == "eps":
    return (x_t - s1a * output) / sa, output
  if prediction == "x0":
    return output, (x_t - sa * output) / s1a
  if prediction == "v":
    x0 = sa * x_t - s1a * output
    return x0, s1a * x_t + sa * output
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


@dataclasses.dataclass(frozen=True)
class DenoiserContext:
  """What a diffusion loss needs besides (params, batch, rng); static under jit.

  denoise(params, x_t [B,H,W,C], t [B] int32, rng) -> network output [B,H,W,C]
  in the `prediction` parameterization, in training mode (dropout on).
  """

  denoise: Callable[..., jax.Array]
  schedule: Schedule
  prediction: Prediction


def noised_batch(ctx: DenoiserContext, x0: jax.Array, rng: jax.Array):
  """Draw t ~ U{0..T-1} and noise ~ N(0, I) and noise x0.

  Returns (t [B] int32, noise, x_t, dropout_rng); noise and x_t shaped like x0.
  """
  t_rng, n_rng, d_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, ctx.schedule.num_timesteps, dtype=jnp.int32)
  noise = jax.random.normal(n_rng, x0.shape, x0.dtype)
  return t, noise, q_sample(ctx.schedule, x0, t, noise), d_rng


def simple_loss(params, batch: dict, rng: jax.Array, *, ctx: DenoiserContext):
  """The 'simple' objective: mean squared error of the network's prediction target.

  batch["image"]: [B, H, W, C] float32 in [-1, 1]. Returns (scalar loss, metrics).
  With prediction="eps" this is L_simple of Ho et al. (2020).
  """
  x0 = batch["image"]
  t, noise, x_t, d_rng = noised_batch(ctx, x0, rng)
  output = ctx.denoise(params, x_t, t, d_rng)
  target = prediction_target(ctx.prediction, ctx.schedule, x0, t, noise)
  loss = jnp.mean(jnp.square(output - target))
  return loss, {"loss": loss}


BUILTIN_LOSSES = {"simple": simple_loss}
