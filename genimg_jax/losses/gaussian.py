"""Diagonal Gaussians: the log-density and the KL divergence, elementwise in nats."""

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def log_prob(z: jax.Array, mean: jax.Array | float = 0.0, log_var: jax.Array | float = 0.0) -> jax.Array:
  """log N(z; mean, e^log_var) elementwise, in nats; the defaults give the standard normal.
  Arguments broadcast together; returns their broadcast shape."""
  return -0.5 * (LOG_2PI + log_var + jnp.square(z - mean) * jnp.exp(-log_var))


def kl(mean: jax.Array, log_var: jax.Array, prior_mean: jax.Array | float = 0.0,
       prior_log_var: jax.Array | float = 0.0) -> jax.Array:
  """KL(N(mean, e^log_var) || N(prior_mean, e^prior_log_var)) elementwise, in nats.

  All arguments broadcast together; returns their broadcast shape. The defaults give
  the KL to the standard normal.
  """
  return 0.5 * (prior_log_var - log_var
                + (jnp.exp(log_var) + jnp.square(mean - prior_mean)) * jnp.exp(-prior_log_var) - 1.0)
