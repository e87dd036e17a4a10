"""Layers shared by the references (diffusion UNet and DiT, VAE), initialised as flax's."""

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPS = 1e-6  # flax.linen.GroupNorm's default


def lecun_normal_(weight: torch.Tensor) -> None:
  """flax's default kernel init: truncated normal (2 std) of variance 1 / fan_in."""
  fan_in = weight[0].numel()  # [out, in, kh, kw] or [out, in]
  std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # corrects for the truncation
  nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
  """Sinusoidal embedding of timesteps t [B] (any real dtype) -> [B, dim] float32: sin half, then cos half."""
  if dim % 2:
    raise ValueError(f"timestep embedding width must be even, got {dim}")
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
  args = t.float()[:, None] * freqs[None, :]
  return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def split_times(t: torch.Tensor, time_inputs: int) -> list[torch.Tensor]:
  """The network's times as `time_inputs` tensors [B], as ours' layers.split_times: t itself when there is one
  ([B]), else its columns ([B, time_inputs])."""
  if time_inputs == 1:
    if t.dim() != 1:
      raise ValueError(f"the network takes one time per image, [B]; got shape {tuple(t.shape)}")
    return [t]
  if t.dim() != 2 or t.shape[1] != time_inputs:
    raise ValueError(f"the network takes {time_inputs} times per image, [B, {time_inputs}]; got {tuple(t.shape)}")
  return list(t.unbind(1))


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv. [B, C, H, W] -> [B, C, 2H, 2W]."""

  def __init__(self, ch: int):
    super().__init__()
    self.conv = conv3x3(ch, ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
