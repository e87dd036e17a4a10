"""Likelihoods of 8-bit images: proper distributions over the 256 pixel values, and bits/dim.

A pixel value k in {0, ..., 255} is the float x = k / 127.5 - 1 inside the library
(`images.uint8_to_float`), so neighbouring values are 2/255 apart and bin k covers
[x - 1/255, x + 1/255]. Every log-probability here is of a whole bin, so the
probabilities of the 256 values of a pixel sum to 1 and bits/dim are honest.

Each distribution is built by `make(name, channels, **fields)` as a `Likelihood`
whose `params` are a decoder's output [B, H, W, num_params]; `name` is one of LIKELIHOODS
or the user's own constructor as `module:function`:
  bernoulli:         per sub-pixel logit of the value 255; mass only on 0 and 255 (for
                     binarised data; any other value has probability 0).
  logistic:          per sub-pixel discretised logistic (mean, log-scale).
  logistic_mixture:  per pixel a mixture of discretised logistics with the channels of a
                     component coupled linearly, as in PixelCNN++ (Salimans et al. 2017).
  categorical:       per sub-pixel 256 logits.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.images import uint8_to_float
from genimg_jax.registry import Registry

NUM_VALUES = 256
HALF_BIN = 1.0 / 255.0  # half the distance between neighbouring pixel values in [-1, 1]
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on logistic log-scales
# name -> build(channels, options) -> Likelihood, options the config's likelihood section.
LIKELIHOODS = Registry("likelihood.name", "likelihood")
# The 256 pixel values as floats, exactly as the data pipeline makes them (float32 [256]).
PIXEL_FLOATS = uint8_to_float(np.arange(NUM_VALUES, dtype=np.uint8))


def pixel_values(x: jax.Array) -> jax.Array:
  """The 8-bit value k of each float x = k / 127.5 - 1, as int32 in [0, 255]. Any shape."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, NUM_VALUES - 1).astype(jnp.int32)


def quantize(y: jax.Array) -> jax.Array:
  """Snaps real values to the nearest of the 256 pixel values, in [-1, 1]. Same shape and dtype.

  The values are those of `images.uint8_to_float`, bit for bit.
  """
  return jnp.asarray(PIXEL_FLOATS)[pixel_values(y)].astype(y.dtype)


def bits_per_dim(nll_nats: jax.Array, num_dims: int = 1) -> jax.Array:
  """Negative log-likelihood in nats per image of `num_dims` dimensions (1: nats per dimension)
  -> bits per dimension: nll / (num_dims * ln 2). Same shape and dtype."""
  return nll_nats / (num_dims * math.log(2.0))


# ---- Elementwise log-probabilities. ----------------------------------------------------------


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log p(x) of binary pixels: value 255 with probability sigmoid(logit), value 0 otherwise.

  Args:
    logits: any shape, real.
    x: pixels in [-1, 1] on the 8-bit grid, same shape; values other than -1 and 1 get -inf.
  Returns:
    log-probabilities, same shape as x.
  """
  k = pixel_values(x)
  log_p = jnp.where(k == NUM_VALUES - 1, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
  return jnp.where((k == 0) | (k == NUM_VALUES - 1), log_p, -jnp.inf)


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(bin of x) under a logistic(mean, exp(log_scale)) discretised to the 256 pixel values.

  Interior bins get CDF(x + 1/255) - CDF(x - 1/255); the edge bins take the tails:
  value 0 gets CDF(-1 + 1/255), value 255 gets 1 - CDF(1 - 1/255). The difference of
  sigmoids is computed as log sigma(a) + log sigma(-b) + log(1 - e^(b - a)), exact for
  any a > b, so no fallback to a density is needed. log_scale is floored at -7.

  Args:
    x: pixels in [-1, 1] on the 8-bit grid, any shape.
    mean, log_scale: broadcastable to x.
  Returns:
    log-probabilities, the broadcast shape.
  """
  log_scale = jnp.maximum(log_scale, MIN_LOG_SCALE)
  inv_scale = jnp.exp(-log_scale)
  upper = inv_scale * (x - mean + HALF_BIN)
  lower = inv_scale * (x - mean - HALF_BIN)
  interior = (jax.nn.log_sigmoid(upper) + jax.nn.log_sigmoid(-lower)
              + jnp.log(-jnp.expm1(-2.0 * HALF_BIN * inv_scale)))
  k = pixel_values(x)
  return jnp.where(k == 0, jax.nn.log_sigmoid(upper),
                   jnp.where(k == NUM_VALUES - 1, jax.nn.log_sigmoid(-lower), interior))


