"""MaskGIT's bidirectional Transformer (Chang et al. 2022) over a tokenizer's token grid.

The input is the grid's L = h * w tokens in raster order, each a code in [0, K) or the [MASK] token K, with
a class token in front (class c, or the null class `num_classes` for the unconditional model that
classifier-free guidance needs and label dropout trains). Learned position embeddings, then the pre-LayerNorm
blocks of models/transformer.py without the causal mask, a final LayerNorm and a head to K logits per grid
position (the [MASK] token is never predicted). Parameters float32, compute in `dtype`, logits float32.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from genimg_jax.models import transformer


class MaskGITTransformer(nn.Module):
  """tokens [B, L] int32 in [0, K] (K = [MASK]), labels [B] int32 in [0, num_classes] (num_classes = null)
  -> logits [B, L, K] float32. num_classes 0: unconditional (every label is the null class)."""

  num_tokens: int  # K, the tokenizer's codes
  seq_len: int  # L = h * w
  num_layers: int
  width: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  attention: str = "auto"
  dtype: Any = jnp.float32

  @property
  def mask_token(self) -> int:
    return self.num_tokens

  @nn.compact
  def __call__(self, tokens, labels=None, *, train: bool = False):
    embed = lambda n, name: nn.Embed(n, self.width, embedding_init=nn.initializers.normal(0.02), name=name)
    if labels is None:
      labels = jnp.full((tokens.shape[0],), self.num_classes, jnp.int32)
    x = jnp.concatenate([embed(self.num_classes + 1, "class_embed")(labels)[:, None],
                         embed(self.num_tokens + 1, "token_embed")(tokens)], axis=1)
    x = x + embed(self.seq_len + 1, "position_embed")(jnp.arange(self.seq_len + 1))[None]
    x = nn.Dropout(self.dropout)(x, deterministic=not train).astype(self.dtype)
    implementation = transformer.attention_implementation(self.attention, self.dtype)
    for i in range(self.num_layers):
      x = transformer.Block(self.width, self.num_heads, self.mlp_ratio, self.dropout, self.num_layers,
                            implementation, self.dtype, causal=False, name=f"block_{i}")(x, train=train)
    x = nn.LayerNorm(dtype=jnp.float32, name="ln_final")(x[:, 1:].astype(jnp.float32))
    return nn.Dense(self.num_tokens, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="head")(x)
