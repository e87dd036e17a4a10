"""PyTorch reference of the VAE method: the residual encoder/decoder and the negative-ELBO train step.

Mirrors genimg_jax/models/vae.py (VAE, with the Downsample/Upsample blocks of
genimg_jax/models/layers.py) and the train step of genimg_jax/methods/vae.py: the
posterior N(mean, exp(log_var)) from the encoder, one reparameterised draw
z = mean + exp(log_var / 2) * noise, the decoder's pixel likelihood
(genimg_jax/losses/likelihoods.py: bernoulli on binarised images, discretised
logistic, PixelCNN++ logistic mixture with coupled channels, 256-way
categorical), the analytic KL to N(0, I) with a linearly warmed-up weight and free
bits (genimg_jax/losses/elbo.py), and the loss in nats per dimension. Convolutions
run channels_last: the NHWC images enter and the NHWC likelihood parameters leave
as free permutes. Weights start as flax's (truncated LeCun normal, zero biases,
zero second conv of every residual block).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference import Reference, autocast, make_ema, make_update, maybe_compile
from benchmarks.torch_reference.layers import GROUP_NORM_EPS, Upsample, conv3x3, lecun_normal_

NUM_VALUES = 256  # 8-bit pixel values
HALF_BIN = 1.0 / 255.0  # half the distance between neighbouring pixel values in [-1, 1]
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on logistic log-scales
LATENT_TYPES = ("vector", "spatial")
LIKELIHOODS = ("bernoulli", "logistic", "logistic_mixture", "categorical")


def _init_like_flax(module: nn.Module) -> None:
  for layer in module.modules():
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      lecun_normal_(layer.weight)
      nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, plus a skip (1x1-projected if the width changes).

  x [B, in_ch, H, W] -> [B, out_ch, H, W]. The second conv starts at zero, so the
  block starts as the (projected) identity.
  """

  def __init__(self, in_ch: int, out_ch: int, norm_groups: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(norm_groups, in_ch, eps=GROUP_NORM_EPS)
    self.conv1 = conv3x3(in_ch, out_ch)
    self.norm2 = nn.GroupNorm(norm_groups, out_ch, eps=GROUP_NORM_EPS)
    self.conv2 = conv3x3(out_ch, out_ch)
    # Ours is a Dense over the channels: the same map and parameter count as a 1x1 conv.
    self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return self.skip(x) + h


class Encoder(nn.Module):
  """x [B, C, H, W] in [-1, 1] -> (mean, log_var) of q(z|x), float32, each [B, latent_dim]
  (vector) or [B, latent_dim, H/f, W/f] (spatial)."""

  def __init__(self, in_ch: int, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, norm_groups: int,
               latent_type: str, latent_dim: int, image_size: tuple[int, int]):
    super().__init__()
    self.latent_type = latent_type
    self.conv_in = conv3x3(in_ch, ch)
    layers, width = [], ch
    for level, mult in enumerate(ch_mult):
      for _ in range(num_res_blocks):
        layers.append(ResidualBlock(width, ch * mult, norm_groups))
        width = ch * mult
      if level != len(ch_mult) - 1:
        layers.append(conv3x3(width, width, stride=2))  # Downsample
    self.blocks = nn.Sequential(*layers)
    self.norm_out = nn.GroupNorm(norm_groups, width, eps=GROUP_NORM_EPS)
    if latent_type == "vector":
      factor = 2 ** (len(ch_mult) - 1)
      self.to_latent = nn.Linear(width * (image_size[0] // factor) * (image_size[1] // factor), 2 * latent_dim)
    else:
      self.to_latent = nn.Conv2d(width, 2 * latent_dim, 1)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = F.silu(self.norm_out(self.blocks(self.conv_in(x))))
    if self.latent_type == "vector":
      h = h.flatten(1)
    mean, log_var = self.to_latent(h).float().chunk(2, dim=1)
    return mean, log_var


class Decoder(nn.Module):
  """z (the encoder's latent shape) -> likelihood parameters [B, out_ch, H, W] float32."""

  def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, norm_groups: int,
               latent_type: str, latent_dim: int, image_size: tuple[int, int], out_ch: int):
    super().__init__()
    self.latent_type = latent_type
    factor = 2 ** (len(ch_mult) - 1)
    self.top_shape = (ch * ch_mult[-1], image_size[0] // factor, image_size[1] // factor)
    width = ch * ch_mult[-1]
    if latent_type == "vector":
      self.from_latent = nn.Linear(latent_dim, math.prod(self.top_shape))
    else:
      self.from_latent = conv3x3(latent_dim, width)
    layers = []
    for level in reversed(range(len(ch_mult))):
      for _ in range(num_res_blocks):
        layers.append(ResidualBlock(width, ch * ch_mult[level], norm_groups))
        width = ch * ch_mult[level]
      if level != 0:
        layers.append(Upsample(width))
    self.blocks = nn.Sequential(*layers)
    self.norm_out = nn.GroupNorm(norm_groups, width, eps=GROUP_NORM_EPS)
    self.conv_out = conv3x3(width, out_ch)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = self.from_latent(z)
    if self.latent_type == "vector":
      h = h.view(z.shape[0], *self.top_shape).contiguous(memory_format=torch.channels_last)
    h = self.blocks(h)
    return self.conv_out(F.silu(self.norm_out(h))).float()


class VAE(nn.Module):
  """The encoder and decoder of one model; the parameters of the likelihood named `likelihood`."""

  def __init__(self, *, channels: int, image_size: tuple[int, int], ch: int, ch_mult: tuple[int, ...],
               num_res_blocks: int, norm_groups: int, latent_type: str, latent_dim: int, out_ch: int):
    super().__init__()
    if latent_type not in LATENT_TYPES:
      raise ValueError(f"latent_type must be one of {LATENT_TYPES}, got {latent_type!r}")
    shared = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, norm_groups=norm_groups,
                  latent_type=latent_type, latent_dim=latent_dim, image_size=tuple(image_size))
    self.encoder = Encoder(in_ch=channels, **shared)
    self.decoder = Decoder(out_ch=out_ch, **shared)
    _init_like_flax(self)
    for block in self.modules():
      if isinstance(block, ResidualBlock):
        nn.init.zeros_(block.conv2.weight)


# ---- Likelihoods of 8-bit pixels (float32; x [..., C] on the grid k / 127.5 - 1). ------------


def _pixel_values(x: torch.Tensor) -> torch.Tensor:
  """The 8-bit value k of each x = k / 127.5 - 1, as a float in [0, 255]."""
  return torch.round((x + 1.0) * 127.5).clamp(0, NUM_VALUES - 1)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
  """log P(bin of x) under a logistic(mean, exp(log_scale)) discretised to the 256 values.

  Interior bins: log sigma(upper) + log sigma(-lower) + log(1 - e^(lower - upper)); the
  edge bins take the tails. Arguments broadcast; returns the broadcast shape.
  """
  inv_scale = torch.exp(-log_scale.clamp_min(MIN_LOG_SCALE))
  centered = x - mean
  upper = inv_scale * (centered + HALF_BIN)
  lower = inv_scale * (centered - HALF_BIN)
  log_cdf_upper, log_sf_lower = F.logsigmoid(upper), F.logsigmoid(-lower)
  interior = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(-2.0 * HALF_BIN * inv_scale))
  k = _pixel_values(x)
  return torch.where(k == 0, log_cdf_upper, torch.where(k == NUM_VALUES - 1, log_sf_lower, interior))


def logistic_mixture_log_prob(params: torch.Tensor, x: torch.Tensor, num_mixtures: int) -> torch.Tensor:
  """PixelCNN++ mixture of discretised logistics over a pixel's channels jointly.

  Args:
    params: [..., K (1 + 2C + C(C-1)/2)]: K logits, then per component C means, C
      log-scales and the C(C-1)/2 raw couplings (tanh'd) in np.tril_indices(C, -1) order.
    x: [..., C] pixels.
    num_mixtures: K.
  Returns:
    [...] log p of each pixel.
  """
  channels = x.shape[-1]
  logits = params[..., :num_mixtures]
  rest = params[..., num_mixtures:].unflatten(-1, (num_mixtures, -1))  # [..., K, 2C + C(C-1)/2]
  means, log_scales = rest[..., :channels], rest[..., channels:2 * channels]
  if channels > 1:
    # Channel c's mean in component k: mu_kc + sum_{j<c} tanh(raw_kcj) x_j.
    coupling = torch.tanh(rest[..., 2 * channels:])
    shifts = [0.0] * channels
    for i, (row, col) in enumerate(zip(*np.tril_indices(channels, k=-1))):
      shifts[row] = shifts[row] + coupling[..., i] * x[..., None, col]
    means = torch.stack([means[..., c] + shifts[c] for c in range(channels)], dim=-1)
  log_p = discretized_logistic_log_prob(x.unsqueeze(-2), means, log_scales).sum(-1)  # [..., K]
  return torch.logsumexp(F.log_softmax(logits, dim=-1) + log_p, dim=-1)


def _make_log_prob(name: str, channels: int, num_mixtures: int):
  """(num_params, log_prob(params [..., P], x [..., C]) -> [...] per-pixel log p)."""
  if name == "bernoulli":
    # Binarised x is -1 or 1: log sigma(logit) for 255, log sigma(-logit) for 0.
    return channels, lambda p, x: F.logsigmoid(p * x).sum(-1)
  if name == "logistic":
    return 2 * channels, lambda p, x: discretized_logistic_log_prob(x, p[..., :channels], p[..., channels:]).sum(-1)
  if name == "logistic_mixture":
    num_params = num_mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)
    return num_params, lambda p, x: logistic_mixture_log_prob(p, x, num_mixtures)
  if name == "categorical":
    def log_prob(p, x):
      log_probs = F.log_softmax(p.unflatten(-1, (channels, NUM_VALUES)), dim=-1)
      return log_probs.gather(-1, _pixel_values(x).long().unsqueeze(-1)).squeeze(-1).sum(-1)
    return channels * NUM_VALUES, log_prob
  raise ValueError(f"the torch VAE reference has no likelihood {name!r}; choose one of {LIKELIHOODS}")


