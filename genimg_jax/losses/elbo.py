"""ELBO and KL terms of a VAE with a diagonal Gaussian posterior and a standard normal prior.

Notation: q(z|x) = N(mean, exp(log_var)) elementwise, p(z) = N(0, I). A
`log_likelihood_fn(z) -> [N]` gives log p(x|z) in nats for a batch of N latents and
the matching images; the functions here only combine it with the latent terms.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from genimg_jax.losses import gaussian

LogLikelihoodFn = Callable[[jax.Array], jax.Array]


def reparameterize(mean: jax.Array, log_var: jax.Array, noise: jax.Array) -> jax.Array:
  """z = mean + exp(log_var / 2) * noise: a draw of q(z|x) differentiable in mean and log_var.

  noise ~ N(0, I) broadcastable to mean (a leading sample axis is allowed).
  """
  return mean + jnp.exp(0.5 * log_var) * noise


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
  """beta * min(1, step / warmup_steps): the KL weight, rising linearly from 0 (no warm-up if 0)."""
  if warmup_steps == 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def free_bits_kl(kl: jax.Array, free_bits: float) -> jax.Array:
  """The free-bits KL of Kingma et al. (2016): sum_j max(free_bits, mean_b kl[b, j]).

  Each latent dimension's KL, averaged over the batch, counts at least `free_bits`
  nats, so the objective does not push it below that (its gradient is 0 there).

  Args:
    kl: [B, ...] per-example, per-dimension KL in nats.
    free_bits: nats per latent dimension; 0 gives the batch mean of the summed KL.
  Returns:
    scalar, nats per example.
  """
  return jnp.sum(jnp.maximum(free_bits, jnp.mean(kl, axis=0)))


def single_sample_elbo(log_likelihood_fn: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array,
                       noise: jax.Array, analytic_kl: bool = True):
  """One-sample ELBO estimate: log p(x|z) - KL(q(z|x) || p(z)) at z = mean + sigma * noise.

  Args:
    log_likelihood_fn: z [B, ...] -> log p(x|z) [B].
    mean, log_var, noise: [B, ...] (latent shape after the batch axis).
    analytic_kl: the closed-form KL; else its one-sample estimate log q(z|x) - log p(z).
  Returns:
    (elbo [B], log_likelihood [B], kl [B, ...]) in nats; kl is per latent dimension.
  """
  z = reparameterize(mean, log_var, noise)
  log_likelihood = log_likelihood_fn(z)
  if analytic_kl:
    kl = gaussian.kl(mean, log_var)
  else:
    kl = gaussian.log_prob(z, mean, log_var) - gaussian.log_prob(z)
  return log_likelihood - _sum_latent(kl), log_likelihood, kl


def _sum_latent(values: jax.Array) -> jax.Array:
  """[B, ...] -> [B]: summed over the latent dimensions."""
  return values.reshape(values.shape[0], -1).sum(-1)


def importance_noise(rng: jax.Array, sample_indices: jax.Array, latent_shape) -> jax.Array:
  """N(0, I) noise of the given IWAE samples: [len(sample_indices), *latent_shape].

  Sample k's noise comes from key fold_in(rng, k), so it does not depend on the chunking.
  """
  draw = lambda k: jax.random.normal(jax.random.fold_in(rng, k), tuple(latent_shape))
  return jax.vmap(draw)(sample_indices)


def importance_weighted_bound(log_likelihood_fn: LogLikelihoodFn, mean: jax.Array, log_var: jax.Array,
                              rng: jax.Array, num_samples: int, chunk_size: int) -> jax.Array:
  """The IWAE bound (Burda et al. 2016): log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x).

  The K samples are drawn and decoded `chunk_size` at a time in a sequential loop,
  so memory grows with chunk_size, not K. Sample k's noise is
  `importance_noise(rng, jnp.array([k]), mean.shape)[0]` whatever the chunk size; with
  K = 1 the bound is `single_sample_elbo(..., analytic_kl=False)` on that noise.

  Args:
    log_likelihood_fn: z [chunk_size * B, ...] -> log p(x|z) [chunk_size * B], the
      images repeated chunk_size times (sample-major: row s * B + b is image b).
    mean, log_var: [B, ...] posterior parameters.
    rng: key of the noise.
    num_samples: K, a multiple of chunk_size.
  Returns:
    [B] lower bounds on log p(x), nats.
  """
  if num_samples % chunk_size:
    raise ValueError(f"num_samples={num_samples} is not a multiple of chunk_size={chunk_size}")
  batch = mean.shape[0]

  def chunk_log_weights(chunk):
    noise = importance_noise(rng, chunk * chunk_size + jnp.arange(chunk_size), mean.shape)
    z = reparameterize(mean, log_var, noise)  # [chunk_size, B, ...]
    log_likelihood = log_likelihood_fn(z.reshape((chunk_size * batch,) + mean.shape[1:]))
    log_prior_over_posterior = gaussian.log_prob(z) - gaussian.log_prob(z, mean, log_var)
    latent = log_prior_over_posterior.reshape(chunk_size, batch, -1).sum(-1)
    return log_likelihood.reshape(chunk_size, batch) + latent

  log_weights = jax.lax.map(chunk_log_weights, jnp.arange(num_samples // chunk_size))
  return jax.nn.logsumexp(log_weights.reshape(num_samples, batch), axis=0) - math.log(num_samples)
