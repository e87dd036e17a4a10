"""PyTorch reference of the diffusion method: its networks and its denoising train steps.

The network (model.arch): the DDPM UNet here, mirroring genimg_jax/models/unet.py (UNet,
with ResBlock, AttnBlock, Downsample, Upsample and timestep_embedding of
genimg_jax/models/layers.py), or the DiT of benchmarks/torch_reference/dit.py. Either takes
(x [B, C, H, W], noise label [B], labels [B] or None); with model.num_classes > 0 it embeds
the class (the label num_classes is the null class).
The objective (diffusion.process), as genimg_jax/methods/diffusion.py trains with loss `simple`:
- ddpm (genimg_jax/diffusion/ddpm.py): t ~ U{0..T-1}, noise ~ N(0, I),
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, and the mean squared error of the
  network's output against the configured target (eps, v or x0), under the linear or
  cosine beta schedule; the noise label is t.
- edm (genimg_jax/diffusion/edm.py): ln sigma ~ N(P_mean, P_std^2), x = x0 + sigma n,
  D = c_skip x + c_out F(c_in x; c_noise), the mean of lambda(sigma) (D - x0)^2.
- flow (genimg_jax/diffusion/flow.py): t uniform or logit-normal, x_t = (1 - t) x0 + t eps, the mean
  squared error of the velocity against eps - x0; the noise label is 999 t.
A class-conditional network sees each label replaced by the null label with probability
diffusion.label_dropout. Convolutions run channels_last: the NHWC images enter and the
NHWC output leaves as free permutes. The UNet's weights start as flax's (truncated LeCun
normal, zero biases, zero second conv of every residual block, zero attention output
projection and zero output conv, N(0, 1 / width) class embedding). AdamW decays every
parameter, as optax.adamw without a mask does in ours.
"""

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile
from benchmarks.torch_reference.dit import DiT
from benchmarks.torch_reference.layers import GROUP_NORM_EPS, Upsample, conv3x3, lecun_normal_, timestep_embedding
from genimg_jax.diffusion.ddpm import beta_schedule  # NumPy float64 betas, computed once on the host
from genimg_jax.diffusion.flow import TIME_SCALE as FLOW_TIME_SCALE

ARCHS = ("unet", "dit")
PROCESSES = ("ddpm", "edm", "flow")
PREDICTIONS = ("eps", "v", "x0")
TIME_SCHEDULES = ("uniform", "logit_normal")
LOSSES = ("simple",)
DTYPES = ("float32", "bfloat16")


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
  """Noise-prediction UNet: x_t [B, C, H, W], t [B], labels [B] int64 or None -> [B, out_ch, H, W] float32.

  Each of `len(ch_mult)` levels holds `num_res_blocks` residual blocks of width
  `ch * ch_mult[i]` (self-attention after each where the resolution is in
  `attn_resolutions`) and halves the resolution except at the last level; the
  decoder mirrors it with one more block per level, fed by skip connections.
  With num_classes > 0 an embedding of labels in [0, num_classes] is added to the time
  embedding (num_classes, and labels=None, is the null class); with 0 labels are ignored.
  """

  def __init__(self, *, in_ch: int, image_size: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int,
               attn_resolutions: tuple[int, ...], dropout: float, out_ch: int, num_heads: int,
               norm_groups: int, num_classes: int = 0):
    super().__init__()
    self.ch, self.num_classes = ch, num_classes
    temb_ch = 4 * ch
    self.temb_in = nn.Linear(ch, temb_ch)
    self.temb_out = nn.Linear(temb_ch, temb_ch)
    self.class_embed = nn.Embedding(num_classes + 1, temb_ch) if num_classes else None
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
    if self.class_embed is not None:  # flax's Embed: N(0, 1 / width), not truncated
      nn.init.normal_(self.class_embed.weight, std=temb_ch ** -0.5)

  def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    temb = self.temb_out(F.silu(self.temb_in(timestep_embedding(t, self.ch))))
    if self.class_embed is not None:
      if labels is None:
        labels = torch.full(x.shape[:1], self.num_classes, dtype=torch.long, device=x.device)
      temb = temb + self.class_embed(labels)
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