class NegativeELBOLoss(nn.Module):
  """The training objective in nats per dimension: (-log p(x|z) + beta * free-bits KL) / (H W C)."""

  def __init__(self, model: VAE, likelihood: str, channels: int, num_mixtures: int, free_bits: float):
    super().__init__()
    self.model = model
    self.binary = likelihood == "bernoulli"
    self.num_params, self.log_prob = _make_log_prob(likelihood, channels, num_mixtures)
    self.free_bits = free_bits

  def forward(self, images: torch.Tensor, kl_weight: torch.Tensor) -> torch.Tensor:
    """images [B, H, W, C] float32 in [-1, 1], kl_weight 0-d float32 -> loss (0-d float32)."""
    x = torch.where(images > 0, 1.0, -1.0) if self.binary else images
    mean, log_var = self.model.encoder(x.permute(0, 3, 1, 2))  # NCHW view of channels_last memory
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    params = self.model.decoder(z).permute(0, 2, 3, 1)  # [B, H, W, P]
    with torch.autocast(images.device.type, enabled=False):
      log_likelihood = self.log_prob(params, x).flatten(1).sum(1)  # [B]
      kl = 0.5 * (torch.exp(log_var) + mean.square() - 1.0 - log_var)  # per example and latent dim
      kl_term = kl.mean(0).clamp_min(self.free_bits).sum()
      return (kl_weight * kl_term - log_likelihood.mean()) / x[0].numel()


