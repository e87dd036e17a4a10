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
- meanflow (genimg_jax/diffusion/meanflow.py): (r, t) pairs, z_t on flow's path, the average velocity u and
  its total time derivative by one `torch.func.jvp` along (v, 0, 1), the stop-gradient target
  v - (t - r) du/dt and the adaptive weight; the network sees (t, t - r), unscaled. Guidance folded into
  training replaces v by the guided field, from the network in eval mode.
- consistency (genimg_jax/diffusion/consistency.py, iCT): a pair of adjacent levels from the discretised
  lognormal over the curriculum's N levels (N fixed at its first value, s0 + 1: the cost of a step does not
  depend on N), the pseudo-Huber distance between the student at the higher level and its stop-gradient
  teacher at the lower, the same noise and the same dropout masks, weighted 1 / (sigma' - sigma).
- shortcut (genimg_jax/diffusion/shortcut.py): the first rows of a batch train self-consistency (two half
  steps of the network in eval mode, clipped, under no_grad), the others flow matching at d = 0; the
  network sees 999 (t, d).
A class-conditional network sees each label replaced by the null label with probability
diffusion.label_dropout. Convolutions run channels_last: the NHWC images enter and the
NHWC output leaves as free permutes (MeanFlow's run NCHW, see `MeanFlowLoss`). The UNet's
weights start as flax's (truncated LeCun normal, zero biases, zero second conv of every
residual block, zero attention output projection and zero output conv, N(0, 1 / width)
class embedding). AdamW decays every
parameter, as optax.adamw without a mask does in ours.
"""

import math
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile
from benchmarks.torch_reference.dit import DiT
from benchmarks.torch_reference.layers import (GROUP_NORM_EPS, Upsample, conv3x3, lecun_normal_, split_times,
                                              timestep_embedding)
from genimg_jax.diffusion import meanflow as jax_meanflow
from genimg_jax.diffusion import shortcut as jax_shortcut
from genimg_jax.diffusion.ddpm import beta_schedule  # NumPy float64 betas, computed once on the host
from genimg_jax.diffusion.ddpm import ddim_timesteps
from genimg_jax.diffusion.edm import sigma_steps as edm_sigma_steps
from genimg_jax.diffusion.flow import TIME_SCALE as FLOW_TIME_SCALE

ARCHS = ("unet", "dit")
PROCESSES = ("ddpm", "edm", "flow", "meanflow", "consistency", "shortcut")
# The network's time inputs per process: ours' build.time_inputs (noise_label [B, 2] for these two).
TIME_INPUTS = {"meanflow": jax_meanflow.build.time_inputs, "shortcut": jax_shortcut.build.time_inputs}
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
  With time_inputs = 2, t is [B, 2] (MeanFlow's (t, t - r), a shortcut model's (t, d)): each
  column embedded by its own MLP, the embeddings summed, as ours' time_1_in and time_1_out.
  """

  def __init__(self, *, in_ch: int, image_size: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int,
               attn_resolutions: tuple[int, ...], dropout: float, out_ch: int, num_heads: int,
               norm_groups: int, num_classes: int = 0, time_inputs: int = 1):
    super().__init__()
    self.ch, self.num_classes, self.time_inputs = ch, num_classes, time_inputs
    temb_ch = 4 * ch
    self.temb_in = nn.Linear(ch, temb_ch)
    self.temb_out = nn.Linear(temb_ch, temb_ch)
    self.extra_times = nn.ModuleList(nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
                                     for _ in range(time_inputs - 1))
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
    first, *others = split_times(t, self.time_inputs)
    temb = self.temb_out(F.silu(self.temb_in(timestep_embedding(first, self.ch))))
    for mlp, time in zip(self.extra_times, others):
      temb = temb + mlp(timestep_embedding(time, self.ch))
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
  denoised = edm_denoise(network, x0 + s * noise, sigma, sigma_data)
  return torch.mean((s**2 + sigma_data**2) / (s * sigma_data) ** 2 * torch.square(denoised - x0))


def edm_denoise(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
                sigma_data: float) -> torch.Tensor:
  """D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma) / 4) (`edm_loss`'s preconditioning): x [B, H, W, C],
  sigma [B]; returns [B, H, W, C]."""
  s = sigma.view(-1, 1, 1, 1)
  total = s**2 + sigma_data**2
  c_skip, c_out, c_in = sigma_data**2 / total, s * sigma_data / torch.sqrt(total), 1.0 / torch.sqrt(total)
  return c_skip * x + c_out * network(c_in * x, torch.log(sigma) / 4)


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


def _per_image(a: torch.Tensor) -> torch.Tensor:
  """a [B] shaped [B, 1, 1, 1], to broadcast against images."""
  return a.view(-1, 1, 1, 1)


def meanflow_loss(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, r: torch.Tensor,
                  t: torch.Tensor, noise: torch.Tensor, p: float, c: float,
                  velocity: torch.Tensor | None = None) -> torch.Tensor:
  """MeanFlow's loss at given times and noise, as ours' meanflow_loss.

  Args:
    network: u(z [B, H, W, C], noise_label [B, 2]) -> [B, H, W, C], the average velocity, given the noise
      label (t, t - r) as ours.
    x0: [B, H, W, C] clean images.
    r, t: [B] times, r <= t.
    noise: [B, H, W, C] standard normal eps.
    p, c: the adaptive weight sg(1 / (||delta||^2 + c)^p) per image.
    velocity: [B, H, W, C] the field the target follows (the guided one), or None for eps - x0.
  Returns:
    0-d: mean_B(w ||u - u_tgt||^2) / D, D the dimensions of an image, with
    u_tgt = sg(v - (t - r) du/dt) and du/dt = v d_z u + d_t u, one `torch.func.jvp` along (v, 0, 1) in
    (z, r, t). In x0's dtype.
  """
  z = (1.0 - _per_image(t)) * x0 + _per_image(t) * noise
  velocity = noise - x0 if velocity is None else velocity
  # The math attention: torch's fused attention kernels have no forward-mode derivative.
  with sdpa_kernel(SDPBackend.MATH):
    u, du_dt = torch.func.jvp(lambda z, r, t: network(z, torch.stack([t, t - r], dim=-1)), (z, r, t),
                              (velocity, torch.zeros_like(r), torch.ones_like(t)))
  target = (velocity - _per_image(t - r) * du_dt).detach()
  squared = torch.sum(torch.square(u - target).flatten(1), dim=1)
  weight = (1.0 / (squared + c) ** p).detach()
  return torch.mean(weight * squared) / x0[0].numel()


def meanflow_guided_velocity(guide: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                             z: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor, labels: torch.Tensor,
                             null_label: int, omega: float, kappa: float,
                             interval: tuple[float, float]) -> torch.Tensor:
  """Ours' meanflow.guided_velocity: v_g = omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | c)
  for t in `interval`, v elsewhere and where labels [B] is the null label. guide(z, t [B], labels) -> u(z, t, t
  | labels) in eval mode. z, velocity [B, H, W, C]; returns like velocity, without gradient."""
  with torch.no_grad():
    null = torch.full_like(labels, null_label)
    if kappa:
      unconditional, conditional = guide(torch.cat([z, z]), torch.cat([t, t]), torch.cat([null, labels])).chunk(2)
    else:
      unconditional, conditional = guide(z, t, null), 0.0
    inside = _per_image((t >= interval[0]) & (t <= interval[1]))
    omega_t = torch.where(inside, omega, 1.0)
    kappa_t = torch.where(inside, kappa, 0.0)
    guided = omega_t * velocity + (1.0 - omega_t - kappa_t) * unconditional + kappa_t * conditional
    return torch.where(_per_image(labels == null_label), velocity, guided)


def meanflow_training_times(num: int, device: torch.device, *, schedule: str, t_mean: float, t_std: float,
                            r_mean: float, r_std: float, equal_fraction: float,
                            pairs: str) -> tuple[torch.Tensor, torch.Tensor]:
  """(r, t), each [num] float32, 0 < r <= t < 1, as ours' meanflow.training_times: t and r independent
  (logit-normal(mean, std) or uniform), r = t with probability equal_fraction, then "sort" (t, r = max,
  min; then r = t where equal) or "clip" (r = min(t, t where equal else r))."""
  def draw(mean, std):
    if schedule == "logit_normal":
      return torch.sigmoid(mean + std * torch.randn(num, device=device))
    return torch.rand(num, device=device)

  t, r = draw(t_mean, t_std), draw(r_mean, r_std)
  equal = torch.rand(num, device=device) < equal_fraction
  if pairs == "sort":
    t, r = torch.maximum(t, r), torch.minimum(t, r)
    return torch.where(equal, t, r), t
  return torch.minimum(t, torch.where(equal, t, r)), t


def consistency_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float):
  """(c_skip, c_out, c_in, c_noise) at sigma [B], as ours' consistency.scalings."""
  shifted, total = sigma - sigma_min, sigma**2 + sigma_data**2
  return (sigma_data**2 / (shifted**2 + sigma_data**2), shifted * sigma_data / torch.sqrt(total),
          1.0 / torch.sqrt(total), torch.log(sigma) / 4.0)


