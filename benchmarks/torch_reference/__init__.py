"""PyTorch references of our models, for side-by-side speed in benchmarks/run.py.

Each family's module (diffusion, gan, vae, autoregressive) defines

  build(config, device: torch.device, *, compile: bool) -> Reference

for the config's model: the same architecture with the same number of trainable
parameters as ours, and a train step that does what our method's train_step
does (forward, loss, backward, optimizer update with the config's clipping,
EMA of the weights), in the config's compute dtype (model.dtype; bfloat16 via
torch.autocast). torch is the optional `bench` extra, never a core dependency.
"""

import contextlib
import dataclasses
from typing import Callable

import torch

FAMILIES = ("diffusion", "gan", "vae", "autoregressive")


@dataclasses.dataclass
class Reference:
  """A built reference: its trainable networks and one full training update.

  train_step(images, labels): images [B, H, W, C] float32 in [-1, 1] and labels
  [B] int64, both on the reference's device; returns the loss (a 0-d tensor, not
  synchronised). sample: the diffusion references' samplers (eager), timed next to ours.
  """
  modules: dict[str, torch.nn.Module]
  train_step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
  # sample(variant, num) -> [num, H, W, C] images by one of run.py's SAMPLE_VARIANTS, or None for one it lacks.
  sample: Callable[[str, int], torch.Tensor | None] = lambda variant, num: None

  @property
  def num_params(self) -> int:
    return sum(p.numel() for m in self.modules.values() for p in m.parameters() if p.requires_grad)


def autocast(config, device: torch.device):
  """The config's compute dtype for the forward pass: bfloat16 autocast, or nothing for float32."""
  if config.model.dtype == "bfloat16":
    return torch.autocast(device.type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def maybe_compile(module: torch.nn.Module, compile: bool) -> torch.nn.Module:
  """torch.compile(module) when asked; parameters stay shared with `module`."""
  return torch.compile(module) if compile else module


def make_update(params: list[torch.Tensor], opt, device: torch.device) -> Callable[[], None]:
  """Returns apply(): one update of `params` from their .grad, as ours with optimizer section `opt`.

  Global-norm clipping to opt.grad_clip (if set), AdamW (decay on every parameter, as
  optax.adamw without a mask) at the linear warm-up rate optax.linear_schedule(0,
  opt.learning_rate, opt.warmup_steps) of its own update count, then the gradients are cleared.
  """
  optimizer = torch.optim.AdamW(params, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps,
                                weight_decay=opt.weight_decay, fused=device.type == "cuda")
  count = 0

  def apply():
    nonlocal count
    if opt.grad_clip:
      torch.nn.utils.clip_grad_norm_(params, opt.grad_clip, foreach=True)
    warmup = min(count / opt.warmup_steps, 1.0) if opt.warmup_steps else 1.0
    for group in optimizer.param_groups:
      group["lr"] = opt.learning_rate * warmup
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    count += 1

  return apply


def make_ema(params: list[torch.Tensor], decay: float, ema: list[torch.Tensor] | None = None) -> Callable[[], None]:
  """Returns update(): ema = d * ema + (1 - d) * params, with ours' warm-up
  d = min(decay, (1 + step) / (10 + step)) at the update's step 0, 1, ...

  `ema`: the tensors to average into (a copy of `params` by default).
  """
  ema = [p.detach().clone() for p in params] if ema is None else ema
  step = 0

  @torch.no_grad()
  def update():
    nonlocal step
    d = min(decay, (1.0 + step) / (10.0 + step))
    step += 1
    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - d)

  return update


def build(family: str, config, device: torch.device, *, compile: bool = False) -> Reference:
  """The reference of `family` (one of FAMILIES) for `config`."""
  import importlib

  if family not in FAMILIES:
    raise ValueError(f"no torch reference for method {family!r}; have {FAMILIES}")
  return importlib.import_module(f"{__name__}.{family}").build(config, device, compile=compile)
