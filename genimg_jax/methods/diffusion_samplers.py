"""Reverse-process samplers by name (`sample.sampler`): DDPM ancestral (Ho et al. 2020) and DDIM
(Song et al. 2021), on the coefficients of genimg_jax.losses.noise.

Each runs its whole loop in one `lax.scan`. `predict(x_t, t) -> (x0_hat, eps_hat)`
is the denoiser in eval mode. The noise added at timestep t is
normal(fold_in(rng, t)), so two samplers visiting the same timesteps with the
same `rng` see the same noise; x_T is normal(fold_in(rng, T)).
A new sampler is one function decorated with `@SAMPLERS.register(name)`, taking
(predict, schedule, rng, shape, options) with options the config's `sample` section.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.losses import noise
from genimg_jax.losses.noise import Schedule
from genimg_jax.registry import Registry

Predictor = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
SAMPLERS = Registry("sample.sampler", "diffusion sampler")


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
  """Ancestral sampling through all T steps. Returns x_0 [B, H, W, C] in the schedule's dtype.

  x_{t-1} = mu~_t(x0_hat, x_t) + sigma_t z (the posterior mean with the schedule's float64-computed
  coefficients), sigma_t^2 = beta-tilde_t (the posterior variance, "fixedsmall") or beta_t
  ("fixedlarge"); no noise at t = 0.
  """
  if variance not in noise.REVERSE_VARIANCES:
    raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {noise.REVERSE_VARIANCES}")
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
  """DDIM over `num_steps` timesteps; eta=0 is deterministic, eta=1 with all T
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


@SAMPLERS.register("ddpm")
def ddpm_sampler(predict: Predictor, schedule: Schedule, rng: jax.Array, shape,
                 options: ml_collections.ConfigDict) -> jax.Array:
  """`ddpm` with options.ddpm_variance and options.clip_x0 (options.steps is not used: all T steps)."""
  return ddpm(predict, schedule, rng, shape, variance=options.ddpm_variance, clip_x0=options.clip_x0)


@SAMPLERS.register("ddim")
def ddim_sampler(predict: Predictor, schedule: Schedule, rng: jax.Array, shape,
                 options: ml_collections.ConfigDict) -> jax.Array:
  """`ddim` over options.steps timesteps with options.eta and options.clip_x0."""
  return ddim(predict, schedule, rng, shape, num_steps=options.steps, eta=options.eta, clip_x0=options.clip_x0)