def consistency_loss(student: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                     sigma: torch.Tensor, sigma_next: torch.Tensor, noise: torch.Tensor, huber_c: float,
                     sigma_data: float, sigma_min: float) -> torch.Tensor:
  """iCT's consistency-training loss at given adjacent levels and noise, as ours' consistency_loss.

  Args:
    student, teacher: F(x_in [B, H, W, C], c_noise [B]) -> [B, H, W, C], the raw network of
      f(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4); the teacher runs under no_grad, after the
      student (a caller that wants the student's dropout masks replays its random draws there).
    x0: [B, H, W, C] clean images.
    sigma, sigma_next: [B] levels sigma_i < sigma_{i+1}.
    noise: [B, H, W, C] standard normal z, the same at both levels.
    huber_c, sigma_data, sigma_min: the pseudo-Huber c and the parameterisation's constants.
  Returns:
    0-d: the mean over images of d(f_student(x0 + sigma' z, sigma'), f_teacher(x0 + sigma z, sigma)) /
    (sigma' - sigma), d the pseudo-Huber distance sqrt(||a - b||^2 + c^2) - c. In x0's dtype.
  """
  def f(network, s):
    c_skip, c_out, c_in, c_noise = consistency_scalings(s, sigma_data, sigma_min)
    x = x0 + _per_image(s) * noise
    return _per_image(c_skip) * x + _per_image(c_out) * network(_per_image(c_in) * x, c_noise)

  online = f(student, sigma_next)
  with torch.no_grad():
    target = f(teacher, sigma)
  squared = torch.sum(torch.square(online - target).flatten(1), dim=1)
  distance = squared / (torch.sqrt(squared + huber_c**2) + huber_c)
  return torch.mean(distance / (sigma_next - sigma))


