"""PyTorch reference of the DiT backbone in genimg_jax/models/dit.py.

Follows facebookresearch/DiT's models.py (patch conv, fixed 2-D sin-cos position
embedding, adaLN-Zero blocks, adaLN final layer, its weight initialisation) with ours'
differences: the noise label is embedded by our `timestep_embedding` (sin half first),
the output has `out_ch` channels, the class table always holds the null label
num_classes (label dropout is the caller's), and dropout may be set on the residual
branches. Every parameter tensor has the size of one of ours.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.layers import split_times, timestep_embedding

TIME_FREQUENCIES = 256
LAYER_NORM_EPS = 1e-6


def sincos_pos_embedding(dim: int, grid_size: int) -> np.ndarray:
  """DiT's get_2d_sincos_pos_embed: [grid_size ** 2, dim] float64, column half then row half."""
  grid_w, grid_h = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))

  def encode(position):
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    out = np.einsum("m,d->md", position.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([encode(grid_w), encode(grid_h)], axis=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """x [B, L, D] * (1 + scale) + shift, with shift and scale [B, D]."""
  return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
  """adaLN-Zero Transformer block: x [B, L, D], c [B, D] -> [B, L, D]."""

  def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, dropout: float):
    super().__init__()
    self.num_heads = num_heads
    self.ada_ln = nn.Linear(hidden_size, 6 * hidden_size)
    self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
    self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
    self.attn_out = nn.Linear(hidden_size, hidden_size)
    self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
    self.mlp_in = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
    self.mlp_out = nn.Linear(int(hidden_size * mlp_ratio), hidden_size)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    b, length, d = x.shape
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.ada_ln(F.silu(c)).chunk(6, dim=1)
    h = modulate(self.norm1(x), shift_attn, scale_attn)
    qkv = self.qkv(h).view(b, length, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, d)
    x = x + gate_attn[:, None] * self.dropout(self.attn_out(h))
    h = modulate(self.norm2(x), shift_mlp, scale_mlp)
    h = self.mlp_out(F.gelu(self.mlp_in(h), approximate="tanh"))
    return x + gate_mlp[:, None] * self.dropout(h)


class DiT(nn.Module):
  """Diffusion Transformer: x [B, C, H, W] (H = W = image_size), t [B] float, labels [B] int64 or None
  -> [B, out_ch, H, W] float32.

  labels in [0, num_classes]; num_classes (and labels=None) is the null class. With
  num_classes = 0 there is no class table and labels are ignored. With time_inputs = 2, t is
  [B, 2] (MeanFlow's (t, t - r), a shortcut model's (t, d)): each column embedded by its own MLP, summed.
  """

  def __init__(self, *, in_ch: int, image_size: int, patch_size: int, hidden_size: int, depth: int,
               num_heads: int, out_ch: int, mlp_ratio: float = 4.0, num_classes: int = 0, dropout: float = 0.0,
               time_inputs: int = 1):
    super().__init__()
    if image_size % patch_size:
      raise ValueError(f"DiT: image size {image_size} is not divisible by patch_size={patch_size}")
    if hidden_size % num_heads:
      raise ValueError(f"DiT: hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    self.patch_size, self.out_ch, self.num_classes, self.time_inputs = patch_size, out_ch, num_classes, time_inputs
    self.patch_embed = nn.Conv2d(in_ch, hidden_size, patch_size, stride=patch_size)
    pos = sincos_pos_embedding(hidden_size, image_size // patch_size)
    self.register_buffer("pos_embed", torch.tensor(pos, dtype=torch.float32)[None], persistent=False)
    self.time_in = nn.Linear(TIME_FREQUENCIES, hidden_size)
    self.time_out = nn.Linear(hidden_size, hidden_size)
    # Ours' time_{i}_in, time_{i}_out for the times after the first.
    self.extra_times = nn.ModuleList(nn.Sequential(nn.Linear(TIME_FREQUENCIES, hidden_size), nn.SiLU(),
                                                   nn.Linear(hidden_size, hidden_size))
                                     for _ in range(time_inputs - 1))
    self.label_embed = nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
    self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, dropout) for _ in range(depth)])
    self.final_ada_ln = nn.Linear(hidden_size, 2 * hidden_size)
    self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
    self.final_proj = nn.Linear(hidden_size, patch_size * patch_size * out_ch)
    self._init_weights()

  def _init_weights(self) -> None:
    """DiT's initialize_weights."""
    for layer in self.modules():
      if isinstance(layer, nn.Linear):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
    nn.init.zeros_(self.patch_embed.bias)
    if self.label_embed is not None:
      nn.init.normal_(self.label_embed.weight, std=0.02)
    nn.init.normal_(self.time_in.weight, std=0.02)
    nn.init.normal_(self.time_out.weight, std=0.02)
    for mlp in self.extra_times:
      nn.init.normal_(mlp[0].weight, std=0.02)
      nn.init.normal_(mlp[2].weight, std=0.02)
    for layer in [block.ada_ln for block in self.blocks] + [self.final_ada_ln, self.final_proj]:
      nn.init.zeros_(layer.weight)
      nn.init.zeros_(layer.bias)

  def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    b, _, height, width = x.shape
    p = self.patch_size
    tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [B, L, D]
    first, *others = split_times(t, self.time_inputs)
    c = self.time_out(F.silu(self.time_in(timestep_embedding(first, TIME_FREQUENCIES))))
    for mlp, time in zip(self.extra_times, others):
      c = c + mlp(timestep_embedding(time, TIME_FREQUENCIES))
    if self.label_embed is not None:
      if labels is None:
        labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
      c = c + self.label_embed(labels)
    for block in self.blocks:
      tokens = block(tokens, c)
    shift, scale = self.final_ada_ln(F.silu(c)).chunk(2, dim=1)
    tokens = self.final_proj(modulate(self.norm_final(tokens), shift, scale))
    # DiT's unpatchify: features ordered (row in patch, column in patch, channel).
    out = tokens.reshape(b, height // p, width // p, p, p, self.out_ch)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, self.out_ch, height, width).float()