def edm_loss(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor, sigma_data: float) -> torch.Tensor:
  """EDM's loss (Karras et al. 2022, eq. 2 with Table 1's preconditioning) at given noise levels and noise.

  Args:
    network: F(x_in [B, H, W, C], c_noise [B]) -> [B, H, W, C], the raw network of
      D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), c_noise = ln(sigma) / 4.
    x0: [B, H, W, C] clean images.
    sigma: [B] noise levels.
    noise: [B, H, W, C] standard normal draws n: x = x0 + sigma n.
    sigma_data: sd of c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
      c_in = 1 / sqrt(sigma^2 + sd^2).
  Returns:
    0-d: the mean over images and pixels of lambda(sigma) (D(x; sigma) - x0)^2,
    lambda = (sigma^2 + sd^2) / (sigma sd)^2. Dtype of x0 (float64 in, float64 out).
  """
  s = sigma.view(-1, 1, 1, 1)
  total = s**2 + sigma_data**2
  c_skip, c_out, c_in = sigma_data**2 / total, s * sigma_data / torch.sqrt(total), 1.0 / torch.sqrt(total)
  x = x0 + s * noise
  denoised = c_skip * x + c_out * network(c_in * x, torch.log(sigma) / 4)
  return torch.mean(total / (s * sigma_data) ** 2 * torch.square(denoised - x0))


