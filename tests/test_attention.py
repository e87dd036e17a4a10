"""Blocked causal attention: against float64 NumPy, finite differences, jax.nn.dot_product_attention and the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from genimg_jax.models import attention, transformer


def _qkv(length, dtype=np.float32, seed=0, batch=2, heads=3, head_dim=4):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((batch, length, heads, head_dim)).astype(dtype) for _ in range(3)]


def _numpy_causal_attention(q, k, v):
  """float64 reference: softmax(q.k / sqrt(H)) over keys 0..t, applied to the values."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  length = q.shape[1]
  scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("length,num_blocks", [(10, 1), (10, 3), (36, 4), (7, 8), (5, 50)])
def test_query_blocks_cut_the_positions_into_consecutive_blocks(length, num_blocks):
  blocks = attention.query_blocks(length, num_blocks)
  assert len(blocks) == min(num_blocks, length)
  assert blocks[0][0] == 0 and blocks[-1][1] == length
  assert all(prev[1] == nxt[0] for prev, nxt in zip(blocks, blocks[1:]))
  sizes = [end - start for start, end in blocks]
  assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("length,num_blocks", [(1, 4), (7, 3), (36, 4), (36, 1), (9, 50)])
def test_forward_matches_float64_numpy(length, num_blocks):
  q, k, v = _qkv(length)
  out = attention.causal_attention(q, k, v, num_blocks)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _numpy_causal_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences_in_float64():
  with jax.enable_x64():
    q, k, v = _qkv(11, np.float64)
    check_grads(lambda q, k, v: attention.causal_attention(q, k, v, 3), (q, k, v), order=1, modes=["rev"],
                atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_blocks", [1, 3])
def test_values_and_gradients_equal_jax_nn_dot_product_attention(num_blocks):
  q, k, v = _qkv(13)
  cotangent = _qkv(13, seed=1)[0]

  def loss(fn):
    return jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2))

  ours = loss(lambda q, k, v: attention.causal_attention(q, k, v, num_blocks))(q, k, v)
  reference = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))(q, k, v)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_give_bfloat16_values_and_gradients_close_to_float32():
  q, k, v = _qkv(16)
  low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
  grad = jax.grad(lambda q, k, v: jnp.sum(attention.causal_attention(q, k, v, 4).astype(jnp.float32) ** 2),
                  argnums=(0, 1, 2))
  out = attention.causal_attention(*low, 4)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_causal_attention(*low), atol=3e-2)
  for g_low, g_high in zip(grad(*low), grad(q, k, v)):
    assert g_low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g_low, np.float32), g_high, atol=0.1 * float(jnp.max(jnp.abs(g_high))))


def test_auto_is_blocked_on_this_cpu_and_xla_can_be_forced():
  assert transformer.attention_implementation("auto", jnp.float32) == "blocked"
  assert transformer.attention_implementation("xla", jnp.float32) == "xla"


def test_the_transformer_with_blocked_attention_equals_xla_attention():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 27)), jnp.int32)
  models = {name: transformer.ImageTransformer(image_shape=(3, 3, 3), num_layers=2, width=16, num_heads=2,
                                               attention=name) for name in ("blocked", "xla")}
  params = models["xla"].init(jax.random.PRNGKey(0), tokens)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(1).standard_normal(p.shape).astype(np.float32),
                        params)

  def loss(model):
    return jax.value_and_grad(lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens)) ** 2))

  blocked, xla = loss(models["blocked"])(params), loss(models["xla"])(params)
  for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
