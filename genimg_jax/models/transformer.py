"""A decoder-only Transformer over 8-bit pixel tokens in raster order (ImageGPT-style).

An image [H, W, C] is the sequence of its L = H * W * C sub-pixel values, row by
row, channels interleaved (R, G, B of a pixel in turn). The input at position i
is the token of position i - 1, and a start token (a learned vector, one per
class when class-conditional) at position 0; the output at position i is the
logits of token i. Blocks are pre-LayerNorm with causal self-attention through
`jax.nn.dot_product_attention` (cuDNN or XLA) or, on a CPU, `attention.causal_attention`
(query blocks that skip the keys after them). Parameters are float32, compute in `dtype`,
logits float32.

Decoding with a key/value cache: `init_cache(model, B)` gives per-layer buffers
[B, L, heads, head_dim]; `decode_step` embeds one input token, writes its keys
and values at `position` and attends over the first position + 1 entries.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genimg_jax.models import attention

NUM_TOKENS = 256  # 8-bit values
POSITION_EMBEDDINGS = ("learned", "factorized")
ATTENTION_QUERY_BLOCKS = 4  # "blocked" attention: the fastest of 2, 4, 6, 8, 16 for igpt_digits on a 2-core CPU
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "blocked")

Cache = list[dict[str, jax.Array]]


def attention_implementation(name: str, dtype) -> str:
  """The training attention for a config value: "xla", "cudnn" or "blocked".

  "auto" picks cuDNN's fused kernel on a GPU with a 16-bit compute dtype (the only
  dtypes it takes), `attention.causal_attention` ("blocked") on a CPU, else XLA's
  jax.nn.dot_product_attention; the other names force one.
  """
  if name != "auto":
    return name
  backend = jax.default_backend()
  if backend == "cpu":
    return "blocked"
  sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if backend == "gpu" and sixteen_bit else "xla"


def _dense(features, dtype, name, std=0.02):
  return nn.DenseGeneral(features, dtype=dtype, kernel_init=nn.initializers.normal(std), name=name)


class Block(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); dropout on both residual branches.

  Full sequence: x [B, L, D] -> [B, L, D]. One position with a cache: `decode`. causal=False: every
  position attends to every other (a bidirectional encoder such as MaskGIT's; "blocked" then means XLA's).
  """

  width: int
  num_heads: int
  mlp_ratio: int
  dropout: float
  num_layers: int  # of the whole stack: scales the residual projections' initialisation
  attention: str  # "xla", "cudnn" or "blocked"
  dtype: Any = jnp.float32
  causal: bool = True

  def setup(self):
    width, head_dim = self.width, self.width // self.num_heads
    out_std = 0.02 / math.sqrt(2 * self.num_layers)  # GPT-2: keeps the residual stream's variance
    self.ln_attn = nn.LayerNorm(dtype=self.dtype)
    self.qkv = _dense((3, self.num_heads, head_dim), self.dtype, "qkv")
    self.attn_out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype,
                                    kernel_init=nn.initializers.normal(out_std), name="attn_out")
    self.ln_mlp = nn.LayerNorm(dtype=self.dtype)
    self.mlp_in = _dense(self.mlp_ratio * width, self.dtype, "mlp_in")
    self.mlp_out = _dense(width, self.dtype, "mlp_out", std=out_std)
    self.drop = nn.Dropout(self.dropout)

  def _mlp(self, x, train):
    h = self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))
    return x + self.drop(h, deterministic=not train)

  def __call__(self, x, *, train: bool):
    qkv = self.qkv(self.ln_attn(x))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    with jax.named_scope("attention"):  # names the scores, softmax and values in profiles
      if self.attention == "blocked" and self.causal:
        y = attention.causal_attention(q, k, v, ATTENTION_QUERY_BLOCKS)
      else:
        implementation = "xla" if self.attention == "blocked" else self.attention
        y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal, implementation=implementation)
    x = x + self.drop(self.attn_out(y), deterministic=not train)
    return self._mlp(x, train)

  def decode(self, x, cache: dict[str, jax.Array], position: jax.Array):
    """x [B, 1, D] at `position` (int32 scalar); cache {'key','value'}: [B, L, N, Hd].

    Returns (output [B, 1, D], the cache with this position's keys and values written).
    """
    qkv = self.qkv(self.ln_attn(x))
    start = (0, position, 0, 0)
    cache = {"key": jax.lax.dynamic_update_slice(cache["key"], qkv[:, :, 1].astype(cache["key"].dtype), start),
             "value": jax.lax.dynamic_update_slice(cache["value"], qkv[:, :, 2].astype(cache["value"].dtype),
                                                   start)}
    lengths = jnp.full((x.shape[0],), position + 1, jnp.int32)  # Entries past `position` are unwritten.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], cache["key"], cache["value"],
                                     key_value_seq_lengths=lengths, implementation="xla")
    x = x + self.attn_out(y)
    return self._mlp(x, train=False), cache