def flow_loss(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
  """The flow-matching loss at given times and noise.

  Args:
    network: v(x_t [B, H, W, C], noise_label [B]) -> [B, H, W, C], the velocity, given the
      noise label FLOW_TIME_SCALE t as ours.
    x0: [B, H, W, C] clean images.
    t: [B] times in [0, 1].
    noise: [B, H, W, C] standard normal eps.
  Returns:
    0-d: the mean squared error of v((1 - t) x0 + t eps) against eps - x0, in x0's dtype.
  """
  tt = t.view(-1, 1, 1, 1)
  velocity = network((1.0 - tt) * x0 + tt * noise, FLOW_TIME_SCALE * t)
  return torch.mean(torch.square(velocity - (noise - x0)))


def flow_training_times(num: int, schedule: str, device: torch.device) -> torch.Tensor:
  """t [num] float32 in (0, 1): uniform, or logit-normal (the sigmoid of N(0, 1))."""
  if schedule == "uniform":
    return torch.rand(num, device=device)
  return torch.sigmoid(torch.randn(num, device=device))


class Objective(nn.Module):
  """A denoising objective around a network: forward(x0, labels) -> loss (0-d float32).

  x0 [B, H, W, C] float32 in [-1, 1], labels [B] int64 in [0, num_classes). `model` maps
  (x [B, C, H, W], noise_label [B], labels [B] or None) to [B, C, H, W] float32.
  """

  def __init__(self, model: nn.Module, num_classes: int, label_dropout: float):
    super().__init__()
    self.model, self.num_classes, self.label_dropout = model, num_classes, label_dropout

  def network(self, labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(x [B, H, W, C], noise_label [B]) -> [B, H, W, C]: the model on NCHW views of NHWC memory.

    A class-conditional model sees `labels`, each replaced by the null label num_classes with
    probability label_dropout (as our method's train_loss); an unconditional one sees none.
    """
    if self.num_classes:
      dropped = torch.rand(labels.shape, device=labels.device) < self.label_dropout
      labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
    else:
      labels = None
    return lambda x, noise_label: self.model(x.permute(0, 3, 1, 2), noise_label, labels).permute(0, 2, 3, 1)


class SimpleLoss(Objective):
  """ddpm's 'simple' objective: the mean squared error of the output against its prediction target."""

  def __init__(self, model: nn.Module, betas: np.ndarray, prediction: str, num_classes: int = 0,
               label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.prediction = prediction
    # float64 cumprod, then float32 as ours.
    self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32))

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    t = torch.randint(0, self.alphas_cumprod.shape[0], (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
    sa, s1a = torch.sqrt(abar), torch.sqrt(1.0 - abar)
    output = self.network(labels)(sa * x0 + s1a * noise, t)
    if self.prediction == "eps":
      target = noise
    elif self.prediction == "x0":
      target = x0
    else:
      target = sa * noise - s1a * x0
    return torch.mean(torch.square(output - target))


class EDMLoss(Objective):
  """edm's objective, `edm_loss` at ln(sigma) ~ N(p_mean, p_std^2) and fresh noise."""

  def __init__(self, model: nn.Module, sigma_data: float, p_mean: float, p_std: float, num_classes: int = 0,
               label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    sigma = torch.exp(self.p_mean + self.p_std * torch.randn(x0.shape[0], device=x0.device))
    return edm_loss(self.network(labels), x0, sigma, torch.randn_like(x0), self.sigma_data)


class FlowLoss(Objective):
  """flow's objective, `flow_loss` at times from `time_schedule` (uniform | logit_normal) and fresh noise."""

  def __init__(self, model: nn.Module, time_schedule: str, num_classes: int = 0, label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.time_schedule = time_schedule

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    t = flow_training_times(x0.shape[0], self.time_schedule, x0.device)
    return flow_loss(self.network(labels), x0, t, torch.randn_like(x0))


def _validate(config) -> None:
  """Raises ValueError for the options of `config` this reference does not implement."""
  m, d = config.model, config.diffusion
  if m.dtype not in DTYPES:
    raise ValueError(f"the torch diffusion reference has no model.dtype {m.dtype!r}; choose one of {DTYPES}")
  if m.arch not in ARCHS:
    raise ValueError(f"the torch diffusion reference has no model.arch {m.arch!r}; choose one of {ARCHS}")
  if d.process not in PROCESSES:
    raise ValueError(f"the torch diffusion reference has no diffusion.process {d.process!r}; "
                     f"choose one of {PROCESSES}")
  if d.process == "ddpm" and d.prediction not in PREDICTIONS:
    raise ValueError(f"the torch diffusion reference has no prediction {d.prediction!r}; "
                     f"choose one of {PREDICTIONS}")
  if d.process == "flow" and d.time_schedule not in TIME_SCHEDULES:
    raise ValueError(f"the torch diffusion reference has no time_schedule {d.time_schedule!r}; "
                     f"choose one of {TIME_SCHEDULES}")
  if config.loss.name not in LOSSES:
    raise ValueError(f"the torch diffusion reference has no loss {config.loss.name!r} (custom "
                     f"'module:function' losses are JAX code); choose one of {LOSSES}")


def build_network(config) -> nn.Module:
  """The network of `config` (model.arch: unet or dit), initialised, on the CPU."""
  m, channels, size = config.model, config.data.channels, config.data.image_size
  if m.arch == "dit":
    return DiT(in_ch=channels, image_size=size, patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth,
               num_heads=m.num_heads, out_ch=channels, mlp_ratio=m.mlp_ratio, num_classes=m.num_classes,
               dropout=m.dropout)
  return UNet(in_ch=channels, image_size=size, ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, out_ch=channels, num_heads=m.num_heads,
              norm_groups=m.norm_groups, num_classes=m.num_classes)


def build_objective(config, model: nn.Module) -> Objective:
  """The training objective of `config` (diffusion.process: ddpm, edm or flow) around `model`."""
  d = config.diffusion
  classes = {"num_classes": config.model.num_classes, "label_dropout": d.label_dropout}
  if d.process == "edm":
    return EDMLoss(model, d.sigma_data, d.p_mean, d.p_std, **classes)
  if d.process == "flow":
    return FlowLoss(model, d.time_schedule, **classes)
  betas = beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end)
  return SimpleLoss(model, betas, d.prediction, **classes)


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The network of `config` on `device` with its process's Adam + clipping + EMA denoising train step."""
  _validate(config)
  model = build_network(config)
  loss_module = build_objective(config, model).to(device, memory_format=torch.channels_last)
  loss_module.train()
  loss_fn = maybe_compile(loss_module, compile)
  params = [p for p in model.parameters() if p.requires_grad]
  update = make_update(params, config.optimizer, device)
  ema_update = make_ema(params, config.ema.decay)

  def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with autocast(config, device):
      loss = loss_fn(images, labels)
    loss.backward()
    update()
    ema_update()
    return loss.detach()

  return Reference(modules={"model": model}, train_step=train_step)
