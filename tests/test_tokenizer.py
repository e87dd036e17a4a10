"""The discrete tokenizer (autoencoder.quantizer fsq | vq): FSQ's bound, rounding and straight-through gradient
against float64 NumPy, the token index round trip, VQ's nearest code and losses against NumPy, codebook usage
and perplexity, and tokenize / detokenize of a short training run."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.errors import ConfigError
from genimg_jax.methods import autoencoder
from genimg_jax.models import quantizers
from test_autoencoder import digit_batch, small_config

LEVELS = (8, 5, 3, 2)  # even and odd levels


def numpy_fsq(z: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray]:
  """(codes, d codes / d z with a straight-through round) in float64, after the paper's reference code."""
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 - 1e-3) / 2
  offset = np.where(levels % 2 == 1, 0.0, 0.5)
  t = np.tanh(z + np.tan(offset / half_l))
  half_width = np.floor(levels / 2)
  return np.round(t * half_l - offset) / half_width, (1 - t * t) * half_l / half_width


def test_fsq_codes_and_straight_through_gradient_match_numpy():
  z = np.random.default_rng(0).normal(scale=2.0, size=(64, len(LEVELS)))
  codes = quantizers.fsq_quantize(jnp.asarray(z, jnp.float32), LEVELS)
  expected, slope = numpy_fsq(z, LEVELS)
  np.testing.assert_allclose(codes, expected, atol=1e-6)
  for i, level in enumerate(LEVELS):  # Each channel takes exactly its level's values, all of them here.
    half = level // 2
    allowed = (np.arange(level) - half) / half
    assert set(np.round(np.asarray(codes[:, i]) * half).astype(int)) == set(np.round(allowed * half).astype(int))
  grad = jax.grad(lambda v: jnp.sum(quantizers.fsq_quantize(v, LEVELS) * jnp.arange(1.0, 5.0)))(
      jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(grad, slope * np.arange(1.0, 5.0), rtol=1e-4, atol=1e-5)  # float32 1 - tanh^2
  assert np.all(np.abs(np.asarray(grad)) > 0)  # The round does not stop the gradient.


def test_fsq_token_index_round_trip():
  count = quantizers.num_fsq_tokens(LEVELS)
  tokens = jnp.arange(count, dtype=jnp.int32)
  codes = quantizers.fsq_tokens_to_codes(tokens, LEVELS)
  np.testing.assert_array_equal(quantizers.fsq_codes_to_tokens(codes, LEVELS), tokens)
  # The mixed-radix number of the digits, first channel least significant, as NumPy ravels it.
  half = np.asarray(LEVELS) // 2
  digits = np.round(np.asarray(codes) * half + half).astype(int)
  np.testing.assert_array_equal(np.ravel_multi_index(tuple(digits.T), LEVELS, order="F"), np.arange(count))
  z = jax.random.normal(jax.random.key(0), (5, 3, 3, len(LEVELS))) * 3
  quantized = quantizers.fsq_quantize(z, LEVELS)
  np.testing.assert_allclose(quantizers.fsq_tokens_to_codes(quantizers.fsq_codes_to_tokens(quantized, LEVELS),
                                                            LEVELS), quantized, atol=1e-6)


def test_vq_nearest_code_losses_and_gradient_match_numpy():
  rng = np.random.default_rng(1)
  z, codebook = rng.normal(size=(50, 6)), rng.normal(size=(16, 6))
  codes, tokens, codebook_loss, commitment_loss = quantizers.vq_quantize(jnp.asarray(z, jnp.float32),
                                                                         jnp.asarray(codebook, jnp.float32))
  zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
  en = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
  distances = np.sum((zn[:, None] - en[None]) ** 2, axis=-1)
  np.testing.assert_array_equal(tokens, np.argmin(distances, axis=-1))
  np.testing.assert_allclose(codes, en[np.argmin(distances, axis=-1)], atol=1e-6)
  expected = np.mean(np.min(distances, axis=-1))
  np.testing.assert_allclose([codebook_loss, commitment_loss], [expected, expected], rtol=1e-5)
  # Straight-through: d sum(w * codes) / dz is that of sum(w * normalize(z)).
  w = jnp.asarray(rng.normal(size=(50, 6)), jnp.float32)
  through = jax.grad(lambda v: jnp.sum(w * quantizers.vq_quantize(v, jnp.asarray(codebook, jnp.float32))[0]))
  direct = jax.grad(lambda v: jnp.sum(w * quantizers.l2_normalize(v)))
  np.testing.assert_allclose(through(jnp.asarray(z, jnp.float32)), direct(jnp.asarray(z, jnp.float32)), atol=1e-6)
  # The codebook loss moves the codebook, not the encoder; the commitment loss the reverse.
  book_grad = jax.grad(lambda c: quantizers.vq_quantize(jnp.asarray(z, jnp.float32), c)[3])(
      jnp.asarray(codebook, jnp.float32))
  assert float(jnp.max(jnp.abs(book_grad))) == 0.0


def test_usage_and_perplexity_match_numpy():
  tokens = np.asarray([[0, 0, 1], [3, 3, 3]], np.int32)
  usage, perplexity = quantizers.usage_and_perplexity(jnp.asarray(tokens), 8)
  p = np.asarray([2, 1, 3]) / 6
  assert float(usage) == pytest.approx(3 / 8)
  assert float(perplexity) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-5)


