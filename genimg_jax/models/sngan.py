"""ResNet generator and discriminator of SNGAN (Miyato et al. 2018, appendix B.4; CIFAR-10).

Generator: z -> dense 4x4 x ch -> log2(H / 4) up-blocks (ch) -> BN, ReLU, conv3x3 -> tanh.
Discriminator: an optimized down-block, down-blocks to 8x8, two plain blocks (all ch),
ReLU, global sum pooling, a linear head; spectral norm on every layer. For 32x32:
3 up-blocks, and 2 down-blocks + 2 plain blocks, with ch 256 (G) and 128 (D).
Residual convs start from Glorot-uniform with gain sqrt(2), shortcuts and linear layers
from gain 1, as in the paper's code.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from genimg_jax.models.gan_layers import (GeneratorNorm, ProjectionHead, avg_pool2, maybe_spectral,
                                          upsample2)

Dtype = Any
_RESIDUAL_INIT = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
_INIT = nn.initializers.xavier_uniform()


class GeneratorBlock(nn.Module):
  """x [B, H, W, C] -> [B, 2H, 2W, ch]: BN-ReLU-up-conv3-BN-ReLU-conv3, plus up-conv1 shortcut."""

  ch: int
  norm: str
  num_classes: int
  bn_momentum: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels, *, train: bool):
    def norm(h):
      return GeneratorNorm(self.norm, self.num_classes, self.bn_momentum, self.dtype)(h, labels, train=train)

    h = upsample2(nn.relu(norm(x)))
    h = nn.Conv(self.ch, (3, 3), kernel_init=_RESIDUAL_INIT, dtype=self.dtype)(h)
    h = nn.Conv(self.ch, (3, 3), kernel_init=_RESIDUAL_INIT, dtype=self.dtype)(nn.relu(norm(h)))
    shortcut = nn.Conv(self.ch, (1, 1), kernel_init=_INIT, dtype=self.dtype, name="shortcut")(upsample2(x))
    return h + shortcut


class ResNetGenerator(nn.Module):
  """z [B, Z] float32, labels [B] int32 -> images [B, H, W, C] float32 in (-1, 1).

  H = W = 4 * 2^k. num_classes > 0: class-conditional batch norm in the blocks
  (conditioning "batch_norm") or a class embedding appended to z ("embedding").
  """

  image_shape: tuple[int, int, int]
  ch: int
  norm: str = "batch"
  num_classes: int = 0
  conditioning: str = "batch_norm"
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, labels, *, train: bool):
    height, _, channels = self.image_shape
    if self.num_classes and self.conditioning == "embedding":
      z = jnp.concatenate([z, nn.Embed(self.num_classes, z.shape[-1], name="class_embed")(labels)], axis=-1)
    cbn_classes = self.num_classes if self.conditioning == "batch_norm" else 0
    h = nn.Dense(4 * 4 * self.ch, kernel_init=_INIT, dtype=self.dtype)(z).reshape(z.shape[0], 4, 4, self.ch)
    for _ in range((height // 4).bit_length() - 1):
      h = GeneratorBlock(self.ch, self.norm, cbn_classes, self.bn_momentum, self.dtype)(h, labels, train=train)
    h = nn.relu(GeneratorNorm(self.norm, 0, self.bn_momentum, self.dtype)(h, labels, train=train))
    h = nn.Conv(channels, (3, 3), kernel_init=_INIT, dtype=self.dtype)(h)
    return jnp.tanh(h.astype(jnp.float32))


class DiscriminatorBlock(nn.Module):
  """x [B, H, W, C] -> [B, H', W', ch], H' = H / 2 if down else H.

  first (the optimized block): conv3-ReLU-conv3-pool, shortcut pool-conv1.
  Otherwise: ReLU-conv3-ReLU-conv3-[pool], shortcut conv1-[pool] when the shape
  changes, else the identity.
  """

  ch: int
  down: bool
  first: bool
  spectral: bool
  update: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    def conv(kernel: int, init, name=None):
      layer = nn.Conv(self.ch, (kernel, kernel), kernel_init=init, dtype=self.dtype, name=name)
      return maybe_spectral(layer, self.spectral, self.update)

    pool = avg_pool2 if self.down else (lambda h: h)
    if self.first:
      h = conv(3, _RESIDUAL_INIT)(nn.relu(conv(3, _RESIDUAL_INIT)(x)))
      return pool(h) + conv(1, _INIT, name="shortcut")(pool(x))
    h = conv(3, _RESIDUAL_INIT)(nn.relu(x))
    h = pool(conv(3, _RESIDUAL_INIT)(nn.relu(h)))
    if self.down or x.shape[-1] != self.ch:
      x = pool(conv(1, _INIT, name="shortcut")(x))
    return h + x


class ResNetDiscriminator(nn.Module):
  """images [B, H, W, C] float32, labels [B] int32 -> logits [B] float32. H = W = 8 * 2^k, k >= 1.

  norm: "spectral" or "none". num_classes > 0: projection discriminator.
  `update`: store the spectral-norm power iteration.
  """

  ch: int
  norm: str = "spectral"
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, labels, *, update: bool):
    spectral = self.norm == "spectral"
    num_down = (x.shape[1] // 8).bit_length() - 1

    def block(down, first=False):
      return DiscriminatorBlock(self.ch, down, first, spectral, update, self.dtype)

    h = block(down=True, first=True)(x.astype(self.dtype))
    for _ in range(num_down - 1):
      h = block(down=True)(h)
    h = block(down=False)(block(down=False)(h))
    h = jnp.sum(nn.relu(h), axis=(1, 2))
    return ProjectionHead(self.num_classes, spectral, _INIT, self.dtype)(h, labels, update=update)
