"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models",
arXiv:2410.12557; official JAX code kvfrans/shortcut-models): a flow conditioned on the step size d,
s(x_t, t, d), trained so that one step of size 2d equals two steps of size d, and sampled in 1, 2, 4, ...
equal steps.

Time runs as in flow.py: x_t = (1 - t) x_0 + t eps, t = 1 noise, t = 0 data, and s points like flow.py's
velocity, towards noise: s(x_t, t, 0) = v(x_t, t), regressed on eps - x_0. The paper and its code run the
other way, tau = 1 - t from noise (tau = 0) to data (tau = 1), with s_paper = -s. Substituting, the paper's
equations (§3: the shortcut step, the self-consistency property and the combined objective) read here:

  the shortcut step                 x'_{t-d} = x_t - d s(x_t, t, d)
  self-consistency                  s(x_t, t, 2d) = [s(x_t, t, d) + s(x'_{t-d}, t - d, d)] / 2
  the objective                     E ||s(x_t, t, 0) - (eps - x_0)||^2             (flow matching, d = 0)
                                  + E ||s(x_t, t, 2d) - sg[self-consistency target]||^2      (2d > 0)

A fraction `shortcut_fraction` of each batch (its first rows; the paper's k = 1/4, the code's
1 / bootstrap_every) trains self-consistency, the rest flow matching, one mean squared error over the whole
batch as the official code. The self-consistency rows follow the official `get_targets`:
- the big step 2d is stratified over the rows, not drawn: an equal share of the rows for each of
  2d = 2/M, 4/M, ..., 1/2, 1 (M = `shortcut_max_steps`, finest first), the rows left over at 2d = 1;
- the paper time tau is drawn uniformly from the grid {0, 2d, 4d, ..., 1 - 2d} the sampler visits, so
  t = 1 - tau lies in {1, 1 - 2d, ..., 2d};
- the half steps of the finest level (d = 1/M) query the model at d = 0 (the official code gives its
  finest level, log2 M, to flow matching): the network sees step sizes {0, 2/M, 4/M, ..., 1}, and the
  sampler with M steps is the flow's Euler-M;
- the midpoint x'_{t-d} and the target are clipped to [-c, c], c = `shortcut_clip` (the code's 4);
- the targets come from the network in eval mode (no dropout) under a stop-gradient.
Where this differs from the official code: the flow-matching rows take t continuous from
`diffusion.time_schedule` as flow.py (the code: t on the grid k / M), so with no self-consistency rows the
loss is flow.py's `flow_loss`; the targets use the current parameters (the code's `bootstrap_ema = 1`
uses the EMA's, which a pure loss of (params, batch, rng) cannot see); class-conditional models get the
method's label dropout on every row (the code keeps the labels of the self-consistency rows), which also
trains the unconditional shortcut that guidance at few steps needs; no guidance is folded into the
targets (the code's `bootstrap_cfg`, off by default there).

The network's noise label is [B, 2] = 999 (t, d) (`build.time_inputs = 2`): the step size on the time's
scale, so that d = 0 is the flow (the official code embeds log2 of the number of steps instead).
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.diffusion import flow, likelihood
from genimg_jax.diffusion.process import PROCESSES, Process
from genimg_jax.diffusion.samplers import every_image, sampler, steps_nfe
from genimg_jax.registry import Registry

TIME_SCALE = flow.TIME_SCALE  # the network's labels are 999 t and 999 d


def noise_labels(t: jax.Array, d: jax.Array) -> jax.Array:
  """The network's noise label [B, 2] float32: 999 (t, d) for t, d [B]."""
  return TIME_SCALE * jnp.stack([t, d], axis=-1).astype(jnp.float32)


def step_input(d, max_steps: int):
  """The step size the network is queried at for a step of size d (scalar or [B]): d, but 0 (the flow) for
  d <= 1/max_steps, the finest level, which no self-consistency row trains."""
  return jnp.where(d * max_steps <= 1.0, 0.0, d)


def is_power_of_two(n) -> bool:
  """Whether n is an int 1, 2, 4, ..."""
  return isinstance(n, (int, np.integer)) and n >= 1 and (n & (n - 1)) == 0


# ---- The objective. ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ShortcutContext:
  """What the shortcut loss needs besides (params, batch, rng); static under jit.

  network(params, x [B, H, W, C], t [B], d [B], rng, labels=None) -> s(x, t, d) [B, H, W, C], the network
  being trained; target_network: the same in eval mode (no dropout; rng unused), for the targets.
  fraction: the share of each batch trained on self-consistency; max_steps: M, the finest level 1/M;
  clip: the targets and midpoints are clipped to [-clip, clip]; time_schedule: the flow-matching rows' t.
  """

  network: Callable[..., jax.Array]
  target_network: Callable[..., jax.Array]
  fraction: float = 0.25
  max_steps: int = 128
  clip: float = 4.0
  time_schedule: str = "uniform"


def self_consistency_rows(batch_size: int, fraction: float) -> int:
  """How many of a batch's rows train self-consistency: floor(batch_size * fraction)."""
  return int(batch_size * fraction)


def big_steps(num: int, max_steps: int) -> np.ndarray:
  """The self-consistency rows' step sizes 2d, float64 [num] (static): num // log2(M) rows each of
  2/M, 4/M, ..., 1 in that order, the rest at 1 (the official code's `dt_base` stratification)."""
  levels = int(round(math.log2(max_steps)))
  exponents = np.repeat(np.arange(levels - 1, -1, -1), num // levels)  # 2d = 2^-exponent
  exponents = np.concatenate([exponents, np.zeros(num - len(exponents), int)])
  return 2.0 ** -exponents


def self_consistency_times(rng: jax.Array, num: int, max_steps: int) -> tuple[jax.Array, jax.Array]:
  """(t [num], 2d [num]) float32 for the self-consistency rows: 2d from `big_steps`, and t = 1 - k 2d with
  k uniform in {0, ..., 1 / (2d) - 1}, so that t - 2d >= 0 and t lies on the sampler's grid."""
  big = big_steps(num, max_steps)
  k = jax.random.randint(rng, (num,), 0, jnp.asarray(np.round(1.0 / big), jnp.int32))
  big = jnp.asarray(big, jnp.float32)
  return 1.0 - k.astype(jnp.float32) * big, big


def _per_image(a: jax.Array, x: jax.Array) -> jax.Array:
  return a.reshape((-1,) + (1,) * (x.ndim - 1))


def self_consistency_target(shortcut, x_t: jax.Array, t: jax.Array, d: jax.Array, max_steps: int,
                            clip: float) -> jax.Array:
  """The target of s(x_t, t, 2d): sg[clip((s(x_t, t, d) + s(x', t - d, d)) / 2)], x' = clip(x_t - d s(x_t, t, d)).

  shortcut(x, t [B], d [B]) -> s [B, ...]; x_t [B, ...] float32; t, d [B] float32 (d: the half step); the
  model is queried at `step_input(d, max_steps)`; clip bounds the midpoint and the target to [-clip, clip].
  Returns [B, ...] float32 under a stop-gradient.
  """
  d_in = step_input(d, max_steps)
  first = shortcut(x_t, t, d_in)
  midpoint = jnp.clip(x_t - _per_image(d, x_t) * first, -clip, clip)
  second = shortcut(midpoint, t - d, d_in)
  return jax.lax.stop_gradient(jnp.clip(0.5 * (first + second), -clip, clip))


LOSSES = Registry("loss.name", "shortcut loss")


@LOSSES.register("simple")
def shortcut_loss(params, batch: dict, rng: jax.Array, *, ctx: ShortcutContext):
  """The shortcut objective (module docstring): rows [:n] self-consistency, rows [n:] flow matching at
  d = 0, n = `self_consistency_rows`; the mean squared error over the batch. Returns (scalar, metrics with
  loss, flow_loss and, when n > 0, self_consistency_loss).

  The draws are flow_loss's (t_rng, noise_rng, dropout_rng = split(rng, 3); t for every row, eps), so with
  n = 0 this is flow_loss with the network at d = 0; the self-consistency times come from fold_in(t_rng, 1).
  """
  x0, labels = batch["image"], batch.get("label")
  num = x0.shape[0]
  n = self_consistency_rows(num, ctx.fraction)
  t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  t = flow.training_times(t_rng, num, ctx.time_schedule)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  d = jnp.zeros((num,), jnp.float32)
  target = flow.velocity_target(x0, eps)
  if n:
    t_sc, big = self_consistency_times(jax.random.fold_in(t_rng, 1), n, ctx.max_steps)
    sc_labels = None if labels is None else labels[:n]
    target_params = jax.lax.stop_gradient(params)
    shortcut = lambda x, t, d: ctx.target_network(target_params, x, t, d, None, sc_labels)
    sc_target = self_consistency_target(shortcut, flow.interpolate(x0[:n], eps[:n], t_sc), t_sc, 0.5 * big,
                                        ctx.max_steps, ctx.clip)
    t, d = jnp.concatenate([t_sc, t[n:]]), jnp.concatenate([big, d[n:]])
    target = jnp.concatenate([sc_target, target[n:]])
  s = ctx.network(params, flow.interpolate(x0, eps, t), t, d, dropout_rng, labels)
  squared = jnp.square(s - target)
  loss = jnp.mean(squared)
  metrics = {"loss": loss, "flow_loss": jnp.mean(squared[n:])}
  if n:
    metrics["self_consistency_loss"] = jnp.mean(squared[:n])
  return loss, metrics


# ---- The sampler. -----------------------------------------------------------------------------

def check_steps(steps, max_steps: int, field: str) -> None:
  """ConfigError naming `field` unless steps is a power of two <= max_steps (the step sizes trained)."""
  require(is_power_of_two(steps) and steps <= max_steps, field,
          f"must be a power of two <= diffusion.shortcut_max_steps = {max_steps} (1, 2, 4, ...), got {steps}")


SAMPLERS = Registry("sample.sampler", "shortcut sampler")


@SAMPLERS.register("shortcut")
@sampler(nfe=steps_nfe)
def shortcut_sampler(process: "Shortcut", net, rng: jax.Array, shape,
                     options: ml_collections.ConfigDict) -> jax.Array:
  """options.steps equal shortcut steps x <- x - d s(x, t, d), d = 1 / steps, t = 1, 1 - d, ..., d, from
  x_1 ~ N(0, I): steps network evaluations. steps must be a power of two <= process.max_steps."""
  check_steps(options.steps, process.max_steps, "sample.steps")
  d = step_input(1.0 / options.steps, process.max_steps)
  shortcut = process.shortcut(net)
  velocity = lambda x, t: shortcut(x, t, jnp.full_like(t, d))
  return flow.ode(velocity, flow.times(options.steps), flow.prior(rng, shape), flow.euler_step)


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Shortcut(Process):
  """flow.py's path with a network of (x, t, d); max_steps: M, the finest step size 1/M trained."""

  max_steps: int = 128

  def shortcut(self, net):
    """s(x, t [B], d [B]) from net(x, 999 (t, d))."""
    return lambda x, t, d: net(x, noise_labels(t, d))

  def velocity(self, net):
    """The flow's velocity v(x, t [B]) = s(x, t, 0)."""
    return lambda x, t: net(x, noise_labels(t, jnp.zeros_like(t)))

  def sigma_of(self, noise_label: jax.Array) -> jax.Array:
    """t / (1 - t) at the noise label 999 (t, d) (the row [2]; a scalar is taken as 999 t)."""
    t = jnp.reshape(noise_label, (-1,))[0] / TIME_SCALE
    return t / (1.0 - t)


@PROCESSES.register("shortcut", fields={"shortcut_fraction": 0.25, "shortcut_max_steps": 128, "shortcut_clip": 4.0})
def build(config: ml_collections.ConfigDict, network, image_shape) -> Shortcut:
  """Shortcut model training (diffusion.shortcut_fraction, shortcut_max_steps, shortcut_clip, time_schedule),
  the `shortcut` sampler, and held out the bits/dim of the probability-flow ODE of the d = 0 velocity (flow.py's
  `log_likelihood`)."""
  d, s = config.diffusion, config.sample
  likelihood.check_trace(d.likelihood_trace)
  require(d.time_schedule in flow.TIME_SCHEDULES, "diffusion.time_schedule", f"must be one of {flow.TIME_SCHEDULES}")
  require(0.0 <= d.shortcut_fraction < 1.0, "diffusion.shortcut_fraction",
          f"must be in [0, 1) (the rest of each batch trains flow matching), got {d.shortcut_fraction}")
  require(is_power_of_two(d.shortcut_max_steps) and d.shortcut_max_steps >= 2, "diffusion.shortcut_max_steps",
          f"must be a power of two >= 2, got {d.shortcut_max_steps}")
  require(d.shortcut_clip > 0, "diffusion.shortcut_clip", f"must be > 0, got {d.shortcut_clip}")
  if s.sampler == "shortcut":
    check_steps(s.steps, d.shortcut_max_steps, "sample.steps")
  if s.preview_sampler == "shortcut":
    check_steps(s.preview_steps, d.shortcut_max_steps, "sample.preview_steps")
  ctx = lambda train: ShortcutContext(
      lambda params, x, t, dt, rng, labels=None: network(params, x, noise_labels(t, dt), rng, train, labels),
      lambda params, x, t, dt, rng, labels=None: network(params, x, noise_labels(t, dt), None, False, labels),
      d.shortcut_fraction, d.shortcut_max_steps, d.shortcut_clip, d.time_schedule)

  def held_out_log_likelihood(net, x, rng):
    return flow.log_likelihood(lambda x, t: net(x, noise_labels(t, jnp.zeros_like(t))), x, rng,
                               trace=d.likelihood_trace)

  return Shortcut(losses=LOSSES, train_ctx=ctx(True), eval_ctx=ctx(False), samplers=SAMPLERS,
                  held_out=likelihood.ode_bpd(network, held_out_log_likelihood, image_shape),
                  max_steps=d.shortcut_max_steps)


build.time_inputs = 2  # the network takes (t, d): noise_label [B, 2]
