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

from genimg_jax.losses import gaussian

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
  # mean of q(x_{t-1} | x_t, x_0) = coef_x0 x_0 + coef_xt x_t; in float64 first, since
  # 1 - abar_t loses most of its digits in float32 at small t.
  posterior_coef_x0: jax.Array  # beta_t sqrt(abar_{t-1}) / (1 - abar_t)
  posterior_coef_xt: jax.Array  # (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)

  @classmethod
  def from_betas(cls, betas: np.ndarray, dtype=jnp.float32) -> "Schedule":
    betas = np.asarray(betas, np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
    coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
    cast = lambda a: jnp.asarray(a, dtype)
    return cls(cast(betas), cast(abar), cast(abar_prev), cast(post_var), cast(coef_x0), cast(coef_xt))

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


# ---- The variational bound (Ho et al. 2020, eq. 5) in nats and bits/dim. ------------------------

VLB_VARIANCES = ("beta_tilde", "beta")
_LOG_PROB_FLOOR = 1e-12


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(8-bit pixel) per element under N(mean, e^(2 log_scale)), in nats.

  x: images on the 8-bit grid k / 127.5 - 1, k in 0..255. The bin of k is
  x +- 1/255; the bins of 0 and 255 extend to -inf and +inf, so the 256
  probabilities sum to 1. Differences of the normal CDF are taken on the side
  of the tail they lie in, so that narrow Gaussians far from the mean keep
  their precision. Shapes broadcast; float32.
  """
  inv_scale = jnp.exp(-log_scale)
  upper = (x - mean + 1.0 / 255.0) * inv_scale
  lower = (x - mean - 1.0 / 255.0) * inv_scale
  # Phi(upper) - Phi(lower), computed as Phi(-lower) - Phi(-upper) when both are above 0.
  mass = jnp.where(lower > 0, jax.scipy.special.ndtr(-lower) - jax.scipy.special.ndtr(-upper),
                   jax.scipy.special.ndtr(upper) - jax.scipy.special.ndtr(lower))
  interior = jnp.log(jnp.maximum(mass, _LOG_PROB_FLOOR))
  return jnp.where(x < -1.0 + 1.0 / 255.0, jax.scipy.special.log_ndtr(upper),
                   jnp.where(x > 1.0 - 1.0 / 255.0, jax.scipy.special.log_ndtr(-lower), interior))


def posterior_mean(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """The mean of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7). x0, x_t [B, ...]; t [B] int."""
  return (_bcast(schedule.posterior_coef_x0, t, x0.ndim) * x0
          + _bcast(schedule.posterior_coef_xt, t, x0.ndim) * x_t)


def reverse_log_variances(schedule: Schedule, variance: str) -> jax.Array:
  """[T] log variances of p(x_{t-1} | x_t): beta-tilde_t ("beta_tilde") or beta_t ("beta").

  At t = 0 both use beta-tilde_1 (beta-tilde_0 is 0), as Ho et al.'s code does.
  """
  if variance not in VLB_VARIANCES:
    raise ValueError(f"unknown reverse variance {variance!r}; choose one of {VLB_VARIANCES}")
  chosen = schedule.posterior_variance if variance == "beta_tilde" else schedule.betas
  return jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], chosen[1:]]))


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) per image [B], in nats (no network involved)."""
  abar = schedule.alphas_cumprod[-1]
  kl = gaussian.kl(jnp.sqrt(abar) * x0, jnp.log1p(-abar), 0.0, 0.0)
  return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


def vlb_term(ctx: DenoiserContext, params, x0: jax.Array, t: jax.Array, noise: jax.Array, rng: jax.Array,
             *, variance: str = "beta_tilde", clip_x0: bool = True) -> jax.Array:
  """One term of the bound per image [B], in nats, at x_t = q_sample(x0, t, noise).

  t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)). t = 0: the
  discretised decoder's -log p(x_0 | x_1) over 8-bit bins. The model's mean is
  the posterior mean at its x0 estimate (clipped to [-1, 1] if clip_x0, as the
  sampler does); its variance is fixed (`reverse_log_variances`). x0 must lie on
  the 8-bit grid. x0, noise [B, H, W, C]; t [B] int32, one value for the batch.
  """
  s = ctx.schedule
  x_t = q_sample(s, x0, t, noise)
  x0_hat, _ = to_x0_and_eps(ctx.prediction, s, ctx.denoise(params, x_t, t, rng), x_t, t)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  model_mean = posterior_mean(s, x0_hat, x_t, t)
  model_logvar = _bcast(reverse_log_variances(s, variance), t, x0.ndim)
  axes = tuple(range(1, x0.ndim))
  kl = gaussian.kl(posterior_mean(s, x0, x_t, t), _bcast(jnp.log(s.posterior_variance), t, x0.ndim),
                 model_mean, model_logvar)
  decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
  return jnp.where(t == 0, jnp.sum(decoder_nll, axis=axes), jnp.sum(kl, axis=axes))


def variational_bound(ctx: DenoiserContext, params, x0: jax.Array, rng: jax.Array, *,
                      variance: str = "beta_tilde", clip_x0: bool = True) -> dict[str, jax.Array]:
  """Ho et al.'s L_vlb = L_T + sum_{t>=1} L_{t-1} + L_0 for images x0 [B, H, W, C] on the 8-bit grid.

  Every one of the T terms is evaluated (one network call each, in a scan); the
  noise of term t is normal(fold_in(rng, t)). Returns per-image [B] float32
  values in nats: 'total', 'prior' (L_T), 'decoder' (L_0) and 'diffusion' (the
  sum of the T - 1 KL terms). An upper bound on -log P(x0) of the 8-bit image.
  """
  def term(total, t):
    tb = jnp.full((x0.shape[0],), t, jnp.int32)
    t_rng = jax.random.fold_in(rng, t)
    noise = jax.random.normal(jax.random.fold_in(t_rng, 0), x0.shape, x0.dtype)
    value = vlb_term(ctx, params, x0, tb, noise, jax.random.fold_in(t_rng, 1), variance=variance,
                     clip_x0=clip_x0)
    return total + jnp.where(t > 0, value, 0.0), value

  diffusion, per_t = jax.lax.scan(term, jnp.zeros(x0.shape[:1], jnp.float32),
                                  jnp.arange(ctx.schedule.num_timesteps))
  prior = prior_kl(ctx.schedule, x0)
  decoder = per_t[0]
  return {"total": prior + diffusion + decoder, "prior": prior, "decoder": decoder, "diffusion": diffusion}

