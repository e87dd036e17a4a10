"""Class conditioning of the diffusion processes: label dropout while training and classifier-free
guidance while sampling (Ho & Salimans 2022), optionally only inside a noise-level interval
(Kynkaanniemi et al. 2024).

The conditional network takes labels [B] int32 in [0, num_classes]; the label num_classes is the
null label, the unconditional model that label dropout trains alongside the conditional one.
"""

from typing import Callable

import jax
import jax.numpy as jnp


def drop_labels(labels: jax.Array, rng: jax.Array, rate: float, null_label: int) -> jax.Array:
  """labels [B] int32 with each replaced by `null_label` with probability `rate`, independently."""
  return jnp.where(jax.random.bernoulli(rng, rate, labels.shape), jnp.int32(null_label), labels)


def guided(network: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], labels: jax.Array, null_label: int,
           scale: float, interval: tuple[float, float],
           sigma_of: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """f(x [B, ...], noise_label [B]) -> out_c + scale (out_c - out_u), the guided network output.

  network(x, noise_label, labels) -> output [B, ...]; out_c is it at `labels` [B] int32, out_u at the
  null label. Every parameterisation the processes use (eps, v, x0, EDM's F, the flow velocity) is
  affine in the output at fixed x and noise level, so guiding the output guides eps, D and v alike.
  sigma_of(noise_label scalar) -> the noise level in EDM's units (noise / signal ratio); guidance
  applies when it lies in `interval` = (low, high), elsewhere f is the conditional output (one
  network pass instead of two). The samplers call f with one noise level for the whole batch, so
  the interval test is a `lax.cond` on noise_label[0]. scale = 0 is the conditional model.
  """
  low, high = interval

  def conditional(x, noise_label):
    return network(x, noise_label, labels)

  if scale == 0.0:
    return conditional

  def both(x, noise_label):
    null = jnp.full_like(labels, null_label)
    out = network(jnp.concatenate([x, x]), jnp.concatenate([noise_label, noise_label]),
                  jnp.concatenate([labels, null]))
    out_c, out_u = jnp.split(out, 2)
    return out_c + scale * (out_c - out_u)

  def f(x, noise_label):
    sigma = sigma_of(noise_label[0])
    return jax.lax.cond((sigma >= low) & (sigma <= high), both, conditional, x, noise_label)

  return f


def network_passes(draw: Callable[[Callable[[jax.Array, jax.Array], jax.Array]], jax.Array], null_label: int,
                   scale: float, interval: tuple[float, float],
                   sigma_of: Callable[[jax.Array], jax.Array]) -> int:
  """Network passes per image of one draw under `guided(..., scale, interval, sigma_of)`: 2 per evaluation
  inside the interval, 1 elsewhere.

  draw(net) -> samples runs a sampler for one image with net(x, noise_label) as its network. It runs
  once, compiled, with a stand-in network of zeros that counts the images of each call it receives, so
  the count is the sampler's own, whatever its noise levels.
  """
  images = []

  def stand_in(x, noise_label, labels):
    num = x.shape[0]
    jax.debug.callback(lambda: images.append(num))
    return jnp.zeros_like(x)

  net = guided(stand_in, jnp.zeros((1,), jnp.int32), null_label, scale, interval, sigma_of)
  jax.block_until_ready(jax.jit(lambda: draw(net))())
  jax.effects_barrier()
  return sum(images)
