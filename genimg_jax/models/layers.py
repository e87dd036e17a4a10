"""Building blocks shared by the image models (NHWC, params float32, compute in `dtype`)."""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, as in the DDPM and Transformer papers.

  Args:
    t: [B] timesteps, any real dtype.
    dim: even embedding width.
    max_period: the longest wavelength.
  Returns:
    [B, dim] float32: sin features in the first half, cos in the second.
  """
  if dim % 2:
    raise ValueError(f"timestep embedding width must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def split_times(noise_label: jax.Array, time_inputs: int) -> list[jax.Array]:
  """The network's times as `time_inputs` arrays [B]: noise_label itself when there is one ([B]), else its
  columns ([B, time_inputs])."""
  if time_inputs == 1:
    if noise_label.ndim != 1:
      raise ValueError(f"the network takes one time per image, [B]; got shape {noise_label.shape}")
    return [noise_label]
  if noise_label.ndim != 2 or noise_label.shape[1] != time_inputs:
    raise ValueError(f"the network takes {time_inputs} times per image, [B, {time_inputs}]; got {noise_label.shape}")
  return [noise_label[:, i] for i in range(time_inputs)]


def zero_init_conv(features: int, kernel: int, dtype: Dtype, name: str | None = None) -> nn.Conv:
  """A conv whose weights start at zero, so a residual branch starts as the identity."""
  return nn.Conv(features, (kernel, kernel), dtype=dtype, kernel_init=nn.initializers.zeros, name=name)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, add the time embedding, GroupNorm-SiLU-dropout-conv, plus a skip.

  x: [B, H, W, C_in], temb: [B, E] -> [B, H, W, out_ch].
  """

  out_ch: int
  dropout: float
  norm_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, *, train: bool):
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(x))
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
    h = h + nn.Dense(self.out_ch, dtype=self.dtype, name="temb_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = zero_init_conv(self.out_ch, 3, self.dtype)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, name="skip")(x)
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over all spatial positions, with a residual connection.

  x: [B, H, W, C] -> same. Uses `jax.nn.dot_product_attention` so accelerators may
  pick a fused kernel.
  """

  num_heads: int
  norm_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"attention width {c} is not divisible by num_heads={self.num_heads}")
    y = nn.GroupNorm(self.norm_groups, dtype=self.dtype)(x).reshape(b, h * w, c)
    head_dim = c // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, name="qkv")(y)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    with jax.named_scope("attention"):  # names the scores, softmax and values in profiles
      y = jax.nn.dot_product_attention(q, k, v)
    y = nn.DenseGeneral(c, axis=(-2, -1), dtype=self.dtype, kernel_init=nn.initializers.zeros,
                        name="proj_out")(y)
    return x + y.reshape(b, h, w, c)


class Downsample(nn.Module):
  """Halve H and W with a stride-2 3x3 conv. [B, H, W, C] -> [B, H/2, W/2, C]."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(x)


class Upsample(nn.Module):
  """Double H and W: nearest neighbour, then a 3x3 conv. [B, H, W, C] -> [B, 2H, 2W, C]."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
    return nn.Conv(c, (3, 3), dtype=self.dtype)(x)
