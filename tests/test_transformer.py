"""The ImageGPT-style Transformer: causality, the key/value cache, and the method's samplers."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax import images
from genimg_jax import methods
from genimg_jax.losses import autoregressive as arl
from genimg_jax.methods import autoregressive as ar
from genimg_jax.methods import autoregressive_sampling as sampling
from genimg_jax.models import transformer
from helpers import REPO

IMAGE_SHAPE = (3, 4, 3)  # L = 36 tokens, channels interleaved
L = 36


def _perturbed(params):
  """Non-trivial weights: the zero-initialised head would make every logit 0. (NumPy draws: no compiles.)"""
  rng = np.random.default_rng(42)
  return jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)


@pytest.fixture(scope="module", params=["factorized", "learned"])
def model_and_params(request):
  model = transformer.ImageTransformer(image_shape=IMAGE_SHAPE, num_layers=2, width=32, num_heads=4,
                                       num_classes=3, position_embedding=request.param, dropout=0.1)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32), jnp.zeros((1,), jnp.int32))
  params = _perturbed(params["params"])
  return model, params, jax.jit(lambda t, labels: model.apply({"params": params}, t, labels))


@pytest.fixture(scope="module")
def tokens():
  return jax.random.randint(jax.random.PRNGKey(1), (2, L), 0, 256, dtype=jnp.int32)


LABELS = jnp.array([0, 2], jnp.int32)


def test_shapes_and_dtypes(model_and_params, tokens):
  model, params, forward = model_and_params
  logits = forward(tokens, LABELS)
  chex.assert_shape(logits, (2, L, 256))
  assert logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_changing_token_j_changes_no_logit_at_or_before_j(model_and_params, tokens):
  _, _, forward = model_and_params
  base = np.asarray(forward(tokens, LABELS))
  for j in (0, 1, 17, L - 2, L - 1):
    changed = np.asarray(forward(tokens.at[:, j].set((tokens[:, j] + 101) % 256), LABELS))
    np.testing.assert_array_equal(changed[:, :j + 1], base[:, :j + 1], err_msg=f"token {j}")
    if j < L - 1:  # It does change the next position's logits.
      assert np.abs(changed[:, j + 1] - base[:, j + 1]).max() > 1e-3, j
  # The label (the start token) conditions every position, the first included.
  other = np.asarray(forward(tokens, jnp.array([1, 1], jnp.int32)))
  assert np.abs(other[:, 0] - base[:, 0]).max() > 1e-3


def test_cached_decoder_equals_full_forward_at_every_position(model_and_params, tokens):
  model, params, forward = model_and_params

  @jax.jit
  def cached_logits(tokens):
    def decode_step(previous, position, cache):
      return model.apply({"params": params}, previous, LABELS, position, cache,
                         method=transformer.ImageTransformer.decode_step)

    teacher_forcing = lambda logits, position: (tokens[:, position], logits)
    stacked = sampling.decode(decode_step, transformer.init_cache(model, 2), 2, L, teacher_forcing)
    return jnp.swapaxes(stacked, 0, 1)

  full = forward(tokens, LABELS)
  np.testing.assert_allclose(cached_logits(tokens), full, atol=1e-5, rtol=0)
  assert float(jnp.abs(full).max()) > 1.0  # Not trivially small.


@pytest.fixture(scope="module")
def method_setup():
  """The method on 4x4x3 images, class-conditional, with perturbed parameters, and a sampler factory."""
  config = config_lib.load(f"{REPO}/configs/igpt_digits.py", [
      "--config.data.image_size=4", "--config.data.channels=3", "--config.model.num_layers=2",
      "--config.model.width=32", "--config.model.num_heads=2", "--config.model.num_classes=10"])
  config.unlock()
  params = _perturbed(jax.jit(methods.make(config).init)(jax.random.PRNGKey(0)).params)

  @functools.cache
  def sampler(name, temperature):
    config.sample.sampler, config.sample.temperature = name, temperature
    return jax.jit(methods.make(config).sample, static_argnums=2)

  return config, params, sampler


def test_greedy_decode_is_a_fixed_point_of_the_full_forward_pass(method_setup):
  """Greedy tokens: each is the argmax of the full pass's logits given the tokens before it."""
  config, params, sampler = method_setup
  images = sampler("cached", 0.0)(params, jax.random.PRNGKey(0), 4)
  tokens = arl.image_to_tokens(images)
  model = ar.make_model(config)
  logits = model.apply({"params": params}, tokens, ar.sample_labels(4, 10))
  np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))


def test_temperature_to_zero_is_greedy_and_keys_decide_samples(method_setup):
  _, params, sampler = method_setup
  key = jax.random.PRNGKey(3)
  greedy = sampler("cached", 0.0)(params, key, 4)
  np.testing.assert_array_equal(sampler("cached", 1e-6)(params, key, 4), greedy)
  a = sampler("cached", 1.0)(params, key, 4)
  np.testing.assert_array_equal(sampler("cached", 1.0)(params, key, 4), a)
  assert not np.array_equal(sampler("cached", 1.0)(params, jax.random.PRNGKey(4), 4), a)
  assert not np.array_equal(a, greedy)
  # The same key gives the same samples with or without the cache.
  np.testing.assert_array_equal(sampler("uncached", 1.0)(params, key, 4), a)
  chex.assert_shape(a, (4, 4, 4, 3))
  assert a.dtype == jnp.float32 and float(a.min()) >= -1 and float(a.max()) <= 1
  np.testing.assert_allclose(images.uint8_to_float(images.float_to_uint8(a)), a, atol=1e-6)  # 8-bit levels


def test_sample_labels_cycle_through_the_classes():
  np.testing.assert_array_equal(ar.sample_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])
  assert ar.sample_labels(4, 0) is None


def test_bfloat16_compute_keeps_float32_params_and_logits(model_and_params, tokens):
  model, params, forward = model_and_params
  model = model.clone(dtype=jnp.bfloat16)
  logits = jax.jit(model.apply)({"params": params}, tokens, LABELS)
  full32 = forward(tokens, LABELS)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, full32, atol=0.1 * float(jnp.abs(full32).max()))
  assert transformer.init_cache(model, 2)[0]["key"].dtype == jnp.bfloat16
