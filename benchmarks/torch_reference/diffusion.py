"""PyTorch reference of the diffusion method: the DDPM UNet and the denoising train step.

Mirrors genimg_jax/models/unet.py (UNet, with ResBlock, AttnBlock, Downsample,
Upsample and timestep_embedding of genimg_jax/models/layers.py) and the train step
of genimg_jax/methods/diffusion.py with the `simple` loss of
genimg_jax/losses/diffusion.py: t ~ U{0..T-1}, noise ~ N(0, I),
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, and the mean squared error of the
network's output against the configured target (eps, v or x0), under the linear or
cosine beta schedule. Convolutions run channels_last: the NHWC images enter and
the NHWC output leaves as free permutes. Weights start as flax's (truncated LeCun
normal, zero biases, zero second conv of every residual block, zero attention
output projection and zero output conv). AdamW decays every parameter, as
optax.adamw without a mask does in ours.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile
from benchmarks.torch_reference.layers import GROUP_NORM_EPS, Upsample, conv3x3, lecun_normal_
from genimg_jax.losses.noise import beta_schedule  # NumPy float64 betas, computed once on the host

PREDICTIONS = ("eps", "v", "x0")
LOSSES = ("simple",)
DTYPES = ("float32", "bfloat16")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
  """Sinusoidal embedding of timesteps t [B] (any real dtype) -> [B, dim] float32: sin half, then cos half."""
  if dim % 2:
    raise ValueError(f"timestep embedding width must be even, got {dim}")
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
  args = t.float()[:, None] * freqs[None, :]
  return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, add the time embedding, GroupNorm-SiLU-dropout-conv, plus a skip.

  x [B, in_ch, H, W], temb [B, E] -> [B, out_ch, H, W]. The second conv starts at
  zero, so the block starts as the (projected) identity.
  """

  def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, norm_groups: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(norm_groups, in_ch, eps=GROUP_NORM_EPS)
    self.conv1 = conv3x3(in_ch, out_ch)
    self.temb_proj = nn.Linear(temb_ch, out_ch)
    self.norm2 = nn.GroupNorm(norm_groups, out_ch, eps=GROUP_NORM_EPS)
    # flax's Dropout at rate 0 returns its input untouched.
    self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
    self.conv2 = conv3x3(out_ch, out_ch)
    # Ours is a Dense over the channels: the same map and parameter count as a 1x1 conv.
    self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

  def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return self.skip(x) + h


class AttnBlock(nn.Module):
  """Multi-head self-attention over all spatial positions, with a residual connection.

  x [B, C, H, W] (channels_last memory) -> same. One fused qkv projection whose
  output features are ordered (3, heads, head_dim) as ours; the output projection
  starts at zero.
  """

  def __init__(self, ch: int, num_heads: int, norm_groups: int):
    super().__init__()
    if ch % num_heads:
      raise ValueError(f"attention width {ch} is not divisible by num_heads={num_heads}")
    self.num_heads = num_heads
    self.norm = nn.GroupNorm(norm_groups, ch, eps=GROUP_NORM_EPS)
    self.qkv = nn.Linear(ch, 3 * ch)
    self.proj_out = nn.Linear(ch, ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    y = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for channels_last memory
    qkv = self.qkv(y).view(b, h * w, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, head_dim]
    y = F.scaled_dot_product_attention(q, k, v)
    y = self.proj_out(y.transpose(1, 2).reshape(b, h * w, c))
    return x + y.view(b, h, w, c).permute(0, 3, 1, 2)


class UNet(nn.Module):
  """Noise-prediction UNet: x_t [B, C, H, W], t [B] -> [B, out_ch, H, W] float32.

  Each of `len(ch_mult)` levels holds `num_res_blocks` residual blocks of width
  `ch * ch_mult[i]` (self-attention after each where the resolution is in
  `attn_resolutions`) and halves the resolution except at the last level; the
  decoder mirrors it with one more block per level, fed by skip connections.
  """

  def __init__(self, *, in_ch: int, image_size: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int,
               attn_resolutions: tuple[int, ...], dropout: float, out_ch: int, num_heads: int,
               norm_groups: int):
    super().__init__()
    self.ch = ch
    temb_ch = 4 * ch
    self.temb_in = nn.Linear(ch, temb_ch)
    self.temb_out = nn.Linear(temb_ch, temb_ch)
    block = lambda i, o: ResBlock(i, o, temb_ch, dropout, norm_groups)
    attn = lambda c: AttnBlock(c, num_heads, norm_groups)

    self.conv_in = conv3x3(in_ch, ch)
    # Each entry: [resblock, attention or Identity], or a Downsample conv.
    self.down = nn.ModuleList()
    skip_widths, width, res = [ch], ch, image_size
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        self.down.append(nn.ModuleList([block(width, ch * mult), attn(ch * mult) if res in attn_resolutions
                                        else nn.Identity()]))
        width = ch * mult
        skip_widths.append(width)
      if level != len(ch_mult) - 1:
        self.down.append(conv3x3(width, width, stride=2))
        skip_widths.append(width)
        res //= 2

    self.mid_block1 = block(width, width)
    self.mid_attn = attn(width)
    self.mid_block2 = block(width, width)

    self.up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(ch_mult))):
      for _ in range(num_res_blocks + 1):
        self.up.append(nn.ModuleList([block(width + skip_widths.pop(), ch * mult),
                                      attn(ch * mult) if res in attn_resolutions else nn.Identity()]))
        width = ch * mult
      if level != 0:
        self.up.append(Upsample(width))
        res *= 2

    self.norm_out = nn.GroupNorm(norm_groups, width, eps=GROUP_NORM_EPS)
    self.conv_out = conv3x3(width, out_ch)

    for layer in self.modules():
      if isinstance(layer, (nn.Conv2d, nn.Linear)):
        lecun_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    zero_init = [self.conv_out] + [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
    zero_init += [m.proj_out for m in self.modules() if isinstance(m, AttnBlock)]
    for layer in zero_init:
      nn.init.zeros_(layer.weight)

  def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    temb = self.temb_out(F.silu(self.temb_in(timestep_embedding(t, self.ch))))
    h = self.conv_in(x)
    skips = [h]
    for layer in self.down:
      if isinstance(layer, nn.ModuleList):
        res_block, attn = layer
        h = attn(res_block(h, temb))
      else:
        h = layer(h)
      skips.append(h)
    h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)
    for layer in self.up:
      if isinstance(layer, nn.ModuleList):
        res_block, attn = layer
        h = attn(res_block(torch.cat([h, skips.pop()], dim=1), temb))
      else:
        h = layer(h)
    return self.conv_out(F.silu(self.norm_out(h))).float()


