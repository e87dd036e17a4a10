"""Layers shared by the convolutional references (diffusion UNet, VAE), initialised as flax's."""

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


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv. [B, C, H, W] -> [B, C, 2H, 2W]."""

  def __init__(self, ch: int):
    super().__init__()
    self.conv = conv3x3(ch, ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
