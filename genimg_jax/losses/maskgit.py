"""MaskGIT's training objective (Chang et al. 2022): cosine masking schedule, cross-entropy on the masked tokens.

A training sequence of L tokens gets u ~ U(0, 1), mask ratio r = cos(pi/2 u) (its mean is 2/pi), and the
n = max(1, floor(r L)) positions with the smallest uniform scores are masked (a uniformly random set of n).
The loss is the mean over the batch's masked positions of -log p(true token).
"""

import jax
import jax.numpy as jnp


def mask_ratio(u: jax.Array) -> jax.Array:
  """The cosine schedule: u in [0, 1] -> the fraction of tokens masked, cos(pi/2 u) (same shape, float32)."""
  return jnp.cos(0.5 * jnp.pi * u)


def random_mask(rng: jax.Array, batch: int, length: int) -> jax.Array:
  """[batch, length] bool: per row, max(1, floor(mask_ratio(u) length)) positions chosen uniformly at random,
  u ~ U(0, 1) per row."""
  u_rng, order_rng = jax.random.split(rng)
  u = jax.random.uniform(u_rng, (batch, 1))
  count = jnp.maximum(1, jnp.floor(mask_ratio(u) * length)).astype(jnp.int32)
  scores = jax.random.uniform(order_rng, (batch, length))
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < count


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """logits [B, L, K] float32, targets [B, L] int32, mask [B, L] bool -> the mean over masked positions of
  -log softmax(logits)[target] (float32 scalar); unmasked positions do not enter it."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = mask.astype(jnp.float32)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
