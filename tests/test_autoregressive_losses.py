"""Pixel tokens, the exact negative log-likelihood and the token sampler of the autoregressive family."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from genimg_jax import images
from genimg_jax.losses import autoregressive as arl
from genimg_jax.losses import likelihoods
from genimg_jax.methods import autoregressive_sampling as sampling


def test_tokens_invert_the_library_conversion():
  levels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  tokens = jax.jit(arl.image_to_tokens)(images.uint8_to_float(levels))
  np.testing.assert_array_equal(tokens, np.arange(256).reshape(4, 64))
  back = jax.jit(arl.tokens_to_image, static_argnums=1)(tokens, (8, 8, 1))
  np.testing.assert_array_equal(images.float_to_uint8(back), levels)
  assert float(back.min()) == -1.0 and float(back.max()) == 1.0
  # Anywhere else (out-of-range values included) they agree with the NumPy conversion to uint8.
  x = np.random.default_rng(0).uniform(-1.2, 1.2, size=(3, 5, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(arl.image_to_tokens(jnp.asarray(x)), images.float_to_uint8(x).reshape(3, -1))


def test_tokens_are_raster_order_with_channels_interleaved():
  x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)
  tokens = np.asarray(arl.image_to_tokens(images.uint8_to_float(x)))
  for r, c, ch in [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (1, 0, 0), (2, 3, 2)]:
    np.testing.assert_array_equal(tokens[:, (r * 4 + c) * 3 + ch], x[:, r, c, ch])


def test_uniform_logits_give_exactly_8_bits_per_dim():
  """ln 256 nats = 8 bits per dim, up to float32 rounding (a few ulps)."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 50), 0, 256)
  for logits in (jnp.zeros((3, 50, 256)), jnp.full((3, 50, 256), 7.5)):
    nats = arl.nats_per_dim(logits, tokens)
    np.testing.assert_allclose(nats, math.log(256), rtol=1e-6)
    np.testing.assert_allclose(likelihoods.bits_per_dim(nats), 8.0, rtol=1e-6)


def test_nll_matches_float64_reference():
  rng = np.random.default_rng(2)
  logits = rng.normal(scale=3.0, size=(4, 30, 256)).astype(np.float32)
  tokens = rng.integers(0, 256, size=(4, 30))
  log_probs = logits.astype(np.float64) - logsumexp(logits.astype(np.float64), axis=-1, keepdims=True)
  reference = -np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].mean(axis=-1)
  got = arl.nats_per_dim(jnp.asarray(logits), jnp.asarray(tokens))
  assert got.dtype == jnp.float32 and got.shape == (4,)
  np.testing.assert_allclose(got, reference, rtol=1e-6)
  np.testing.assert_allclose(likelihoods.bits_per_dim(got), reference / np.log(2), rtol=1e-6)


def test_nll_loss_metrics_and_gradient_closed_form():
  """With the logits as parameters, d loss / d logits = (softmax - onehot) / (B * L)."""
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, size=(2, 4, 4, 1), dtype=np.uint8)
  batch = {"image": jnp.asarray(images.uint8_to_float(x)), "label": jnp.zeros((2,), jnp.int32)}
  ctx = arl.ModelContext(lambda params, tokens, labels, r: params)
  logits = jnp.asarray(rng.normal(size=(2, 16, 256)), jnp.float32)
  (loss, metrics), grad = jax.value_and_grad(arl.nll_loss, has_aux=True)(logits, batch, None, ctx=ctx)
  tokens = x.reshape(2, 16)
  np.testing.assert_allclose(loss, np.mean(arl.nats_per_dim(logits, jnp.asarray(tokens))), rtol=1e-6)
  assert float(metrics["bits_per_dim"]) == pytest.approx(float(loss) / math.log(2), rel=1e-6)
  expected = (jax.nn.softmax(logits) - jax.nn.one_hot(tokens, 256)) / 32
  np.testing.assert_allclose(grad, expected, atol=1e-8)


def test_choose_tokens_temperature_and_top_k():
  logits = jax.random.normal(jax.random.PRNGKey(0), (500, 256)) * 2
  greedy = sampling.choose_tokens(logits, None, 0.0, 0)
  np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))
  key = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(sampling.choose_tokens(logits, key, 1e-6, 0), greedy)
  np.testing.assert_array_equal(sampling.choose_tokens(logits, key, 1.0, 1), greedy)
  # top-k draws only among the k largest; a higher temperature draws more spread out.
  top5 = jax.lax.top_k(logits, 5)[1]
  draws = sampling.choose_tokens(logits, key, 1.0, 5)
  assert bool(jnp.all(jnp.any(draws[:, None] == top5, axis=1)))
  assert not np.array_equal(draws, greedy)


def test_choose_tokens_matches_the_tempered_distribution():
  """Empirical frequencies of 40000 draws match softmax(logits / T) (float64 reference)."""
  logits = np.array([0.0, 1.0, -1.0, 2.0, 0.5], np.float32)
  for temperature, top_k in ((1.0, 0), (0.5, 0), (2.0, 3)):
    draws = sampling.choose_tokens(jnp.tile(jnp.asarray(logits), (40000, 1)), jax.random.PRNGKey(4),
                                   temperature, top_k)
    freq = np.bincount(np.asarray(draws), minlength=5) / 40000
    scaled = logits.astype(np.float64) / temperature
    if top_k:
      scaled[np.argsort(scaled)[:-top_k]] = -np.inf
    probs = np.exp(scaled - logsumexp(scaled))
    np.testing.assert_allclose(freq, probs, atol=0.01)  # binomial std <= 0.0025
