"""PyTorch reference of the autoregressive method: the ImageGPT-style Transformer and its train step.

Mirrors genimg_jax/models/transformer.py (ImageTransformer) and the train step of
genimg_jax/methods/autoregressive.py with the `nll` loss of
genimg_jax/losses/autoregressive.py: 8-bit sub-pixel tokens in raster order
(channels interleaved), a learned start token (one per class when
class-conditional), learned or factorized (row + column + channel) position
embeddings, pre-LayerNorm blocks with one fused qkv projection and causal
F.scaled_dot_product_attention, tanh-GELU MLP, dropout on the embeddings and on
both residual branches, a float32 LayerNorm and zero-initialised head, and the
mean 256-way cross entropy in nats/dim. AdamW decays every parameter, as
optax.adamw without a mask does in ours.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile

NUM_TOKENS = 256  # 8-bit values
LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default


class Block(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); dropout on both residual branches.

  x [B, L, D] -> [B, L, D] in the compute dtype.
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: int, dropout: float, num_layers: int):
    super().__init__()
    self.num_heads = num_heads
    out_std = 0.02 / math.sqrt(2 * num_layers)  # GPT-2 scaling of the residual projections
    self.ln_attn = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    # One fused projection; its output features are ordered (3, heads, head_dim) as ours.
    self.qkv = nn.Linear(width, 3 * width)
    self.attn_out = nn.Linear(width, width)
    self.ln_mlp = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.mlp_in = nn.Linear(width, mlp_ratio * width)
    self.mlp_out = nn.Linear(mlp_ratio * width, width)
    self.drop = nn.Dropout(dropout)
    for layer, std in ((self.qkv, 0.02), (self.attn_out, out_std), (self.mlp_in, 0.02), (self.mlp_out, out_std)):
      nn.init.normal_(layer.weight, std=std)
      nn.init.zeros_(layer.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, length, width = x.shape
    qkv = self.qkv(self.ln_attn(x)).view(b, length, 3, self.num_heads, width // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.transpose(1, 2).reshape(b, length, width)
    x = x + self.drop(self.attn_out(y))
    return x + self.drop(self._mlp(x))

  def _mlp(self, x: torch.Tensor) -> torch.Tensor:
    return self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))

  def decode(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int) -> torch.Tensor:
    """The block at one `position` (eval mode): x [B, 1, D] -> [B, 1, D]. keys, values [B, heads, L, head_dim]:
    the cache, this position's written in place; the query attends to positions 0..position."""
    b, _, width = x.shape
    qkv = self.qkv(self.ln_attn(x)).view(b, 1, 3, self.num_heads, width // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, 1, head_dim]
    keys[:, :, position], values[:, :, position] = k[:, :, 0], v[:, :, 0]
    y = F.scaled_dot_product_attention(q, keys[:, :, :position + 1], values[:, :, :position + 1])
    x = x + self.attn_out(y.transpose(1, 2).reshape(b, 1, width))
    return x + self._mlp(x)


class ImageTransformer(nn.Module):
  """Logits of every sub-pixel token of an image given the tokens before it.

  image_shape: (H, W, C); sequence length L = H * W * C. num_classes: 0 for an
  unconditional model. position_embedding: "learned" or "factorized".
  compute_dtype: the dtype of the residual stream (ours casts it after the
  embeddings); the final LayerNorm and head run in float32.
  """

  def __init__(self, image_shape: tuple[int, int, int], num_layers: int, width: int, num_heads: int,
               mlp_ratio: int, dropout: float, num_classes: int, position_embedding: str,
               compute_dtype: torch.dtype):
    super().__init__()
    if position_embedding not in ("learned", "factorized"):
      raise ValueError(f"position_embedding must be 'learned' or 'factorized', got {position_embedding!r}")
    self.image_shape = tuple(image_shape)
    self.seq_len = math.prod(image_shape)
    self.num_classes = num_classes
    self.position_embedding = position_embedding
    self.compute_dtype = compute_dtype
    self.token_embed = nn.Embedding(NUM_TOKENS, width)
    self.start_embed = nn.Embedding(max(num_classes, 1), width)
    embeddings = [self.token_embed, self.start_embed]
    if position_embedding == "learned":
      self.position_embed = nn.Embedding(self.seq_len, width)
      embeddings.append(self.position_embed)
    else:
      h, w, c = image_shape
      self.row_embed, self.column_embed, self.channel_embed = (
          nn.Embedding(h, width), nn.Embedding(w, width), nn.Embedding(c, width))
      embeddings += [self.row_embed, self.column_embed, self.channel_embed]
    for embedding in embeddings:
      nn.init.normal_(embedding.weight, std=0.02)
    self.embed_drop = nn.Dropout(dropout)
    self.blocks = nn.ModuleList(
        [Block(width, num_heads, mlp_ratio, dropout, num_layers) for _ in range(num_layers)])
    self.ln_final = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
    self.head = nn.Linear(width, NUM_TOKENS)
    # Zero logits at initialisation: the model starts as the uniform 8 bits/dim.
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)
    self.register_buffer("positions", torch.arange(self.seq_len), persistent=False)

  def _position_embeddings(self) -> torch.Tensor:
    """[L, D] float32 embeddings of every sequence position."""
    index = self.positions
    if self.position_embedding == "learned":
      return self.position_embed(index)
    _, w, c = self.image_shape
    return self.row_embed(index // (w * c)) + self.column_embed(index // c % w) + self.channel_embed(index % c)

  def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """tokens [B, L] int64 in 0..255, labels [B] int64 or None -> logits [B, L, 256] float32."""
    if self.num_classes:
      if labels is None:
        raise ValueError("a class-conditional model needs labels")
      start = self.start_embed(labels)
    else:
      start = self.start_embed.weight.expand(tokens.shape[0], -1)
    inputs = torch.cat([start[:, None], self.token_embed(tokens[:, :-1])], dim=1)
    x = self.embed_drop(inputs + self._position_embeddings()[None]).to(self.compute_dtype)
    for block in self.blocks:
      x = block(x)
    with torch.autocast(x.device.type, enabled=False):
      return self.head(self.ln_final(x.float()))


@torch.no_grad()
def sample_tokens(model: ImageTransformer, num: int, labels: torch.Tensor | None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
  """Tokens [num, L] int64 drawn one at a time at temperature 1, as our cached sampler: a key/value cache per
  block, one position per network pass (L passes). labels [num] int64 for a class-conditional model, else None.
  Call with the model in eval mode."""
  positions = model._position_embeddings()
  start = model.start_embed(labels) if model.num_classes else model.start_embed.weight.expand(num, -1)
  x = (start + positions[0])[:, None].to(model.compute_dtype)
  heads = model.blocks[0].num_heads
  cache_shape = (num, heads, model.seq_len, x.shape[-1] // heads)
  caches = [(x.new_empty(cache_shape), x.new_empty(cache_shape)) for _ in model.blocks]
  tokens = []
  for position in range(model.seq_len):
    for block, (keys, values) in zip(model.blocks, caches):
      x = block.decode(x, keys, values, position)
    with torch.autocast(x.device.type, enabled=False):
      logits = model.head(model.ln_final(x.float()))[:, 0]
    token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
    tokens.append(token)
    if position + 1 < model.seq_len:
      x = (model.token_embed(token) + positions[position + 1])[:, None].to(model.compute_dtype)
  return torch.stack(tokens, dim=1)


def image_to_tokens(images: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
  """Images [B, H, W, C] float in [-1, 1] -> tokens [B, H * W * C] int64, raster order.

  The nearest of the 256 levels x / 127.5 - 1, by the midpoints [255] float32 between them.
  """
  return torch.bucketize(images.float(), midpoints).reshape(images.shape[0], -1)


class NLLLoss(nn.Module):
  """Teacher-forced negative log-likelihood in nats/dim: images, labels -> scalar float32."""

  def __init__(self, model: ImageTransformer):
    super().__init__()
    self.model = model
    levels = torch.arange(NUM_TOKENS, dtype=torch.float32) / 127.5 - 1.0
    self.register_buffer("midpoints", (levels[1:] + levels[:-1]) / 2, persistent=False)

  def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """images [B, H, W, C] float32 in [-1, 1], labels [B] int64 -> mean nats/dim (0-d float32)."""
    tokens = image_to_tokens(images, self.midpoints)
    logits = self.model(tokens, labels if self.model.num_classes else None)
    return F.cross_entropy(logits.reshape(-1, NUM_TOKENS), tokens.reshape(-1))


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The Transformer of `config` on `device` with its AdamW + clipping + EMA train step."""
  m, opt = config.model, config.optimizer
  model = ImageTransformer(
      image_shape=(config.data.image_size, config.data.image_size, config.data.channels),
      num_layers=m.num_layers, width=m.width, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      dropout=m.dropout, num_classes=m.num_classes, position_embedding=m.position_embedding,
      compute_dtype=torch.bfloat16 if m.dtype == "bfloat16" else torch.float32).to(device)
  model.train()
  loss_fn = maybe_compile(NLLLoss(model).to(device), compile)
  params = [p for p in model.parameters() if p.requires_grad]
  update = make_update(params, opt, device)
  ema_update = make_ema(params, config.ema.decay)

  def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with autocast(config, device):
      loss = loss_fn(images, labels)
    loss.backward()
    update()
    ema_update()
    return loss.detach()

  def sample(variant: str, num: int) -> torch.Tensor | None:
    """run.py's 'cached' sampler: images [num, H, W, C] float32 in [-1, 1]; None for another variant, and under
    torch.compile (the cache's growing slices would recompile at every position)."""
    if variant != "cached" or compile:
      return None
    generator = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.randint(0, m.num_classes, (num,), generator=generator).to(device) if m.num_classes else None
    model.eval()
    try:
      with autocast(config, device):
        tokens = sample_tokens(model, num, labels)
    finally:
      model.train()
    return (tokens.float() / 127.5 - 1.0).reshape(num, *model.image_shape)

  return Reference(modules={"model": model}, train_step=train_step, sample=sample)
