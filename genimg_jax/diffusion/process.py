"""The Process record and the registry of processes (`diffusion.process`).

A process is built from the config by a registered function
  build(config, network, image_shape) -> Process
with network(params, x [B, H, W, C], noise_label [B], rng, train: bool, labels [B] int32 | None) -> the
denoiser's raw output [B, H, W, C]. Each process module subclasses `Process` with what its samplers read
(a schedule, noise levels) and how a noise label maps to EDM's noise level.
"""

import dataclasses
from typing import Any, Callable

import jax

from genimg_jax.registry import Registry

PROCESSES = Registry("diffusion.process", "diffusion process")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Process:
  """A noise process as the diffusion method uses it.

  losses: its built-in objectives by name (config.loss.name), each loss(params, batch, rng, *, ctx) ->
    (scalar, metrics).
  train_ctx, eval_ctx: the ctx they take, with the network in training and in eval mode.
  samplers: its registry of `samplers.Sampler` records (config.sample.sampler).
  held_out(params, batch, rng) -> {metric: scalar} besides the loss, or None: ddpm's variational bound,
    the others' probability-flow ODE likelihood, both in bits/dim over 8-bit pixels.
  loss_takes_step: the training loss is also given step= (int32 scalar, the updates applied so far), for a
    schedule over training (consistency training's discretisation curriculum); held-out losses are not.
  """

  losses: Registry
  train_ctx: Any
  eval_ctx: Any
  samplers: Registry
  held_out: Callable[[Any, dict, jax.Array], dict] | None = None
  loss_takes_step: bool = False

  def sigma_of(self, noise_label: jax.Array) -> jax.Array:
    """The noise level in EDM's units (noise / signal ratio) at a network noise label (scalar), which
    the guidance interval is stated in."""
    raise NotImplementedError(f"{type(self).__name__} does not say how its noise label maps to sigma")
