"""Causal self-attention computed per query block: for backends without a fused kernel (CPU).

The positions are cut into `num_blocks` consecutive query blocks; block [start, end)
attends to keys [0, end) only, so the key positions after a block are never scored
(5/8 of the full score matrix is computed with 4 blocks). The VJP is the closed form
dS = P * (dP - rowsum(dO * O)) from the saved probabilities P, one elementwise pass per
block, instead of differentiating through the mask and the softmax's reductions.
Each block's score matrix is also small enough to stay in cache between its passes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def query_blocks(length: int, num_blocks: int) -> list[tuple[int, int]]:
  """[start, end) of each of min(num_blocks, length) near-equal consecutive blocks of range(length)."""
  count = max(1, min(num_blocks, length))
  bounds = [round(i * length / count) for i in range(count + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def _accumulation_dtype(x):
  """float32 for 16- and 32-bit inputs, float64 for float64 ones."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _block_mask(start: int, end: int) -> np.ndarray:
  """[end - start, end] bool: query start + r sees keys 0..start + r."""
  return np.tril(np.ones((end - start, end), bool), k=start)


def _probabilities(query_block, key_prefix, start, end):
  """Causal softmax probabilities [B, N, end - start, end] of one query block, at least float32.

  query_block [B, end - start, N, H], key_prefix [B, end, N, H].
  """
  scale = query_block.shape[-1] ** -0.5
  scores = jnp.einsum("btnh,bsnh->bnts", query_block, key_prefix,
                      preferred_element_type=_accumulation_dtype(query_block)) * scale
  scores = jnp.where(_block_mask(start, end), scores, -jnp.inf)
  return jax.nn.softmax(scores, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array, num_blocks: int = 4) -> jax.Array:
  """Causal softmax attention: query, key, value [B, L, N, H] -> [B, L, N, H] in value's dtype.

  Position t attends to positions 0..t with scores q.k / sqrt(H) in (at least) float32, as
  jax.nn.dot_product_attention(query, key, value, is_causal=True) computes.
  num_blocks: how many query blocks the positions are cut into (a Python int).
  """
  return _forward(query, key, value, num_blocks)[0]


def _forward(query, key, value, num_blocks):
  outputs, probabilities = [], []
  for start, end in query_blocks(query.shape[1], num_blocks):
    p = _probabilities(query[:, start:end], key[:, :end], start, end).astype(value.dtype)
    probabilities.append(p)
    outputs.append(jnp.einsum("bnts,bsnh->btnh", p, value[:, :end]))
  out = jnp.concatenate(outputs, axis=1)
  return out, (query, key, value, probabilities, out)


def _backward(num_blocks, residuals, d_out):
  query, key, value, probabilities, out = residuals
  scale = query.shape[-1] ** -0.5
  acc = _accumulation_dtype(query)
  # rowsum(dO * O) = rowsum(dP * P): the softmax's Jacobian applied to dP, per query position.
  delta = jnp.einsum("btnh,btnh->bnt", d_out, out, preferred_element_type=acc)[..., None]
  d_query = []
  d_key = jnp.zeros(key.shape, acc)
  d_value = jnp.zeros(value.shape, acc)
  for (start, end), p in zip(query_blocks(query.shape[1], num_blocks), probabilities):
    d_out_block = d_out[:, start:end]
    d_value = d_value.at[:, :end].add(jnp.einsum("bnts,btnh->bsnh", p, d_out_block, preferred_element_type=acc))
    d_p = jnp.einsum("btnh,bsnh->bnts", d_out_block, value[:, :end], preferred_element_type=acc)
    d_scores = (p.astype(acc) * (d_p - delta[:, :, start:end]) * scale).astype(query.dtype)
    d_query.append(jnp.einsum("bnts,bsnh->btnh", d_scores, key[:, :end], preferred_element_type=acc))
    d_key = d_key.at[:, :end].add(
        jnp.einsum("bnts,btnh->bsnh", d_scores, query[:, start:end], preferred_element_type=acc))
  return (jnp.concatenate(d_query, axis=1).astype(query.dtype), d_key.astype(key.dtype),
          d_value.astype(value.dtype))


causal_attention.defvjp(_forward, _backward)