def build(config, device: torch.device, *, compile: bool) -> Reference:
  """The VAE of `config` on `device` with its Adam + clipping + EMA negative-ELBO train step."""
  m, lk, kl_cfg, opt = config.model, config.likelihood, config.kl, config.optimizer
  channels, size = config.data.channels, config.data.image_size
  num_params, _ = _make_log_prob(lk.name, channels, lk.num_mixtures)
  model = VAE(channels=channels, image_size=(size, size), ch=m.ch, ch_mult=tuple(m.ch_mult),
              num_res_blocks=m.num_res_blocks, norm_groups=m.norm_groups, latent_type=m.latent_type,
              latent_dim=m.latent_dim, out_ch=num_params)
  model = model.to(device, memory_format=torch.channels_last)
  model.train()
  loss_fn = maybe_compile(NegativeELBOLoss(model, lk.name, channels, lk.num_mixtures, kl_cfg.free_bits), compile)
  params = [p for p in model.parameters() if p.requires_grad]
  update = make_update(params, opt, device)
  ema_update = make_ema(params, config.ema.decay)
  # A tensor, so a compiled loss is not recompiled as the weight warms up.
  kl_weight = torch.zeros((), device=device)
  step = 0

  def train_step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    nonlocal step
    del labels  # unconditional
    # elbo.kl_weight at the step before this update: beta * min(1, step / warmup_steps).
    kl_weight.fill_(kl_cfg.beta * min(1.0, step / kl_cfg.warmup_steps) if kl_cfg.warmup_steps else kl_cfg.beta)
    with autocast(config, device):
      loss = loss_fn(images, kl_weight)
    loss.backward()
    update()
    ema_update()
    step += 1
    return loss.detach()

  return Reference(modules={"model": model}, train_step=train_step)
