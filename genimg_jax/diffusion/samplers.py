"""The sampler record: how a sampler draws and how many network evaluations a draw costs.

A sampler is registered in its process's registry (`ddpm.SAMPLERS`, `edm.SAMPLERS`, `flow.SAMPLERS`)
and selected by `sample.sampler`; every sampler of every process has the same two functions:

  draw(process, net, rng, shape, options) -> x_0 [shape] float32, from noise;
  nfe(process, options) -> the network evaluations of one draw (int),

with `process` the built Process (its schedule or noise levels), net(x [B, ...], noise_label [B]) -> the
network's raw output in eval mode (guided or not), and options the config's `sample` section.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A sampler: `draw` and its cost `nfe`, as the module docstring states them. Calling it draws."""

  draw: Callable[..., jax.Array]
  nfe: Callable[[Any, ml_collections.ConfigDict], int]

  def __call__(self, process, net, rng: jax.Array, shape, options: ml_collections.ConfigDict) -> jax.Array:
    return self.draw(process, net, rng, shape, options)


def sampler(*, nfe: Callable[[Any, ml_collections.ConfigDict], int]) -> Callable[[Callable], Sampler]:
  """Decorator: the draw function it decorates, with its NFE nfe(process, options), as a `Sampler`."""
  return lambda draw: Sampler(draw=draw, nfe=nfe)


def steps_nfe(process, options: ml_collections.ConfigDict) -> int:
  """One network evaluation per step: options.steps."""
  return options.steps


def every_image(level, x: jax.Array) -> jax.Array:
  """The noise level or time `level` (a scalar) for each image of x: [B] float32."""
  return jnp.full((x.shape[0],), level, jnp.float32)