def consistency_levels(n: int, p_mean: float, p_std: float, sigma_min: float, sigma_max: float,
                       rho: float) -> tuple[np.ndarray, np.ndarray]:
  """(sigmas [n], probabilities [n - 1]), float64: the n Karras levels (iCT Sec. 2, increasing, ends exact) and
  the lognormal's mass between each adjacent pair, normalised (iCT eq. 10)."""
  from scipy.special import erf

  low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  sigmas = (low + np.arange(n) / (n - 1) * (high - low)) ** rho
  sigmas[0], sigmas[-1] = sigma_min, sigma_max
  cdf = erf((np.log(sigmas) - p_mean) / (np.sqrt(2.0) * p_std))
  mass = np.maximum(cdf[1:] - cdf[:-1], 0.0)
  return sigmas, mass / mass.sum()


def shortcut_loss(network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  target_network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                  t: torch.Tensor, noise: torch.Tensor, t_sc: torch.Tensor, big: torch.Tensor, max_steps: int,
                  clip: float) -> torch.Tensor:
  """The shortcut objective at given times and noise, as ours' shortcut_loss.

  Args:
    network, target_network: s(x [B', H, W, C], noise_label [B', 2]) -> [B', H, W, C], given the noise label
      999 (t, d) as ours; the target network (eval mode) sees the first n rows only, under no_grad.
    x0: [B, H, W, C] clean images.
    t: [B] the flow-matching rows' times (rows [:n] are replaced by t_sc).
    noise: [B, H, W, C] standard normal eps.
    t_sc, big: [n] the self-consistency rows' times and big steps 2d (n may be 0).
    max_steps, clip: M (half steps d <= 1/M query the network at d = 0) and the clip of the midpoint and target.
  Returns:
    0-d: the mean squared error over the batch of s(x_t, t, 2d) against the self-consistency target
    clip((s(x_t, t, d) + s(x', t - d, d)) / 2), x' = clip(x_t - d s(x_t, t, d)), on rows [:n], and of
    s(x_t, t, 0) against eps - x0 on the others.
  """
  n = t_sc.shape[0]
  labels = lambda t, d: FLOW_TIME_SCALE * torch.stack([t, d], dim=-1)
  interpolate = lambda x0, eps, t: (1.0 - _per_image(t)) * x0 + _per_image(t) * eps
  target, d = noise - x0, torch.zeros_like(t)
  if n:
    half = 0.5 * big
    half_in = torch.where(half * max_steps <= 1.0, 0.0, half)
    with torch.no_grad():
      x_t = interpolate(x0[:n], noise[:n], t_sc)
      first = target_network(x_t, labels(t_sc, half_in))
      midpoint = torch.clamp(x_t - _per_image(half) * first, -clip, clip)
      second = target_network(midpoint, labels(t_sc - half, half_in))
      sc_target = torch.clamp(0.5 * (first + second), -clip, clip)
    t, d = torch.cat([t_sc, t[n:]]), torch.cat([big, d[n:]])
    target = torch.cat([sc_target, target[n:]])
  return torch.mean(torch.square(network(interpolate(x0, noise, t), labels(t, d)) - target))


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

  memory_format = torch.channels_last  # the NHWC images enter as free permutes

  def __init__(self, model: nn.Module, num_classes: int, label_dropout: float):
    super().__init__()
    self.model, self.num_classes, self.label_dropout = model, num_classes, label_dropout
    # Whether any dropout draws: only then do a teacher's masks or an eval-mode pass differ from the training pass.
    self.has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())

  def drop_labels(self, labels: torch.Tensor) -> torch.Tensor | None:
    """A class-conditional model's `labels`, each replaced by the null label num_classes with probability
    label_dropout (as our method's train_loss); None for an unconditional model."""
    if not self.num_classes:
      return None
    dropped = torch.rand(labels.shape, device=labels.device) < self.label_dropout
    return torch.where(dropped, torch.full_like(labels, self.num_classes), labels)

  def apply(self, labels: torch.Tensor | None,
            model: Callable[..., torch.Tensor] | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(x [B, H, W, C], noise_label [B] or [B, 2]) -> [B, H, W, C]: the model (or `model`, a compiled view of
    it) on NCHW views of NHWC memory, given `labels` as they are."""
    model = self.model if model is None else model
    return lambda x, noise_label: model(self.to_nchw(x), noise_label, labels).permute(0, 2, 3, 1)

  def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
    """x [B, H, W, C] as the model's [B, C, H, W] input: a free view of the NHWC memory (channels_last)."""
    return x.permute(0, 3, 1, 2)

  def network(self, labels: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`apply` with the labels after `drop_labels`."""
    return self.apply(self.drop_labels(labels))

  def eval_mode(self, network: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`network` run with the model in eval mode (no dropout), as ours' eval-mode network."""
    if not self.has_dropout:
      return network

    def evaluated(*args):
      self.model.eval()
      try:
        return network(*args)
      finally:
        self.model.train()

    return evaluated


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


class MeanFlowLoss(Objective):
  """meanflow's objective, `meanflow_loss` at (r, t) from `meanflow_training_times` and fresh noise; with
  guidance folded into training, v is `meanflow_guided_velocity` (the model in eval mode). The convolutions run
  NCHW: torch 2.13's forward-mode derivative of GroupNorm fails on channels_last tensors (a view of
  non-contiguous memory), so the images are copied to NCHW on the way in."""

  memory_format = torch.contiguous_format

  def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
    """A fresh NCHW copy: `contiguous()` would keep a 1-channel image's permuted strides, which the forward-mode
    derivative of GroupNorm rejects as well."""
    return x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)

  def __init__(self, model: nn.Module, times: dict, p: float, c: float, guidance: float = 1.0, kappa: float = 0.0,
               interval: tuple[float, float] = (0.0, 1.0), num_classes: int = 0, label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.times, self.p, self.c = times, p, c
    self.guided = guidance != 1.0 or kappa != 0.0
    self.guidance, self.kappa, self.interval = guidance, kappa, interval

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r, t = meanflow_training_times(x0.shape[0], x0.device, **self.times)
    noise = torch.randn_like(x0)
    labels = self.drop_labels(labels)
    velocity = None
    if self.guided:
      guide = self.eval_mode(lambda z, t, labels: self.apply(labels)(z, torch.stack([t, torch.zeros_like(t)], -1)))
      z = (1.0 - _per_image(t)) * x0 + _per_image(t) * noise
      velocity = meanflow_guided_velocity(guide, z, t, noise - x0, labels, self.num_classes, self.guidance,
                                          self.kappa, self.interval)
    return meanflow_loss(self.apply(labels), x0, r, t, noise, self.p, self.c, velocity)


def _rng_state(device: torch.device) -> torch.Tensor:
  return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
  if device.type == "cuda":
    torch.cuda.set_rng_state(state, device)
  else:
    torch.set_rng_state(state)


class ConsistencyLoss(Objective):
  """consistency's objective, `consistency_loss` at a pair of adjacent levels of `sigmas` drawn with
  `probabilities` (`consistency_levels`) and fresh noise; the teacher replays the student's random draws, so
  that it sees the same dropout masks (iCT Sec. 3.1)."""

  def __init__(self, model: nn.Module, sigmas: np.ndarray, probabilities: np.ndarray, huber_c: float,
               sigma_data: float, sigma_min: float, num_classes: int = 0, label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float32))
    self.register_buffer("probabilities", torch.tensor(probabilities, dtype=torch.float32))
    self.huber_c, self.sigma_data, self.sigma_min = huber_c, sigma_data, sigma_min

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    i = torch.multinomial(self.probabilities, x0.shape[0], replacement=True)
    network = self.network(labels)
    student, teacher = network, network
    if self.has_dropout:
      saved = {}

      def student(x, c):
        saved["state"] = _rng_state(x.device)
        return network(x, c)

      def teacher(x, c):
        _set_rng_state(x.device, saved["state"])
        return network(x, c)

    return consistency_loss(student, teacher, x0, self.sigmas[i], self.sigmas[i + 1], torch.randn_like(x0),
                            self.huber_c, self.sigma_data, self.sigma_min)


class ShortcutLoss(Objective):
  """shortcut's objective, `shortcut_loss` with the flow rows' t from `time_schedule`, fresh noise, and the
  self-consistency rows' big steps 2d stratified as ours (`big_steps`) and t = 1 - k 2d, k uniform on the
  grid; the targets come from the model in eval mode."""

  def __init__(self, model: nn.Module, time_schedule: str, fraction: float, max_steps: int, clip: float,
               num_classes: int = 0, label_dropout: float = 0.0):
    super().__init__(model, num_classes, label_dropout)
    self.time_schedule, self.fraction, self.max_steps, self.clip = time_schedule, fraction, max_steps, clip

  def forward(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    num = x0.shape[0]
    n = jax_shortcut.self_consistency_rows(num, self.fraction)
    t = flow_training_times(num, self.time_schedule, x0.device)
    noise = torch.randn_like(x0)
    big = torch.from_numpy(jax_shortcut.big_steps(n, self.max_steps)).to(x0.device, torch.float32)
    t_sc = 1.0 - torch.floor(torch.rand(n, device=x0.device) * torch.round(1.0 / big)) * big
    labels = self.drop_labels(labels)
    target_network = self.eval_mode(self.apply(None if labels is None else labels[:n]))
    return shortcut_loss(self.apply(labels), target_network, x0, t, noise, t_sc, big, self.max_steps, self.clip)


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
  if d.process == "meanflow" and (d.meanflow_time_schedule not in jax_meanflow.TIME_SCHEDULES
                                  or d.meanflow_time_pairs not in jax_meanflow.TIME_PAIRS):
    raise ValueError(f"the torch diffusion reference has no MeanFlow times {d.meanflow_time_schedule!r}, "
                     f"{d.meanflow_time_pairs!r}; choose from {jax_meanflow.TIME_SCHEDULES}, {jax_meanflow.TIME_PAIRS}")
  if d.process in ("flow", "shortcut") and d.time_schedule not in TIME_SCHEDULES:
    raise ValueError(f"the torch diffusion reference has no time_schedule {d.time_schedule!r}; "
                     f"choose one of {TIME_SCHEDULES}")
  if config.loss.name not in LOSSES:
    raise ValueError(f"the torch diffusion reference has no loss {config.loss.name!r} (custom "
                     f"'module:function' losses are JAX code); choose one of {LOSSES}")


def build_network(config) -> nn.Module:
  """The network of `config` (model.arch: unet or dit), initialised, on the CPU, with the time inputs of its
  process (`TIME_INPUTS`)."""
  m, channels, size = config.model, config.data.channels, config.data.image_size
  time_inputs = TIME_INPUTS.get(config.diffusion.process, 1)
  if m.arch == "dit":
    return DiT(in_ch=channels, image_size=size, patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth,
               num_heads=m.num_heads, out_ch=channels, mlp_ratio=m.mlp_ratio, num_classes=m.num_classes,
               dropout=m.dropout, time_inputs=time_inputs)
  return UNet(in_ch=channels, image_size=size, ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, out_ch=channels, num_heads=m.num_heads,
              norm_groups=m.norm_groups, num_classes=m.num_classes, time_inputs=time_inputs)


def build_objective(config, model: nn.Module) -> Objective:
  """The training objective of `config` (diffusion.process: one of PROCESSES) around `model`."""
  d = config.diffusion
  classes = {"num_classes": config.model.num_classes, "label_dropout": d.label_dropout}
  if d.process == "meanflow":
    times = {"schedule": d.meanflow_time_schedule, "t_mean": d.meanflow_t_mean, "t_std": d.meanflow_t_std,
             "r_mean": d.meanflow_r_mean, "r_std": d.meanflow_r_std, "equal_fraction": d.meanflow_equal_fraction,
             "pairs": d.meanflow_time_pairs}
    return MeanFlowLoss(model, times, d.meanflow_p, d.meanflow_c, d.meanflow_guidance, d.meanflow_guidance_kappa,
                        tuple(d.meanflow_guidance_interval), **classes)
  if d.process == "consistency":
    sigmas, probabilities = consistency_levels(d.ct_s0 + 1, d.ct_p_mean, d.ct_p_std, d.sigma_min, d.sigma_max, d.rho)
    huber_c = d.ct_huber_scale * math.sqrt(config.data.image_size**2 * config.data.channels)
    return ConsistencyLoss(model, sigmas, probabilities, huber_c, d.sigma_data, d.sigma_min, **classes)
  if d.process == "shortcut":
    return ShortcutLoss(model, d.time_schedule, d.shortcut_fraction, d.shortcut_max_steps, d.shortcut_clip,
                        **classes)
  if d.process == "edm":
    return EDMLoss(model, d.sigma_data, d.p_mean, d.p_std, **classes)
  if d.process == "flow":
    return FlowLoss(model, d.time_schedule, **classes)
  betas = beta_schedule(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end)
  return SimpleLoss(model, betas, d.prediction, **classes)


SAMPLER_PATTERN = re.compile(r"(ddim|edm-heun|flow-euler)-(\d+)")
SAMPLER_PROCESS = {"ddim": "ddpm", "edm-heun": "edm", "flow-euler": "flow"}


def make_sampler(config, objective: Objective, device: torch.device,
                 compile: bool = False) -> Callable[[str, int], torch.Tensor | None]:
  """Returns sample(variant, num): `num` images [num, H, W, C] float32 from the model in eval mode, without
  gradients, by run.py's sampler `variant` as ours runs it, unguided, with its NFE network passes:
  'ddim-N' (a ddpm model predicting eps; eta 0, x0 clipped to [-1, 1], ours' `ddim_timesteps`), 'edm-heun-N'
  (EDM's Heun over ours' `sigma_steps`, 2N - 1 passes) and 'flow-euler-N' (t from 1 to 0 in N equal steps).
  None for another variant or another process. A class-conditional model draws uniform labels. `compile`: the
  network runs under torch.compile (compiled at the first call)."""
  d = config.diffusion
  model = maybe_compile(objective.model, compile)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)

  @torch.no_grad()
  def sample(variant: str, num: int) -> torch.Tensor | None:
    match = SAMPLER_PATTERN.fullmatch(variant)
    if not match or SAMPLER_PROCESS[match.group(1)] != d.process or (d.process == "ddpm" and d.prediction != "eps"):
      return None
    kind, steps = match.group(1), int(match.group(2))
    generator = torch.Generator(device="cpu").manual_seed(0)
    labels = (torch.randint(0, objective.num_classes, (num,), generator=generator).to(device)
              if objective.num_classes else None)
    network = objective.eval_mode(objective.apply(labels, model))
    x = torch.randn((num,) + shape, generator=generator).to(device)
    full = lambda value: torch.full((num,), value, device=device)  # noqa: E731  (a per-image noise label)
    with autocast(config, device):
      if kind == "ddim":
        abar = objective.alphas_cumprod
        ts = ddim_timesteps(len(abar), steps)[::-1]
        for i, t in enumerate(ts):
          a, a_prev = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device))
          eps = network(x, full(int(t)).long()).float()
          x0 = ((x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)).clamp(-1, 1)
          eps = (x - torch.sqrt(a) * x0) / torch.sqrt(1 - a)
          x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev) * eps
      elif kind == "edm-heun":
        sigmas = edm_sigma_steps(steps, d.sigma_min, d.sigma_max, d.rho)
        x = x * sigmas[0]
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
          slope = (x - edm_denoise(network, x, full(s), d.sigma_data).float()) / s
          x_next = x + (s_next - s) * slope
          if s_next > 0:
            slope_next = (x_next - edm_denoise(network, x_next, full(s_next), d.sigma_data).float()) / s_next
            x_next = x + (s_next - s) * (slope + slope_next) / 2
          x = x_next
      else:
        times = np.linspace(1.0, 0.0, steps + 1)
        for t, t_next in zip(times[:-1], times[1:]):
          x = x + (t_next - t) * network(x, full(FLOW_TIME_SCALE * t)).float()
    return x

  return sample


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The network of `config` on `device` with its process's Adam + clipping + EMA denoising train step."""
  _validate(config)
  model = build_network(config)
  loss_module = build_objective(config, model)
  loss_module.to(device, memory_format=loss_module.memory_format)
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

  return Reference(modules={"model": model}, train_step=train_step, sample=make_sampler(config, loss_module, device,
                                                                                     compile))
