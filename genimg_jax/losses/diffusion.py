"""Diffusion objectives: the denoising loss and Ho et al.'s variational bound, on the noise process
of genimg_jax.losses.noise (schedules, forward process, posterior, parameterisations).

Discrete time t in {0, ..., T-1}; t = 0 is the least noisy step. Notation follows
Ho et al. (2020): alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s,
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from genimg_jax.losses import gaussian, noise
from genimg_jax.losses.noise import Schedule


@dataclasses.dataclass(frozen=True)
class DenoiserContext:
  """What a diffusion loss needs besides (params, batch, rng); static under jit.

  denoise(params, x_t [B,H,W,C], t [B] int32, rng, labels=None) -> network output [B,H,W,C]
  in the `prediction` parameterization, in training mode (dropout on); labels: the batch's "label"
  [B] int32, which an unconditional network ignores (None: a conditional one's null label).
  """

  denoise: Callable[..., jax.Array]
  schedule: Schedule
  prediction: str  # one of noise.PREDICTIONS


def noised_batch(ctx: DenoiserContext, x0: jax.Array, rng: jax.Array):
  """Draw t ~ U{0..T-1} and eps ~ N(0, I) and noise x0.

  Returns (t [B] int32, eps, x_t, dropout_rng); eps and x_t shaped like x0.
  """
  t_rng, n_rng, d_rng = jax.random.split(rng, 3)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, ctx.schedule.num_timesteps, dtype=jnp.int32)
  eps = jax.random.normal(n_rng, x0.shape, x0.dtype)
  return t, eps, noise.q_sample(ctx.schedule, x0, t, eps), d_rng


def simple_loss(params, batch: dict, rng: jax.Array, *, ctx: DenoiserContext):
  """The 'simple' objective: mean squared error of the network's prediction target.

  batch["image"]: [B, H, W, C] float32 in [-1, 1]. Returns (scalar loss, metrics).
  With prediction="eps" this is L_simple of Ho et al. (2020).
  """
  x0 = batch["image"]
  t, eps, x_t, d_rng = noised_batch(ctx, x0, rng)
  output = ctx.denoise(params, x_t, t, d_rng, batch.get("label"))
  target = ctx.schedule.parameterizations[ctx.prediction].target(x0, eps, t)
  loss = jnp.mean(jnp.square(output - target))
  return loss, {"loss": loss}


BUILTIN_LOSSES = {"simple": simple_loss}


# ---- The variational bound (Ho et al. 2020, eq. 5) in nats and bits/dim. ------------------------

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


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) per image [B], in nats (no network involved)."""
  abar = schedule.alphas_cumprod[-1]
  kl = gaussian.kl(jnp.sqrt(abar) * x0, jnp.log1p(-abar), 0.0, 0.0)
  return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


def vlb_term(ctx: DenoiserContext, params, x0: jax.Array, t: jax.Array, eps: jax.Array, rng: jax.Array,
             *, variance: str = "beta_tilde", clip_x0: bool = True, labels: jax.Array | None = None) -> jax.Array:
  """One term of the bound per image [B], in nats, at x_t = q_sample(x0, t, eps).

  t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)). t = 0: the
  discretised decoder's -log p(x_0 | x_1) over 8-bit bins. The model's mean is
  the posterior mean at its x0 estimate (clipped to [-1, 1] if clip_x0, as the
  sampler does); its variance is fixed (`reverse_log_variances`). x0 must lie on
  the 8-bit grid. x0, noise [B, H, W, C]; t [B] int32, one value for the batch; labels [B] int32 or None
  (a class-conditional model's classes).
  """
  s = ctx.schedule
  x_t = noise.q_sample(s, x0, t, eps)
  x0_hat, _ = s.parameterizations[ctx.prediction].x0_eps(ctx.denoise(params, x_t, t, rng, labels), x_t, t)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  model_mean = noise.posterior_mean(s, x0_hat, x_t, t)
  model_logvar = noise.at(noise.reverse_log_variances(s, variance), t, x0.ndim)
  axes = tuple(range(1, x0.ndim))
  kl = gaussian.kl(noise.posterior_mean(s, x0, x_t, t), noise.at(jnp.log(s.posterior_variance), t, x0.ndim),
                   model_mean, model_logvar)
  decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
  return jnp.where(t == 0, jnp.sum(decoder_nll, axis=axes), jnp.sum(kl, axis=axes))


def variational_bound(ctx: DenoiserContext, params, x0: jax.Array, rng: jax.Array, *,
                      variance: str = "beta_tilde", clip_x0: bool = True,
                      labels: jax.Array | None = None) -> dict[str, jax.Array]:
  """Ho et al.'s L_vlb = L_T + sum_{t>=1} L_{t-1} + L_0 for images x0 [B, H, W, C] on the 8-bit grid.

  Every one of the T terms is evaluated (one network call each, in a scan); the
  noise eps of term t is normal(fold_in(rng, t)). Returns per-image [B] float32
  values in nats: 'total', 'prior' (L_T), 'decoder' (L_0) and 'diffusion' (the
  sum of the T - 1 KL terms). An upper bound on -log P(x0) of the 8-bit image (given `labels` [B]
  int32 for a class-conditional model).
  """
  def term(total, t):
    tb = jnp.full((x0.shape[0],), t, jnp.int32)
    t_rng = jax.random.fold_in(rng, t)
    eps = jax.random.normal(jax.random.fold_in(t_rng, 0), x0.shape, x0.dtype)
    value = vlb_term(ctx, params, x0, tb, eps, jax.random.fold_in(t_rng, 1), variance=variance,
                     clip_x0=clip_x0, labels=labels)
    return total + jnp.where(t > 0, value, 0.0), value

  diffusion, per_t = jax.lax.scan(term, jnp.zeros(x0.shape[:1], jnp.float32),
                                  jnp.arange(ctx.schedule.num_timesteps))
  prior = prior_kl(ctx.schedule, x0)
  decoder = per_t[0]
  return {"total": prior + diffusion + decoder, "prior": prior, "decoder": decoder, "diffusion": diffusion}