class ImageTransformer(nn.Module):
  """Logits of every sub-pixel token of an image given the tokens before it.

  image_shape: (H, W, C); the sequence length is L = H * W * C. vocab_size: the values a token takes (256
  8-bit values of pixels; a tokenizer's code count over its token grid, image_shape (h, w, 1)).
  width must be divisible by num_heads. num_classes: 0 for an unconditional model, else the
  start token is a learned vector per class. position_embedding: "learned" (one
  vector per position) or "factorized" (row + column + channel vectors).
  attention: an ATTENTION_IMPLEMENTATIONS name, resolved by `attention_implementation`.
  """

  image_shape: tuple[int, int, int]
  num_layers: int
  width: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  position_embedding: str = "factorized"
  attention: str = "auto"
  dtype: Any = jnp.float32
  vocab_size: int = NUM_TOKENS

  @property
  def seq_len(self) -> int:
    return math.prod(self.image_shape)

  def setup(self):
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}")
    embed = lambda n, name: nn.Embed(n, self.width, embedding_init=nn.initializers.normal(0.02), name=name)
    self.token_embed = embed(self.vocab_size, "token_embed")
    self.start_embed = embed(max(self.num_classes, 1), "start_embed")
    if self.position_embedding == "learned":
      self.position_embed = embed(self.seq_len, "position_embed")
    else:
      h, w, c = self.image_shape
      self.row_embed, self.column_embed, self.channel_embed = (
          embed(h, "row_embed"), embed(w, "column_embed"), embed(c, "channel_embed"))
    self.embed_drop = nn.Dropout(self.dropout)
    implementation = attention_implementation(self.attention, self.dtype)
    self.blocks = [Block(self.width, self.num_heads, self.mlp_ratio, self.dropout, self.num_layers,
                         implementation, self.dtype, name=f"block_{i}") for i in range(self.num_layers)]
    self.ln_final = nn.LayerNorm(dtype=jnp.float32)
    # Zero logits at initialisation: the model starts uniform (8 bits/dim on pixels).
    self.head = nn.Dense(self.vocab_size, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="head")

  def _positions(self, index: jax.Array) -> jax.Array:
    """Position embeddings [N, D] float32 of sequence indices [N] int32."""
    if self.position_embedding == "learned":
      return self.position_embed(index)
    _, w, c = self.image_shape
    return self.row_embed(index // (w * c)) + self.column_embed(index // c % w) + self.channel_embed(index % c)

  def _start(self, labels: jax.Array | None, batch: int) -> jax.Array:
    """The start-token embedding [B, D]: per class, or the single unconditional one."""
    if self.num_classes:
      if labels is None:
        raise ValueError("a class-conditional model needs labels")
      return self.start_embed(labels)
    return self.start_embed(jnp.zeros((batch,), jnp.int32))

  def _logits(self, x):
    return self.head(self.ln_final(x.astype(jnp.float32)))

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """tokens [B, L] int32 in 0..255, labels [B] int32 or None -> logits [B, L, 256] float32.

    Logits at position i depend only on tokens[:, :i] (and the label).
    """
    b = tokens.shape[0]
    inputs = jnp.concatenate([self._start(labels, b)[:, None], self.token_embed(tokens[:, :-1])], axis=1)
    x = inputs + self._positions(jnp.arange(self.seq_len))[None]
    x = self.embed_drop(x, deterministic=not train).astype(self.dtype)
    for block in self.blocks:
      x = block(x, train=train)
    return self._logits(x)

  def decode_step(self, previous: jax.Array, labels: jax.Array | None, position: jax.Array,
                  cache: Cache) -> tuple[jax.Array, Cache]:
    """Logits of the token at `position` given the cache of positions before it (eval mode).

    previous: [B] int32, the token at position - 1 (ignored at position 0, where the
    start token is used). position: int32 scalar. cache: as `init_cache(model, B)`.
    Returns (logits [B, 256] float32, the cache with this position written).
    """
    start = self._start(labels, previous.shape[0])
    x = jnp.where(position == 0, start, self.token_embed(previous)) + self._positions(position[None])
    x = x[:, None].astype(self.dtype)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block.decode(x, layer_cache, position)
      new_cache.append(layer_cache)
    return self._logits(x[:, 0]), new_cache


def init_cache(model: ImageTransformer, batch: int) -> Cache:
  """Zeroed key/value buffers: per layer {'key', 'value'} [batch, L, heads, width // heads] in model.dtype."""
  shape = (batch, model.seq_len, model.num_heads, model.width // model.num_heads)
  return [{"key": jnp.zeros(shape, model.dtype), "value": jnp.zeros(shape, model.dtype)}
          for _ in range(model.num_layers)]
