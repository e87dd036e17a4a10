"""The autoregressive Transformer over a tokenizer's tokens (methods/autoregressive_tokens.py), on a stand-in
tokenizer whose tokens and decoding are known: the loss at initialisation, the teacher-forced likelihood against
a float64 NumPy one, the held-out metric on the tokenizer's tokens, and sampling token by token then decoding
(NFE = tokens per image). The chain through the real `genimg` command is in test_maskgit.py (same tokenizer)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax.methods import autoregressive, autoregressive_tokens, latent
from helpers import REPO

CONFIG = os.path.join(REPO, "configs", "igpt_tokens_digits.py")
SMALL = {"model.num_layers": 1, "model.width": 16, "model.num_heads": 2, "model.dropout": 0.0,
         "model.num_classes": 3, "train.batch_size": 8}
VOCAB, GRID = 7, (2, 3)


def _stage() -> latent.FirstStage:
  """Tokens of a 16x16 image: its mean over each 8x(16/3) block, quantized to VOCAB levels; decoding paints
  each block with its level, so a decoded image's values are the levels of its tokens."""
  levels = jnp.linspace(-1.0, 1.0, VOCAB)

  def encode(params, x):
    del params
    blocks = jnp.stack([jnp.mean(x[:, 8 * i:8 * i + 8, 5 * j:5 * j + 5], axis=(1, 2, 3)) for i in range(2)
                        for j in range(3)], axis=-1)
    return jnp.argmin(jnp.abs(blocks[..., None] - levels), axis=-1).reshape((-1,) + GRID).astype(jnp.int32)

  def decode(params, tokens):
    del params
    values = levels[tokens]  # [B, 2, 3]
    rows = jnp.repeat(values, 8, axis=1)
    return jnp.repeat(rows, jnp.array([5, 5, 6]), axis=2, total_repeat_length=16)[..., None]

  return latent.FirstStage(encode=encode, decode=decode, params={}, latent_shape=GRID, mean=np.zeros(0, np.float32),
                           std=np.zeros(0, np.float32), params_hash="0" * 64, description="stand-in tokenizer",
                           num_tokens=VOCAB)


@pytest.fixture(scope="module")
def method():
  config = config_lib.load(CONFIG, [f"--config.{k}={v}" for k, v in SMALL.items()])
  return autoregressive_tokens.wrap(config, _stage())


def _nll64(logits: np.ndarray, tokens: np.ndarray) -> float:
  logits = logits.astype(np.float64)
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  return float(-np.mean(np.take_along_axis(log_probs, tokens[..., None], -1)))


def test_the_first_step_is_uniform_over_the_codes(method):
  state = method.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (8,) + GRID, 0, VOCAB)
  batch = {"image": tokens, "label": jnp.arange(8, dtype=jnp.int32) % 3}
  new_state, metrics = jax.jit(method.train_step)(state, batch, jax.random.key(2))
  assert float(metrics["loss"]) == pytest.approx(np.log(VOCAB), rel=1e-5)  # The head starts at zero.
  assert float(metrics["bits_per_token"]) == pytest.approx(np.log2(VOCAB), rel=1e-5)
  assert int(new_state.step) == 1 and set(new_state.ema_params) == {"transformer", "tokenizer"}


def test_the_held_out_metric_is_the_likelihood_of_the_tokenizers_tokens(method):
  state = method.init(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), state.params)
  images = jax.random.uniform(jax.random.key(4), (5, 16, 16, 1), minval=-1, maxval=1)
  labels = jnp.array([0, 1, 2, 0, 1], jnp.int32)
  metrics = method.eval_step({"transformer": params, "tokenizer": {}}, {"image": images, "label": labels},
                             jax.random.key(5))
  tokens = _stage().encode({}, images).reshape(5, -1)
  config = config_lib.load(CONFIG, [f"--config.{k}={v}" for k, v in SMALL.items()])
  model = autoregressive.make_model(config, image_shape=GRID + (1,), vocab_size=VOCAB)
  logits = model.apply({"params": params}, tokens, labels, train=False)
  assert float(metrics["nats_per_token"]) == pytest.approx(_nll64(np.asarray(logits), np.asarray(tokens)), rel=1e-5)


def test_samples_are_decoded_tokens_in_as_many_passes_as_tokens(method):
  state = method.init(jax.random.key(0))
  images = jax.jit(method.sample, static_argnums=2)(state.ema_params, jax.random.key(6), 4)
  assert images.shape == (4, 16, 16, 1) and method.sample_nfe == 6
  levels = np.linspace(-1.0, 1.0, VOCAB, dtype=np.float32)
  assert np.all(np.min(np.abs(np.asarray(images)[..., None] - levels), axis=-1) < 1e-6)
  # Re-encoding a decoded image gives back its tokens, so each of the 6 blocks holds one level.
  tokens = _stage().encode({}, images)
  np.testing.assert_array_equal(np.asarray(_stage().decode({}, tokens)), np.asarray(images))


def test_a_pixel_loss_is_refused_on_tokens():
  config = config_lib.load(CONFIG, [f"--config.{k}={v}" for k, v in SMALL.items()])
  config.loss.name = "my_losses:bpd"
  with pytest.raises(config_lib.ConfigError, match="loss.name"):
    autoregressive_tokens.wrap(config, _stage())
