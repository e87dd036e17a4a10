"""The DDPM UNet (Ho et al. 2020, the `diffusion_tf` architecture) in flax.linen."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from genimg_jax.models import layers


class UNet(nn.Module):
  """Noise-prediction UNet: x_t [B, H, W, C] float, t [B], labels [B] int32 or None -> [B, H, W, out_ch]
  float32.

  Each of `len(ch_mult)` levels holds `num_res_blocks` residual blocks of width
  `ch * ch_mult[i]` (self-attention after each where the current resolution is in
  `attn_resolutions`) and halves the resolution except at the last level; the
  decoder mirrors it with one more block per level, fed by skip connections.
  H and W must be divisible by 2 ** (len(ch_mult) - 1).
  With num_classes > 0 a class embedding of labels in [0, num_classes] is added to the time
  embedding; the label num_classes (and labels=None) is the null class of classifier-free
  guidance. With num_classes = 0 labels are ignored.
  With time_inputs = 2, t is [B, 2]: a time and a second scalar (MeanFlow's t - r, a shortcut model's
  step size), each embedded by its own MLP and summed; with 1, t is [B] and the parameters are those
  of a one-time UNet.
  """

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  dropout: float
  out_ch: int
  num_heads: int = 1
  norm_groups: int = 32
  num_classes: int = 0
  time_inputs: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    block = lambda ch: layers.ResBlock(ch, self.dropout, self.norm_groups, self.dtype)
    attn = lambda: layers.AttnBlock(self.num_heads, self.norm_groups, self.dtype)

    times = layers.split_times(t, self.time_inputs)
    temb = layers.timestep_embedding(times[0], self.ch)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype)(nn.silu(temb))
    for i, extra in enumerate(times[1:], start=1):
      e = nn.Dense(4 * self.ch, dtype=self.dtype, name=f"time_{i}_in")(layers.timestep_embedding(extra, self.ch))
      temb = temb + nn.Dense(4 * self.ch, dtype=self.dtype, name=f"time_{i}_out")(nn.silu(e))
    if self.num_classes:
      if labels is None:
        labels = jnp.full(x.shape[:1], self.num_classes, jnp.int32)
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name="class_embed")(labels)

    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = block(self.ch * mult)(h, temb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = layers.Downsample(self.dtype)(h)
        skips.append(h)

    h = block(h.shape[-1])(h, temb, train=train)
    h = attn()(h)
    h = block(h.shape[-1])(h, temb, train=train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), temb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
      if level != 0:
        h = layers.Upsample(self.dtype)(h)

    h = nn.silu(nn.GroupNorm(self.norm_groups, dtype=self.dtype)(h))
    h = layers.zero_init_conv(self.out_ch, 3, self.dtype, name="conv_out")(h)
    return h.astype(jnp.float32)
