"""DCGAN generator and discriminator (Radford et al. 2015), for any size divisible by 2^levels.

With `ch_mult` = (m_1, ..., m_L) the generator projects z to a (H / 2^L)-sized map
of ch * m_L channels and doubles the resolution L times with 4x4 stride-2
transposed convolutions (ch * m_{L-1}, ..., ch * m_1 channels, then the image's);
the discriminator mirrors it with 4x4 stride-2 convolutions. 64x64: ch_mult
(1, 2, 4, 8) from 4x4; 32x32: (1, 2, 4) from 4x4; 28x28: (1, 2) from 7x7.
Weights start from N(0, 0.02) as in the paper.
"""


import flax.linen as nn
import jax.numpy as jnp

from genimg_jax.models.gan_layers import ConvTranspose4x4Stride2, GeneratorNorm, ProjectionHead, maybe_spectral
from genimg_jax.models.layers import Dtype
_INIT = nn.initializers.normal(0.02)


class DCGANGenerator(nn.Module):
  """z [B, Z] float32, labels [B] int32 -> images [B, H, W, C] float32 in (-1, 1) (tanh).

  norm: "batch" (after every layer but the last, as in the paper) or "none".
  num_classes > 0 makes it class-conditional: conditioning "embedding" appends a
  learned class embedding (width Z) to z; "batch_norm" uses class-conditional batch norm.
  """

  image_shape: tuple[int, int, int]
  ch: int
  ch_mult: tuple[int, ...]
  norm: str = "batch"
  num_classes: int = 0
  conditioning: str = "embedding"
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, labels, *, train: bool):
    height, width, channels = self.image_shape
    levels = len(self.ch_mult)
    cbn_classes = self.num_classes if self.conditioning == "batch_norm" else 0

    def norm_relu(h):
      return nn.relu(GeneratorNorm(self.norm, cbn_classes, self.bn_momentum, self.dtype)(h, labels, train=train))

    if self.num_classes and self.conditioning == "embedding":
      z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], name="class_embed")(labels)], axis=-1)
    base_h, base_w = height >> levels, width >> levels
    normed = self.norm != "none"  # A bias before batch norm has no gradient: left out.
    h = nn.Dense(base_h * base_w * self.ch * self.ch_mult[-1], use_bias=not normed, kernel_init=_INIT,
                 dtype=self.dtype)(z)
    h = norm_relu(h.reshape(z.shape[0], base_h, base_w, self.ch * self.ch_mult[-1]))
    for i, mult in enumerate(reversed(self.ch_mult[:-1])):
      h = ConvTranspose4x4Stride2(self.ch * mult, use_bias=not normed, kernel_init=_INIT, dtype=self.dtype,
                                  name=f"ConvTranspose_{i}")(h)
      h = norm_relu(h)
    h = ConvTranspose4x4Stride2(channels, kernel_init=_INIT, dtype=self.dtype,
                                name=f"ConvTranspose_{len(self.ch_mult) - 1}")(h)
    return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
  """images [B, H, W, C] float32, labels [B] int32 -> logits [B] float32.

  norm: "batch" (batch statistics; every conv but the first, as in the paper),
  "spectral" (spectral norm on every layer) or "none". LeakyReLU(0.2) after each
  conv, then a linear head on the flattened features (with num_classes > 0 a
  projection discriminator). `update`: store the spectral-norm power iteration.
  """

  ch: int
  ch_mult: tuple[int, ...]
  norm: str = "batch"
  num_classes: int = 0
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels, *, update: bool):
    spectral = self.norm == "spectral"
    h = x.astype(self.dtype)
    for i, mult in enumerate(self.ch_mult):
      batch_norm = self.norm == "batch" and i > 0
      conv = nn.Conv(self.ch * mult, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=not batch_norm,
                     kernel_init=_INIT, dtype=self.dtype)
      h = maybe_spectral(conv, spectral, update)(h)
      if batch_norm:
        h = nn.BatchNorm(use_running_average=False, momentum=self.bn_momentum, dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    return ProjectionHead(self.num_classes, spectral, _INIT, self.dtype)(
        h.reshape(h.shape[0], -1), labels, update=update)
