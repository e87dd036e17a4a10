"""A convolutional VAE: a residual encoder to a diagonal Gaussian posterior, a residual decoder.

The encoder halves the resolution between levels (len(ch_mult) - 1 times, factor f).
Latents are either a vector [B, latent_dim] ("vector") or a map
[B, H/f, W/f, latent_dim] ("spatial"). The decoder mirrors the encoder and outputs
the parameters of a pixel likelihood, [B, H, W, out_ch] float32.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from genimg_jax.models.layers import Downsample, Dtype, Upsample, zero_init_conv

LATENT_TYPES = ("vector", "spatial")


class ResidualBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, plus a skip (1x1-projected if the width changes).

  x: [B, H, W, C_in] -> [B, H, W, features]. The second conv starts at zero, so the
  block starts as the (projected) identity.
  """

  features: int
  norm_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(h)
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    h = zero_init_conv(self.features, 3, self.dtype)(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype, name="skip")(x)
    return x + h


def downsampling_trunk(x, ch: int, ch_mult: Sequence[int], num_res_blocks: int, norm_groups: int, dtype: Dtype):
  """The encoders' trunk, called inside a compact method (its layers belong to the caller): x [B, H, W, C] ->
  [B, H/f, W/f, ch * ch_mult[-1]], f = 2^(len(ch_mult) - 1). A 3x3 conv_in, then per level num_res_blocks
  ResidualBlocks of width ch * mult and a Downsample between levels."""
  h = nn.Conv(ch, (3, 3), dtype=dtype, name="conv_in")(x.astype(dtype))
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      h = ResidualBlock(ch * mult, norm_groups, dtype)(h)
    if level != len(ch_mult) - 1:
      h = Downsample(dtype)(h)
  return h


class Encoder(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> (mean, log_var) of q(z|x), float32, the latent shape each."""

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  latent_type: str
  latent_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = downsampling_trunk(x, self.ch, self.ch_mult, self.num_res_blocks, self.norm_groups, self.dtype)
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    if self.latent_type == "vector":
      stats = nn.Dense(2 * self.latent_dim, dtype=self.dtype, name="to_latent")(h.reshape(h.shape[0], -1))
    else:
      stats = nn.Conv(2 * self.latent_dim, (1, 1), dtype=self.dtype, name="to_latent")(h)
    mean, log_var = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    return mean, log_var


class Decoder(nn.Module):
  """z (the latent shape) -> likelihood parameters [B, H, W, out_ch] float32."""

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  latent_type: str
  image_size: tuple[int, int]
  out_ch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    factor = 2 ** (len(self.ch_mult) - 1)
    height, width = self.image_size[0] // factor, self.image_size[1] // factor
    width_top = self.ch * self.ch_mult[-1]
    z = z.astype(self.dtype)
    if self.latent_type == "vector":
      h = nn.Dense(height * width * width_top, dtype=self.dtype, name="from_latent")(z)
      h = h.reshape(z.shape[0], height, width, width_top)
    else:
      h = nn.Conv(width_top, (3, 3), dtype=self.dtype, name="from_latent")(z)
    for level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks):
        h = ResidualBlock(self.ch * self.ch_mult[level], self.norm_groups, self.dtype)(h)
      if level != 0:
        h = Upsample(self.dtype)(h)
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    return nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, name="conv_out")(h).astype(jnp.float32)


class VAE(nn.Module):
  """Encoder and decoder under one parameter tree ({'encoder': ..., 'decoder': ...}).

  encode(x [B, H, W, C]) -> (mean, log_var); decode(z) -> [B, H, W, out_ch];
  __call__(x, noise) decodes mean + exp(log_var / 2) * noise (used to initialise both).
  """

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  latent_type: str
  latent_dim: int
  image_size: tuple[int, int]
  out_ch: int
  dtype: Dtype = jnp.float32

  def setup(self):
    shared = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                  norm_groups=self.norm_groups, latent_type=self.latent_type, dtype=self.dtype)
    self.encoder = Encoder(latent_dim=self.latent_dim, **shared)
    self.decoder = Decoder(image_size=tuple(self.image_size), out_ch=self.out_ch, **shared)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x, noise):
    mean, log_var = self.encoder(x)
    return self.decoder(mean + jnp.exp(0.5 * log_var) * noise)


def latent_shape(latent_type: str, latent_dim: int, image_size: tuple[int, int],
                 ch_mult: Sequence[int]) -> tuple[int, ...]:
  """The shape of one example's latent: (latent_dim,) or (H/f, W/f, latent_dim)."""
  if latent_type == "vector":
    return (latent_dim,)
  factor = 2 ** (len(ch_mult) - 1)
  return (image_size[0] // factor, image_size[1] // factor, latent_dim)