class SimpleLoss(nn.Module):
  """The 'simple' objective: the mean squared error of the UNet's output against its prediction target."""

  def __init__(self, model: UNet, betas: np.ndarray, prediction: str):
    super().__init__()
    self.model = model
    self.prediction = prediction
    # float64 cumprod, then float32 as ours.
    self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32))

  def forward(self, x0: torch.Tensor) -> torch.Tensor:
    """x0 [B, H, W, C] float32 in [-1, 1] -> loss (0-d float32)."""
    t = torch.randint(0, self.alphas_cumprod.shape[0], (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
    sa, s1a = torch.sqrt(abar), torch.sqrt(1.0 - abar)
    x_t = sa * x0 + s1a * noise
    output = self.model(x_t.permute(0, 3, 1, 2), t).permute(0, 2, 3, 1)  # NCHW views of NHWC memory
    if self.prediction == "eps":
      target = noise
    elif self.prediction == "x0":
      target = x0
    else:
      target = sa * noise - s1a * x0
    return torch.mean(torch.square(output - target))


def _validate(config) -> None:
  """Raises ValueError for the options of `config` this reference does not implement."""
  m, d = config.model, config.diffusion
  if m.dtype not in DTYPES:
    raise ValueError(f"the torch diffusion reference has no model.dtype {m.dtype!r}; choose one of {DTYPES}")
  if d.prediction not in PREDICTIONS:
    raise ValueError(f"the torch diffusion reference has no prediction {d.prediction!r}; "
                     f"choose one of {PREDICTIONS}")
  if config.loss.name not in LOSSES:
    raise ValueError(f"the torch diffusion reference has no loss {config.loss.name!r} (custom "
                     f"'module:function' losses are JAX code); choose one of {LOSSES}")


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The UNet of `config` on `device` with its Adam + clipping + EMA denoising train step."""
  _validate(config)
  m, d, opt = config.model, config.diffusion, config.optimizer
  model = UNet(in_ch=config.data.channels, image_size=config.data.image_size, ch=m.ch, ch_mult=tuple(m.ch_mult),
               num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
               out_ch=config.data.channels, num_heads=m.num_heads, norm_groups=m.norm_groups)
  betas = beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end)
  loss_module = SimpleLoss(model, betas, d.prediction).to(device, memory_format=torch.channels_last)
  loss_module.train()
  loss_fn = maybe_compile(loss_module, compile)
  params = [p for p in model.parameters() if p.requires_grad]
  update = make_update(params, opt, device)
  ema_update = make_ema(params, config.ema.decay)

  def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    del labels  # unconditional
    with autocast(config, device):
      loss = loss_fn(images)
    loss.backward()
    update()
    ema_update()
    return loss.detach()

  return Reference(modules={"model": model}, train_step=train_step)
