"""MaskGIT's iterative parallel decoding (Chang et al. 2022, section 3.2), the whole loop one `lax.scan`.

Start from every token masked. At step t = 1..T (T = sample.steps, the NFE): one network pass gives logits
for all positions; a token is drawn at every masked position (temperature 1); its confidence is its log-prob
plus Gumbel noise scaled by temperature (1 - t/T) (kept tokens: +inf); then the n_t = floor(L cos(pi/2 t/T))
least confident drawn tokens are masked again (at least 1 and at most the masked count - 1 before the last
step, 0 at the last), so the cosine schedule decides how many stay masked. This follows the paper's
reference code (maskgit/libml/parallel_decode.py).
"""

from typing import Callable

import jax
import jax.numpy as jnp


def decode(logits_fn: Callable[[jax.Array], jax.Array], rng: jax.Array, batch: int, length: int,
           num_tokens: int, steps: int, temperature: float) -> jax.Array:
  """Tokens [batch, length] int32 in [0, num_tokens) decoded in `steps` calls of logits_fn.

  logits_fn(tokens [batch, length] int32, [MASK] = num_tokens) -> logits [batch, length, num_tokens] float32.
  temperature >= 0 scales the Gumbel noise on the confidence (0: re-mask strictly the least likely draws).
  """
  mask_token = num_tokens

  def step(tokens, t):
    draw_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, t))
    log_probs = jax.nn.log_softmax(logits_fn(tokens).astype(jnp.float32), axis=-1)
    unknown = tokens == mask_token
    drawn = jnp.where(unknown, jax.random.categorical(draw_rng, log_probs, axis=-1).astype(jnp.int32), tokens)
    ratio = (t + 1.0) / steps
    chosen = jnp.take_along_axis(log_probs, drawn[..., None], axis=-1)[..., 0]
    noise = temperature * (1.0 - ratio) * jax.random.gumbel(noise_rng, chosen.shape)
    confidence = jnp.where(unknown, chosen + noise, jnp.inf)
    remaining = jnp.sum(unknown, axis=-1, keepdims=True)
    count = jnp.floor(length * jnp.cos(0.5 * jnp.pi * ratio)).astype(jnp.int32)
    count = jnp.where(t == steps - 1, 0, jnp.maximum(1, jnp.minimum(remaining - 1, count)))
    ranks = jnp.argsort(jnp.argsort(confidence, axis=-1, stable=True), axis=-1, stable=True)
    return jnp.where(ranks < count, mask_token, drawn), None

  start = jnp.full((batch, length), mask_token, jnp.int32)
  tokens, _ = jax.lax.scan(step, start, jnp.arange(steps))
  return tokens


def guided(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], labels: jax.Array, null_label: int,
           guidance: float) -> Callable[[jax.Array], jax.Array]:
  """tokens -> (1 + w) logits(tokens, labels) - w logits(tokens, null) for w = guidance > 0, the two in one
  pass over the doubled batch; logits(tokens, labels) alone for w = 0. labels: [B] int32."""
  if not guidance:
    return lambda tokens: logits_fn(tokens, labels)

  def logits(tokens):
    both = logits_fn(jnp.concatenate([tokens, tokens]), jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
    cond, uncond = jnp.split(both, 2)
    return (1.0 + guidance) * cond - guidance * uncond

  return logits