def categorical_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log p(x) of a 256-way categorical per sub-pixel.

  Args:
    logits: [..., 256].
    x: pixels in [-1, 1] on the 8-bit grid, shape [...].
  Returns:
    log-probabilities [...].
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, pixel_values(x)[..., None], axis=-1)[..., 0]


# ---- Mixture of discretised logistics (PixelCNN++). ------------------------------------------


def mixture_num_params(channels: int, num_mixtures: int) -> int:
  """Decoder outputs per pixel: per component a logit, C means, C log-scales, C(C-1)/2 couplings."""
  return num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)


def _split_mixture(params: jax.Array, channels: int, num_mixtures: int):
  """[..., P] -> (logits [..., K], means [..., K, C], log_scales [..., K, C], coupling [..., K, C, C]).

  coupling[..., c, j] (j < c, else 0) is tanh of a raw output: the weight of channel j's
  value in channel c's mean.
  """
  logits = params[..., :num_mixtures]
  rest = params[..., num_mixtures:].reshape(params.shape[:-1] + (num_mixtures, -1))
  means, log_scales = rest[..., :channels], rest[..., channels:2 * channels]
  rows, cols = np.tril_indices(channels, k=-1)
  coupling = jnp.zeros(rest.shape[:-1] + (channels, channels), params.dtype)
  coupling = coupling.at[..., rows, cols].set(jnp.tanh(rest[..., 2 * channels:]))
  return logits, means, log_scales, coupling


def logistic_mixture_log_prob(params: jax.Array, x: jax.Array, num_mixtures: int) -> jax.Array:
  """log p(pixel) of a mixture of discretised logistics, channels jointly.

  Component k gives channel c the mean mu_kc + sum_{j<c} coupling_kcj * x_j, so the
  joint p(x_1..x_C | k) is a product of proper conditionals and the mixture sums to 1
  over all 256^C values of a pixel.

  Args:
    params: [..., mixture_num_params(C, K)] raw decoder outputs.
    x: pixels [..., C] in [-1, 1] on the 8-bit grid.
    num_mixtures: K.
  Returns:
    log-probabilities [...] (one per pixel).
  """
  logits, means, log_scales, coupling = _split_mixture(params, x.shape[-1], num_mixtures)
  x_k = x[..., None, :]  # [..., 1, C], broadcast over components
  means = means + jnp.einsum("...kcj,...kj->...kc", coupling, jnp.broadcast_to(x_k, means.shape))
  log_p = discretized_logistic_log_prob(x_k, means, log_scales).sum(-1)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1) + log_p, axis=-1)


def _logistic_mixture_mean(params: jax.Array, channels: int, num_mixtures: int) -> jax.Array:
  logits, means, _, coupling = _split_mixture(params, channels, num_mixtures)
  component_means = []
  for c in range(channels):  # E[x_c | k] = mu_kc + sum_{j<c} coupling_kcj E[x_j | k]
    coupled = sum((coupling[..., c, j] * component_means[j] for j in range(c)), jnp.zeros_like(means[..., c]))
    component_means.append(means[..., c] + coupled)
  weights = jax.nn.softmax(logits, axis=-1)[..., None]
  return jnp.clip(jnp.sum(weights * jnp.stack(component_means, -1), axis=-2), -1.0, 1.0)


def _logistic_mixture_sample(params: jax.Array, rng: jax.Array, channels: int,
                             num_mixtures: int) -> jax.Array:
  component_rng, noise_rng = jax.random.split(rng)
  logits, means, log_scales, coupling = _split_mixture(params, channels, num_mixtures)
  chosen = jax.nn.one_hot(jax.random.categorical(component_rng, logits), num_mixtures, dtype=params.dtype)
  means = jnp.einsum("...k,...kc->...c", chosen, means)
  log_scales = jnp.einsum("...k,...kc->...c", chosen, log_scales)
  coupling = jnp.einsum("...k,...kcj->...cj", chosen, coupling)
  noise = jax.random.logistic(noise_rng, means.shape, means.dtype)
  scales = jnp.exp(jnp.maximum(log_scales, MIN_LOG_SCALE))
  values = []
  for c in range(channels):
    coupled = sum((coupling[..., c, j] * values[j] for j in range(c)), jnp.zeros_like(means[..., c]))
    mean = means[..., c] + coupled
    values.append(quantize(mean + scales[..., c] * noise[..., c]))  # nearest bin == discretised draw
  return jnp.stack(values, -1)


