"""Token-by-token decoding of an autoregressive model, each whole loop one `lax.scan`.

cached: one position per step through a key/value cache; a step costs one token's
  projections and MLPs plus one attention read of the cache, so the cost grows
  linearly with the number of tokens (up to that read).
uncached: the full causal forward pass at every step, keeping one position's
  logits; quadratic in the number of tokens. The reference the cache is checked
  against, and the baseline of the speed benchmark.
The token at position i is drawn with key fold_in(rng, i) in both, so the same key
gives the same samples either way.

config.sample.sampler selects one of SAMPLERS or the user's own `module:function`, called as
sampler(model, num, rng, options) -> tokens [num, model.num_tokens] int32, with `model` a
`Decoder` and options the config's `sample` section (temperature, top_k, ...).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from genimg_jax.registry import Registry

SAMPLERS = Registry("sample.sampler", "autoregressive sampler")


@dataclasses.dataclass(frozen=True)
class Decoder:
  """The model a sampler draws from, parameters and class labels bound, in eval mode.

  forward(tokens [B, L] int32) -> logits [B, L, V] float32, causal.
  decode_step(previous [B] int32, position int32, cache) -> (logits [B, V] float32, cache).
  init_cache(batch) -> the empty key/value cache for `batch` rows. num_tokens: L.
  """

  forward: Callable[[jax.Array], jax.Array]
  decode_step: Callable
  init_cache: Callable[[int], Any]
  num_tokens: int


def choose_tokens(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Draws one token per row from softmax(logits / temperature), restricted to the top_k largest.

  logits: [B, V] float32. temperature >= 0 (0: greedy, the argmax; the limit of
  temperature -> 0); top_k: 0 for all V tokens. Returns [B] int32.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def decode(decode_step: Callable, cache: Any, batch: int, num_tokens: int,
           pick: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]) -> Any:
  """Runs the cached decoder over positions 0..num_tokens-1.

  decode_step(previous [B] int32, position int32, cache) -> (logits [B, V] float32, cache).
  pick(logits, position) -> (the token fed to the next step [B] int32, an output pytree).
  Returns pick's outputs stacked over positions, leading axis num_tokens.
  """

  def step(carry, position):
    cache, previous = carry
    logits, cache = decode_step(previous, position, cache)
    token, output = pick(logits, position)
    return (cache, token), output

  positions = jnp.arange(num_tokens, dtype=jnp.int32)
  _, outputs = jax.lax.scan(step, (cache, jnp.zeros((batch,), jnp.int32)), positions)
  return outputs


def sample_cached(decode_step: Callable, cache: Any, batch: int, num_tokens: int, rng: jax.Array,
                  temperature: float, top_k: int) -> jax.Array:
  """Samples [batch, num_tokens] int32 tokens with the cached decoder (see `decode`)."""

  def pick(logits, position):
    token = choose_tokens(logits, jax.random.fold_in(rng, position), temperature, top_k)
    return token, token

  return decode(decode_step, cache, batch, num_tokens, pick).T


def sample_uncached(forward: Callable, batch: int, num_tokens: int, rng: jax.Array,
                    temperature: float, top_k: int) -> jax.Array:
  """Samples [batch, num_tokens] int32 tokens, re-running the full forward pass for every token.

  forward(tokens [B, L] int32) -> logits [B, L, V] float32, causal: the logits at
  position i depend only on tokens before i, so the not-yet-drawn zeros after the
  current position do not matter.
  """

  def step(tokens, position):
    logits = jax.lax.dynamic_index_in_dim(forward(tokens), position, axis=1, keepdims=False)
    token = choose_tokens(logits, jax.random.fold_in(rng, position), temperature, top_k)
    return tokens.at[:, position].set(token), None

  positions = jnp.arange(num_tokens, dtype=jnp.int32)
  tokens, _ = jax.lax.scan(step, jnp.zeros((batch, num_tokens), jnp.int32), positions)
  return tokens


@SAMPLERS.register("cached")
def cached_sampler(model: Decoder, num: int, rng: jax.Array, options: ml_collections.ConfigDict) -> jax.Array:
  """`sample_cached` with options.temperature and options.top_k: tokens [num, L] int32."""
  return sample_cached(model.decode_step, model.init_cache(num), num, model.num_tokens, rng, options.temperature,
                       options.top_k)


@SAMPLERS.register("uncached")
def uncached_sampler(model: Decoder, num: int, rng: jax.Array, options: ml_collections.ConfigDict) -> jax.Array:
  """`sample_uncached` with options.temperature and options.top_k: tokens [num, L] int32."""
  return sample_uncached(model.forward, num, model.num_tokens, rng, options.temperature, options.top_k)
