"""Discrete bottlenecks of a tokenizer: finite scalar quantization and an l2-normalised vector quantizer.

FSQ (Mentzer et al. 2023): each of d = len(levels) channels is bounded to L_i levels by a shifted tanh
and rounded with a straight-through gradient; the code of a position is its d integers, the token the
mixed-radix number they spell (first channel least significant), so there are prod(levels) tokens. The
bound follows the paper's reference code (finite_scalar_quantization.py): odd L_i give levels
{-(L_i-1)/2, ..., (L_i-1)/2}, even L_i the asymmetric {-L_i/2, ..., L_i/2 - 1}; codes are those integers
divided by L_i // 2.

VQ (van den Oord et al. 2017) with l2-normalised codes (Yu et al. 2022, ViT-VQGAN): the encoder's vector
and every codebook entry are scaled to unit length, the nearest entry (largest cosine) is the token, the
decoder sees the entry through a straight-through estimator; codebook loss ||sg(z) - e||^2 plus
beta ||z - sg(e)||^2 (beta = 0.25) train codebook and encoder.

Shapes: z [..., d] float32; tokens [...] int32.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FSQ_EPS = 1e-3  # The reference code's margin that keeps tanh's bound inside the outermost levels.


def round_ste(z: jax.Array) -> jax.Array:
  """round(z) forward, identity gradient (straight-through)."""
  return z + jax.lax.stop_gradient(jnp.round(z) - z)


def fsq_bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """z [..., d] -> tanh(z + shift) * half_l - offset [..., d], the reference code's bound before rounding."""
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 - FSQ_EPS) / 2
  offset = np.where(levels % 2 == 1, 0.0, 0.5)
  shift = np.tan(offset / half_l)
  return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32) - offset.astype(np.float32))


def fsq_quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """z [..., d] -> codes [..., d] float32: the rounded bound over L_i // 2, gradient straight through the round."""
  half_width = np.asarray(levels) // 2
  return round_ste(fsq_bound(z, levels)) / half_width.astype(np.float32)


def fsq_basis(levels: Sequence[int]) -> np.ndarray:
  """The mixed-radix place values [d] int64: 1, L_0, L_0 L_1, ..."""
  return np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int64)


def fsq_codes_to_tokens(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
  """codes [..., d] (from fsq_quantize) -> tokens [...] int32 in [0, prod(levels))."""
  half_width = np.asarray(levels) // 2
  digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * fsq_basis(levels).astype(np.int32), axis=-1)


def fsq_tokens_to_codes(tokens: jax.Array, levels: Sequence[int]) -> jax.Array:
  """tokens [...] int32 -> codes [..., d] float32, the inverse of fsq_codes_to_tokens."""
  half_width = np.asarray(levels) // 2
  digits = (tokens[..., None] // fsq_basis(levels).astype(np.int32)) % np.asarray(levels, np.int32)
  return (digits - half_width).astype(jnp.float32) / half_width.astype(np.float32)


def num_fsq_tokens(levels: Sequence[int]) -> int:
  return math.prod(levels)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / max(||x||, eps) along the last axis."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def vq_tokens(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """z [..., d], codebook [K, d] -> tokens [...] int32: the entry of largest cosine similarity (the nearest of
  the l2-normalised entries to the l2-normalised z)."""
  return jnp.argmax(l2_normalize(z) @ l2_normalize(codebook).T, axis=-1).astype(jnp.int32)


def vq_codes(tokens: jax.Array, codebook: jax.Array) -> jax.Array:
  """tokens [...] int32, codebook [K, d] -> the normalised entries [..., d] float32."""
  return l2_normalize(codebook)[tokens]


def vq_quantize(z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """z [..., d], codebook [K, d] -> (codes [..., d] with the straight-through gradient to z, tokens [...] int32,
  codebook loss, commitment loss): the losses are means over positions of squared distances of unit vectors,
  ||sg(z) - e||^2 (moves the codebook) and ||z - sg(e)||^2 (moves the encoder)."""
  z = l2_normalize(z.astype(jnp.float32))
  tokens = vq_tokens(z, codebook)
  e = vq_codes(tokens, codebook)
  codebook_loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(z) - e), axis=-1))
  commitment_loss = jnp.mean(jnp.sum(jnp.square(z - jax.lax.stop_gradient(e)), axis=-1))
  return z + jax.lax.stop_gradient(e - z), tokens, codebook_loss, commitment_loss


def usage_and_perplexity(tokens: jax.Array, num_tokens: int) -> tuple[jax.Array, jax.Array]:
  """tokens [...] int32 in [0, num_tokens) -> (the fraction of the num_tokens codes that occur, exp of the
  entropy in nats of their empirical distribution), float32 scalars."""
  counts = jnp.zeros((num_tokens,), jnp.float32).at[tokens.reshape(-1)].add(1.0)
  p = counts / tokens.size
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.mean((counts > 0).astype(jnp.float32)), jnp.exp(entropy)