# ---- The distributions a decoder can parameterise. ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """A distribution over 8-bit images [B, H, W, C] given decoder outputs [B, H, W, num_params].

  log_prob(params, x) -> [B, H, W] float32: log p of each pixel (channels jointly).
  mean(params) -> [B, H, W, C] in [-1, 1]: the distribution's mean (for the mixture and
    the logistic: the mean of the continuous distribution before discretisation, clipped).
  sample(params, rng) -> [B, H, W, C] in [-1, 1] on the 8-bit grid: one draw.
  binary: True if the data must be binarised first (values 0 and 255 only).
  """

  num_params: int
  log_prob: Callable[[jax.Array, jax.Array], jax.Array]
  mean: Callable[[jax.Array], jax.Array]
  sample: Callable[[jax.Array, jax.Array], jax.Array]
  binary: bool = False


@LIKELIHOODS.register("bernoulli")
def bernoulli(channels: int, options: ml_collections.ConfigDict) -> Likelihood:
  """Binary pixels (`bernoulli_log_prob`), one logit per sub-pixel."""
  del options

  def sample(logits, rng):
    return jnp.where(jax.random.bernoulli(rng, jax.nn.sigmoid(logits)), 1.0, -1.0)

  return Likelihood(num_params=channels,
                    log_prob=lambda logits, x: bernoulli_log_prob(logits, x).sum(-1),
                    mean=lambda logits: 2.0 * jax.nn.sigmoid(logits) - 1.0,
                    sample=sample, binary=True)


@LIKELIHOODS.register("logistic")
def logistic(channels: int, options: ml_collections.ConfigDict) -> Likelihood:
  """A discretised logistic per sub-pixel: outputs are C means, then C log-scales."""
  del options

  def sample(params, rng):
    mean, log_scale = params[..., :channels], jnp.maximum(params[..., channels:], MIN_LOG_SCALE)
    return quantize(mean + jnp.exp(log_scale) * jax.random.logistic(rng, mean.shape, mean.dtype))

  return Likelihood(
      num_params=2 * channels,
      log_prob=lambda p, x: discretized_logistic_log_prob(x, p[..., :channels], p[..., channels:]).sum(-1),
      mean=lambda p: jnp.clip(p[..., :channels], -1.0, 1.0), sample=sample)


@LIKELIHOODS.register("logistic_mixture", fields={"num_mixtures": 5})
def logistic_mixture(channels: int, options: ml_collections.ConfigDict) -> Likelihood:
  """A mixture of options.num_mixtures discretised logistics per pixel (`logistic_mixture_log_prob`)."""
  num_mixtures = options.num_mixtures
  require(num_mixtures > 0, "likelihood.num_mixtures", "must be > 0")
  return Likelihood(
      num_params=mixture_num_params(channels, num_mixtures),
      log_prob=lambda p, x: logistic_mixture_log_prob(p, x, num_mixtures),
      mean=lambda p: _logistic_mixture_mean(p, channels, num_mixtures),
      sample=lambda p, rng: _logistic_mixture_sample(p, rng, channels, num_mixtures))


@LIKELIHOODS.register("categorical")
def categorical(channels: int, options: ml_collections.ConfigDict) -> Likelihood:
  """A 256-way categorical per sub-pixel: outputs are C groups of 256 logits."""
  del options
  values = jnp.asarray(PIXEL_FLOATS)
  split = lambda p: p.reshape(p.shape[:-1] + (channels, NUM_VALUES))
  return Likelihood(
      num_params=channels * NUM_VALUES,
      log_prob=lambda p, x: categorical_log_prob(split(p), x).sum(-1),
      mean=lambda p: jax.nn.softmax(split(p), axis=-1) @ values.astype(p.dtype),
      sample=lambda p, rng: values[jax.random.categorical(rng, split(p))].astype(p.dtype))


def make(name: str, channels: int, **fields) -> Likelihood:
  """The likelihood `name` selects (built-in or `module:function`) for images with `channels` channels.

  fields: the likelihood section's other fields (num_mixtures, or those of the user's own), each
  defaulting to its owner's default. The constructor is called as build(channels, options), options
  the whole section as a ConfigDict.
  """
  build = LIKELIHOODS.resolve(name)
  require(callable(build), "likelihood.name", f"{name!r} is not a function")
  return build(channels, ml_collections.ConfigDict({**LIKELIHOODS.config_fields(), **fields, "name": name}))
