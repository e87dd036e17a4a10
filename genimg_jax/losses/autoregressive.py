"""Exact pixel likelihoods of autoregressive models: tokens, negative log-likelihood, bits/dim.

A float image x in [-1, 1] holds 8-bit values k = round((x + 1) * 127.5), the
inverse of `images.uint8_to_float`; the token sequence of an image [H, W, C] is
its L = H * W * C values in raster order, channels interleaved. The likelihood
is exact (a categorical over 256 values per sub-pixel), so nats/dim and bits/dim
need no dequantisation correction.

A loss is selected by config.loss.name from LOSSES, or is the user's own `module:function`
with nll_loss's signature.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genimg_jax import images
from genimg_jax.losses import likelihoods
from genimg_jax.registry import Registry

LOSSES = Registry("loss.name", "autoregressive loss")

# The 256 floats of 8-bit values and the midpoints between neighbours, by the library's conversion.
_LEVELS = images.uint8_to_float(np.arange(256))
_MIDPOINTS = (_LEVELS[1:] + _LEVELS[:-1]) / 2


def image_to_tokens(x: jax.Array) -> jax.Array:
  """Images [B, H, W, C] float in [-1, 1] -> tokens [B, H * W * C] int32 in 0..255, raster order.

  Each value maps to the nearest `images.uint8_to_float` level (values outside
  [-1, 1] to 0 or 255): the exact inverse for images made by that function, and
  equal to `images.float_to_uint8` away from exact midpoints between levels
  (that one is NumPy-only, so it cannot run under jit).
  """
  tokens = jnp.searchsorted(jnp.asarray(_MIDPOINTS), x.astype(jnp.float32), side="left")
  return tokens.reshape(x.shape[0], -1).astype(jnp.int32)


def tokens_to_image(tokens: jax.Array, image_shape: tuple[int, int, int]) -> jax.Array:
  """Tokens [B, L] int in 0..255 -> images [B, H, W, C] float32 in [-1, 1] (images.uint8_to_float).

  Clipped to [-1, 1]: under jit XLA may divide by 127.5 as a multiplication by its
  rounded reciprocal, which puts 255 one float32 step above 1.
  """
  x = images.uint8_to_float(tokens.reshape((tokens.shape[0],) + tuple(image_shape)))
  return jnp.clip(x, -1.0, 1.0)


def nats_per_dim(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Negative log-likelihood per example in nats per sub-pixel.

  logits: [B, L, 256] (computed in float32); tokens: [B, L] int. Returns [B] float32:
  -mean_i log softmax(logits[b, i])[tokens[b, i]].
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return -jnp.mean(token_log_probs, axis=-1)


@dataclasses.dataclass(frozen=True)
class ModelContext:
  """What an autoregressive loss needs besides (params, batch, rng); static under jit.

  logits(params, tokens [B, L] int32, labels [B] int32, rng) -> [B, L, 256] float32,
  the logits of each token given the tokens before it (dropout on in training).
  """

  logits: Callable[..., jax.Array]


@LOSSES.register("nll")
def nll_loss(params, batch: dict, rng: jax.Array, *, ctx: ModelContext):
  """Teacher-forced negative log-likelihood of the batch, in nats/dim.

  batch["image"]: [B, H, W, C] float32 in [-1, 1]; batch["label"]: [B] int.
  Returns (scalar loss = mean nats/dim, metrics: loss, nats_per_dim, bits_per_dim).
  """
  tokens = image_to_tokens(batch["image"])
  nats = jnp.mean(nats_per_dim(ctx.logits(params, tokens, batch["label"], rng), tokens))
  return nats, {"loss": nats, "nats_per_dim": nats, "bits_per_dim": likelihoods.bits_per_dim(nats)}
