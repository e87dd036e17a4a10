"""A PatchGAN discriminator (Isola et al. 2017), as LDM's autoencoders train against.

Unlike LDM's (batch norm), this one has no normalisation, so it never mixes examples and
input-gradient penalties (R1) apply per image.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from genimg_jax.models.layers import Dtype


class PatchDiscriminator(nn.Module):
  """images [B, H, W, C] float32 -> logits [B, h, w] float32, one per overlapping patch.

  num_layers stride-2 4x4 convs (widths ch, 2 ch, 4 ch, ..., capped at 8 ch) with LeakyReLU(0.2),
  then a stride-1 4x4 conv to one logit per position: h = H / 2^num_layers.
  """

  ch: int = 64
  num_layers: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.astype(self.dtype)
    for i in range(self.num_layers):
      h = nn.Conv(self.ch * min(2**i, 8), (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    logits = nn.Conv(1, (4, 4), padding="SAME", dtype=self.dtype, name="logits")(h)
    return logits[..., 0].astype(jnp.float32)
