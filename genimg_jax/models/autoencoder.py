"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, appendix G).

The encoder maps images [B, H, W, C] to the mean and log-variance of a diagonal Gaussian over
latents [B, H/f, W/f, z_channels], f = 2^(len(ch_mult) - 1); the decoder maps latents back to
images. Both are ResNet stacks with GroupNorm (models/vae.py's ResidualBlock), a middle block
(ResNet, optional self-attention, ResNet) at the lowest resolution, and 1x1 "quant" convs on the
latent side, as in LDM. Encoder and decoder are separate submodules, so each can be applied alone
(`Autoencoder.encode`, `Autoencoder.decode`).

A discrete autoencoder (a tokenizer, quantizer "fsq" or "vq", models/quantizers.py) has an encoder that
outputs the code vector itself ([B, h, w, d], d = len(levels) for FSQ, z_channels for VQ) and, for VQ, a
codebook parameter [codebook_size, z_channels]; `quantize` and `codes` map vectors to tokens and back.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from genimg_jax.models import quantizers
from genimg_jax.models.layers import AttnBlock, Dtype, Upsample
from genimg_jax.models.vae import ResidualBlock, downsampling_trunk

# LDM's clamp of the encoder's log-variance (ldm/modules/distributions/distributions.py).
LOG_VAR_RANGE = (-30.0, 20.0)


class MiddleBlock(nn.Module):
  """ResNet block, self-attention (if `attention`), ResNet block; [B, h, w, C] -> same."""

  norm_groups: int
  attention: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    width = h.shape[-1]
    h = ResidualBlock(width, self.norm_groups, self.dtype)(h)
    if self.attention:
      h = AttnBlock(1, self.norm_groups, self.dtype)(h)
    return ResidualBlock(width, self.norm_groups, self.dtype)(h)


class Encoder(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> (mean, log_var), each [B, H/f, W/f, z_channels] float32.

  log_var is clamped to LOG_VAR_RANGE. With gaussian=False: the latent z [B, H/f, W/f, z_channels] alone.
  """

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  z_channels: int
  mid_attention: bool = True
  dtype: Dtype = jnp.float32
  gaussian: bool = True

  @nn.compact
  def __call__(self, x):
    h = downsampling_trunk(x, self.ch, self.ch_mult, self.num_res_blocks, self.norm_groups, self.dtype)
    h = MiddleBlock(self.norm_groups, self.mid_attention, self.dtype, name="mid")(h)
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    out = (2 if self.gaussian else 1) * self.z_channels
    h = nn.Conv(out, (3, 3), dtype=self.dtype, name="conv_out")(h)
    moments = nn.Conv(out, (1, 1), dtype=self.dtype, name="quant_conv")(h).astype(jnp.float32)
    if not self.gaussian:
      return moments
    mean, log_var = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(log_var, *LOG_VAR_RANGE)


class Decoder(nn.Module):
  """z [B, h, w, z_channels] -> images [B, h f, w f, out_channels] float32 (unbounded; [-1, 1] once trained).

  Its last layer, `conv_out`, is the one LDM's adaptive adversarial weight is measured on.
  """

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  out_channels: int
  mid_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    z = nn.Conv(z.shape[-1], (1, 1), dtype=self.dtype, name="post_quant_conv")(z.astype(self.dtype))
    h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), dtype=self.dtype, name="conv_in")(z)
    h = MiddleBlock(self.norm_groups, self.mid_attention, self.dtype, name="mid")(h)
    for level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):  # One more than the encoder, as in LDM.
        h = ResidualBlock(self.ch * self.ch_mult[level], self.norm_groups, self.dtype)(h)
      if level != 0:
        h = Upsample(self.dtype)(h)
    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    return nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_out")(h).astype(jnp.float32)


class Autoencoder(nn.Module):
  """Encoder and decoder under one parameter tree ({'encoder': ..., 'decoder': ...}).

  encode(x [B, H, W, C]) -> (mean, log_var) [B, H/f, W/f, z_channels]; decode(z) -> [B, H, W, C];
  __call__(x, noise) decodes mean + exp(log_var / 2) * noise (used to initialise both).
  quantizer "fsq" | "vq": encode(x) -> z [B, H/f, W/f, d] (d = len(levels) for FSQ); quantize(z) -> (codes
  [B, h, w, d] straight-through, tokens [B, h, w] int32, {losses}); codes(tokens) -> codes; __call__(x, noise)
  decodes the quantized codes (noise unused).
  """

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  norm_groups: int
  z_channels: int
  out_channels: int
  mid_attention: bool = True
  dtype: Dtype = jnp.float32
  quantizer: str = "kl"
  levels: Sequence[int] = ()
  codebook_size: int = 0

  def setup(self):
    shared = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                  norm_groups=self.norm_groups, mid_attention=self.mid_attention, dtype=self.dtype)
    self.encoder = Encoder(z_channels=code_channels(self.quantizer, self.z_channels, self.levels),
                           gaussian=self.quantizer == "kl", **shared)
    self.decoder = Decoder(out_channels=self.out_channels, **shared)
    if self.quantizer == "vq":
      self.codebook = self.param("codebook", nn.initializers.normal(1.0), (self.codebook_size, self.z_channels))

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def quantize(self, z):
    if self.quantizer == "fsq":
      codes = quantizers.fsq_quantize(z, self.levels)
      return codes, quantizers.fsq_codes_to_tokens(codes, self.levels), {}
    codes, tokens, codebook_loss, commitment_loss = quantizers.vq_quantize(z, self.codebook)
    return codes, tokens, {"codebook_loss": codebook_loss, "commitment_loss": commitment_loss}

  def codes(self, tokens):
    if self.quantizer == "fsq":
      return quantizers.fsq_tokens_to_codes(tokens, self.levels)
    return quantizers.vq_codes(tokens, self.codebook)

  def __call__(self, x, noise):
    if self.quantizer != "kl":
      return self.decoder(self.quantize(self.encoder(x))[0])
    mean, log_var = self.encoder(x)
    return self.decoder(mean + jnp.exp(0.5 * log_var) * noise)


def code_channels(quantizer: str, z_channels: int, levels: Sequence[int]) -> int:
  """Channels of the latent the decoder sees: len(levels) for FSQ, else z_channels."""
  return len(levels) if quantizer == "fsq" else z_channels


def downsampling_factor(ch_mult: Sequence[int]) -> int:
  """f = 2^(len(ch_mult) - 1): image side / latent side."""
  return 2 ** (len(ch_mult) - 1)


def build(model: ml_collections.ConfigDict, channels: int, dtype: Dtype = jnp.float32,
          bottleneck: ml_collections.ConfigDict | None = None) -> Autoencoder:
  """The Autoencoder of a config's `model` section (ch, ch_mult, num_res_blocks, norm_groups, z_channels,
  mid_attention) for images with `channels` channels, computing in `dtype` (parameters float32); `bottleneck`
  (config.autoencoder: quantizer, levels, codebook_size) picks a discrete variant."""
  discrete = {}
  if bottleneck is not None and bottleneck.quantizer != "kl":
    discrete = dict(quantizer=bottleneck.quantizer, levels=tuple(bottleneck.levels),
                    codebook_size=bottleneck.codebook_size)
  return Autoencoder(ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
                     norm_groups=model.norm_groups, z_channels=model.z_channels, out_channels=channels,
                     mid_attention=model.mid_attention, dtype=dtype, **discrete)