@pytest.mark.parametrize("quantizer,extra", [("fsq", {"levels": (5, 4, 3)}), ("vq", {"codebook_size": 32})])
def test_a_short_tokenizer_run_tokenizes_and_detokenizes(quantizer, extra):
  config = small_config(quantizer=quantizer, **extra)
  method = autoencoder.make(config)
  parts = autoencoder.build(config)
  num_tokens = 60 if quantizer == "fsq" else 32
  assert parts.num_tokens == num_tokens and parts.latent_shape == (4, 4, 3 if quantizer == "fsq" else 4)
  state = method.init(jax.random.key(0))
  batch = {"image": digit_batch(16)}
  step = jax.jit(method.train_step)
  for i in range(3):
    state, metrics = step(state, batch, jax.random.key(i))
  assert "kl_nats" not in metrics and np.isfinite(float(metrics["loss"]))
  assert 0 < float(metrics["codebook_usage"]) <= 1 and 1 <= float(metrics["perplexity"]) <= num_tokens
  if quantizer == "vq":
    assert float(metrics["commitment_loss"]) > 0
  params = state.ema_params
  tokens = jax.jit(parts.tokenize)(params, batch["image"])
  chex.assert_shape(tokens, (16, 4, 4))
  assert tokens.dtype == jnp.int32 and int(tokens.min()) >= 0 and int(tokens.max()) < num_tokens
  images = jax.jit(parts.detokenize)(params, tokens)
  chex.assert_shape(images, (16, 16, 16, 1))
  recon, _ = jax.jit(method.reconstruct)(params, batch["image"])
  np.testing.assert_allclose(images, recon, atol=1e-5)  # Detokenizing the tokens is the reconstruction.
  held = jax.jit(method.eval_step)(params, batch, jax.random.key(0))
  assert set(held) == {"psnr_db", "ssim", "l1", "codebook_usage", "perplexity"}
  chex.assert_shape(jax.jit(method.sample, static_argnums=2)(params, jax.random.key(0), 3), (3, 16, 16, 1))


def test_tokenizer_config_errors_name_the_field():
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.quantizer"):
    autoencoder.build(small_config(quantizer="lfq"))
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.levels"):
    autoencoder.build(small_config(quantizer="fsq", levels=(8, 1)))
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.codebook_size"):
    autoencoder.build(small_config(quantizer="vq", codebook_size=1))
