"""Consistency training from scratch: improved consistency training (iCT; Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models") of the consistency models of Song et al. (2023, "CM").

The noise process is EDM's x = x_0 + sigma n, sigma in [sigma_min, sigma_max]. A consistency function
f(x, sigma) maps every point of a probability-flow ODE trajectory to the trajectory's point at sigma_min,
so one evaluation at sigma_max draws a sample. Its parameterisation (CM Sec. 3 and App. C; iCT Sec. 2)

  f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
  c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sd^2 + sigma^2),
  c_in = 1 / sqrt(sigma^2 + sd^2),  c_noise = ln(sigma) / 4,

has c_skip(sigma_min) = 1 and c_out(sigma_min) = 0, so f(x, sigma_min) = x exactly whatever the network F.
The noise label c_noise is EDM's, as in the official consistency-training code (openai/
consistency_models_cifar10, `cond_t = 0.25 * log(t)`): an insensitive noise embedding, which iCT Sec. 3.1
finds helps.

Training (iCT): N levels sigma_1 = sigma_min < ... < sigma_N = sigma_max spaced as Karras et al. (rho = 7);
level i drawn from the discretised lognormal p(sigma_i) (iCT Sec. 3.5, eq. 10); the same noise z at
sigma_i and sigma_{i+1};

  loss = E[ lambda(sigma_i) d(f_theta(x_0 + sigma_{i+1} z, sigma_{i+1}), f_sg(theta)(x_0 + sigma_i z, sigma_i)) ]

with lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) (Sec. 3.1), the pseudo-Huber distance
d(a, b) = sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(D) (Sec. 3.3), and the teacher the stop-gradient of
the online network itself, no EMA (Sec. 3.2), evaluated with the student's dropout mask (Sec. 3.1).
The number of levels follows the curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1 over training step k
(Sec. 3.4): the process asks the method for the step (Process.loss_takes_step); the held-out loss, given no
step, uses the curriculum's last value N = s1 + 1.

Sampling: CM's Algorithm 1: x = f(sigma_max z, sigma_max), then for each further level tau,
x = f(x + sqrt(tau^2 - sigma_min^2) z', tau): one network evaluation per level.
A consistency model defines no density, so there is no held-out likelihood (Process.held_out is None);
eval_step reports the consistency loss on held-out images.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax.config import require
from genimg_jax.diffusion import edm
from genimg_jax.diffusion.process import PROCESSES, Process
from genimg_jax.diffusion.samplers import every_image, sampler
from genimg_jax.registry import Registry

SIGMA_DATA, SIGMA_MIN, SIGMA_MAX, RHO = edm.SIGMA_DATA, edm.SIGMA_MIN, edm.SIGMA_MAX, edm.RHO
P_MEAN, P_STD = -1.1, 2.0  # iCT's lognormal over the discrete levels (Sec. 3.5)
HUBER_SCALE = 0.00054  # c = 0.00054 sqrt(D): 0.03 on CIFAR-10 (Sec. 3.3)
S0, S1 = 10, 1280  # the curriculum's first and last N - 1 (Sec. 3.4)


# ---- The consistency function. ----------------------------------------------------------------

def scalings(sigma: jax.Array, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
  """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` (any shape, float), as the module docstring
  states them; c_skip = 1 and c_out = 0 exactly at sigma = sigma_min."""
  shifted = sigma - sigma_min
  total = sigma**2 + sigma_data**2
  return (sigma_data**2 / (shifted**2 + sigma_data**2), shifted * sigma_data / jnp.sqrt(total),
          1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0)


def consistency_function(network, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
  """f(x, sigma) = c_skip x + c_out network(c_in x, c_noise) for x [B, ...] and sigma [B] float32."""
  def f(x: jax.Array, sigma: jax.Array) -> jax.Array:
    c_skip, c_out, c_in, c_noise = scalings(sigma, sigma_data, sigma_min)
    expand = lambda c: c.reshape((-1,) + (1,) * (x.ndim - 1))
    return expand(c_skip) * x + expand(c_out) * network(expand(c_in) * x, c_noise)

  return f


# ---- The discretisation and the distance. -----------------------------------------------------

def curriculum_period(total_steps: int, s0: int = S0, s1: int = S1) -> int:
  """K' = floor(K / (log2 floor(s1 / s0) + 1)) (iCT Sec. 3.4): the steps between doublings of N - 1 over a
  run of K = total_steps steps; at least 1."""
  return max(math.floor(total_steps / (math.log2(s1 // s0) + 1)), 1)


def num_scales(step: jax.Array, total_steps: int, s0: int = S0, s1: int = S1) -> jax.Array:
  """N(k) = min(s0 2^floor(k / K'), s1) + 1 (iCT Sec. 3.4), the number of levels at training step k (int
  scalar, traced or not): int32 scalar."""
  stage = jnp.minimum(jnp.asarray(step, jnp.int32) // curriculum_period(total_steps, s0, s1), 30)
  return (jnp.minimum(s0 * jnp.exp2(stage.astype(jnp.float32)), s1) + 1).astype(jnp.int32)


def karras_levels(n: jax.Array, size: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> jax.Array:
  """The N = n training levels, increasing, in an array of static length `size` >= n: [size] float32.

  sigma_i = (sigma_min^(1/rho) + (i - 1) / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 1..N
  (iCT Sec. 2; Karras et al. eq. 5 in increasing order), with sigma_1 = sigma_min and sigma_N = sigma_max
  exactly; entries past the N-th hold sigma_max. n: int scalar >= 2, traced or not.
  """
  i = jnp.arange(size, dtype=jnp.float32)
  ramp = jnp.minimum(i / (jnp.asarray(n, jnp.float32) - 1.0), 1.0)
  low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  levels = (low + ramp * (high - low)) ** rho
  return jnp.where(i == 0, sigma_min, jnp.where(ramp >= 1.0, sigma_max, levels))


def level_log_weights(sigmas: jax.Array, n: jax.Array, p_mean: float = P_MEAN, p_std: float = P_STD) -> jax.Array:
  """log p(sigma_i) up to a constant for the pairs (sigma_i, sigma_{i+1}), i = 1..N-1 (iCT eq. 10):
  p(sigma_i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) /
  (sqrt(2) P_std)), the lognormal's mass between the two levels. sigmas: [size] float32 from `karras_levels`
  with N = n levels; returns [size - 1] float32, -inf past pair N - 1."""
  cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
  valid = jnp.arange(sigmas.shape[0] - 1) < n - 1
  return jnp.where(valid, jnp.log(jnp.maximum(cdf[1:] - cdf[:-1], 0.0)), -jnp.inf)


def pseudo_huber(a: jax.Array, b: jax.Array, c: float) -> jax.Array:
  """d(a, b) = sqrt(||a - b||^2 + c^2) - c per image (iCT Sec. 3.3): a, b [B, ...] -> [B] float32.
  Computed as ||a - b||^2 / (sqrt(||a - b||^2 + c^2) + c), which keeps its precision when ||a - b|| << c."""
  squared = jnp.sum(jnp.square(a - b), axis=tuple(range(1, a.ndim)))
  return squared / (jnp.sqrt(squared + c**2) + c)


# ---- The objective. ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConsistencyContext:
  """What the consistency loss needs besides (params, batch, rng); static under jit.

  network(params, x_in [B, H, W, C], c_noise [B] float32, rng, labels=None) -> F [B, H, W, C], the raw
  output of f = c_skip x + c_out F(c_in x, c_noise), in training or eval mode; labels: the batch's "label"
  [B] int32, which an unconditional network ignores (None: a conditional one's null label).
  huber_c: c of the pseudo-Huber distance (absolute, 0.00054 sqrt(D) in iCT). total_steps: K of the
  curriculum; s0, s1: its first and last N - 1.
  """

  network: Callable[..., jax.Array]
  huber_c: float
  total_steps: int
  s0: int = S0
  s1: int = S1
  sigma_data: float = SIGMA_DATA
  sigma_min: float = SIGMA_MIN
  sigma_max: float = SIGMA_MAX
  rho: float = RHO
  p_mean: float = P_MEAN
  p_std: float = P_STD


LOSSES = Registry("loss.name", "consistency loss")


@LOSSES.register("simple")
def consistency_loss(params, batch: dict, rng: jax.Array, *, ctx: ConsistencyContext, step: jax.Array | None = None):
  """iCT's consistency-training loss, as the module docstring states it, over N(step) levels, or N = s1 + 1
  when `step` (int scalar: updates applied so far) is None. batch["image"]: [B, H, W, C] float32 in [-1, 1].
  Returns (scalar, metrics), metrics["num_scales"] the N used."""
  x0 = batch["image"]
  level_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  n = jnp.int32(ctx.s1 + 1) if step is None else num_scales(step, ctx.total_steps, ctx.s0, ctx.s1)
  sigmas = karras_levels(n, ctx.s1 + 1, ctx.sigma_min, ctx.sigma_max, ctx.rho)
  i = jax.random.categorical(level_rng, level_log_weights(sigmas, n, ctx.p_mean, ctx.p_std), shape=(x0.shape[0],))
  sigma, sigma_next = sigmas[i], sigmas[i + 1]
  z = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  expand = lambda s: s.reshape((-1,) + (1,) * (x0.ndim - 1))
  labels = batch.get("label")

  def f(weights):  # one dropout key for the student and its teacher: the same mask (iCT Sec. 3.1)
    return consistency_function(lambda x_in, c: ctx.network(weights, x_in, c, dropout_rng, labels), ctx.sigma_data,
                                ctx.sigma_min)

  student = f(params)(x0 + expand(sigma_next) * z, sigma_next)
  teacher = f(jax.lax.stop_gradient(params))(x0 + expand(sigma) * z, sigma)  # theta^- = sg(theta), no EMA
  loss = jnp.mean(pseudo_huber(student, teacher, ctx.huber_c) / (sigma_next - sigma))
  return loss, {"loss": loss, "num_scales": n.astype(jnp.float32)}


# ---- The samplers. ----------------------------------------------------------------------------

def multistep(f, sigmas: np.ndarray, rng: jax.Array, shape, sigma_min: float = SIGMA_MIN) -> jax.Array:
  """CM's Algorithm 1: x = f(sigmas[0] z, sigmas[0]) with z ~ N(0, I) (normal(fold_in(rng, 0))), then for
  each later level tau = sigmas[j], x = f(x + sqrt(tau^2 - sigma_min^2) z_j, tau) with z_j from
  normal(fold_in(rng, j)); one `lax.scan`. f(x [B, ...], sigma [B]) -> f; sigmas: float64 [M], decreasing,
  all > sigma_min. Returns x [shape] float32 after M evaluations of f."""
  sigmas = np.asarray(sigmas, np.float64)
  x_max = sigmas[0] * jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
  x = f(x_max, every_image(sigmas[0], x_max))

  def step(x, inputs):
    j, tau, scale = inputs
    x_hat = x + scale * jax.random.normal(jax.random.fold_in(rng, j), shape, jnp.float32)
    return f(x_hat, every_image(tau, x)), None

  later = sigmas[1:]
  inputs = (jnp.arange(1, len(sigmas)), jnp.asarray(later, jnp.float32),
            jnp.asarray(np.sqrt(later**2 - sigma_min**2), jnp.float32))
  return jax.lax.scan(step, x, inputs)[0]


SAMPLERS = Registry("sample.sampler", "consistency sampler")


@SAMPLERS.register("onestep")
@sampler(nfe=lambda process, options: 1)
def onestep_sampler(process: "Consistency", net, rng: jax.Array, shape, options: ml_collections.ConfigDict):
  """x = f(sigma_max z, sigma_max): one evaluation, whatever options.steps."""
  return multistep(process.consistency_function(net), np.array([process.sigma_max]), rng, shape, process.sigma_min)


@SAMPLERS.register("multistep")
@sampler(nfe=lambda process, options: options.steps)
def multistep_sampler(process: "Consistency", net, rng: jax.Array, shape, options: ml_collections.ConfigDict):
  """`multistep` over `Consistency.sampling_levels(options.steps)`: options.steps evaluations."""
  return multistep(process.consistency_function(net), process.sampling_levels(options.steps), rng, shape,
                   process.sigma_min)


# ---- The process. -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Consistency(Process):
  """A consistency model on EDM's noise levels; sample_sigmas: the multistep sampler's levels after
  sigma_max (decreasing), or () for rho-spaced ones."""

  sigma_data: float = SIGMA_DATA
  sigma_min: float = SIGMA_MIN
  sigma_max: float = SIGMA_MAX
  rho: float = RHO
  sample_sigmas: tuple[float, ...] = ()

  def consistency_function(self, net):
    """f(x, sigma [B]) from net(x_in, c_noise) -> F."""
    return consistency_function(net, self.sigma_data, self.sigma_min)

  def sampling_levels(self, steps: int) -> np.ndarray:
    """The `steps` levels of a multistep draw, float64 [steps]: sigma_max, then sample_sigmas (which must
    number steps - 1), or without them EDM's rho-spaced levels of a (steps + 1)-level ladder less sigma_min
    (2 steps: 80, 2.53)."""
    if self.sample_sigmas:
      if len(self.sample_sigmas) != steps - 1:
        raise ValueError(f"{steps} consistency steps need {steps - 1} levels after sigma_max, got {self.sample_sigmas}")
      return np.array((self.sigma_max,) + tuple(self.sample_sigmas), np.float64)
    return edm.sigma_steps(steps + 1, self.sigma_min, self.sigma_max, self.rho)[:steps]

  def sigma_of(self, c_noise: jax.Array) -> jax.Array:
    """sigma = exp(4 c_noise)."""
    return jnp.exp(4.0 * c_noise)


@PROCESSES.register("consistency", fields={
    "ct_s0": S0, "ct_s1": S1,  # the curriculum's first and last N - 1 (N = ct_s1 + 1 while the step is not passed)
    "ct_p_mean": P_MEAN, "ct_p_std": P_STD,  # the lognormal over the training levels
    "ct_huber_scale": HUBER_SCALE,  # pseudo-Huber c = ct_huber_scale * sqrt(H W C)
    "ct_sample_sigmas": (),  # multistep: the levels after sigma_max (iCT's 2 steps on CIFAR-10: (0.821,))
})
def build(config: ml_collections.ConfigDict, network, image_shape) -> Consistency:
  """Improved consistency training (iCT) on EDM's sigma_data, sigma_min, sigma_max and rho, with the one-step
  and multistep samplers; no held-out likelihood. The curriculum's K is train.steps."""
  d, s = config.diffusion, config.sample
  require(0 < d.sigma_min < d.sigma_max, "diffusion.sigma_min", "need 0 < sigma_min < sigma_max")
  require(d.sigma_data > 0 and d.rho > 0, "diffusion.sigma_data", "sigma_data and rho must be > 0")
  require(isinstance(d.ct_s0, int) and d.ct_s0 >= 1, "diffusion.ct_s0", "must be an int >= 1")
  require(isinstance(d.ct_s1, int) and d.ct_s1 >= d.ct_s0, "diffusion.ct_s1", "must be an int >= diffusion.ct_s0")
  require(d.ct_p_std > 0, "diffusion.ct_p_std", "must be > 0")
  require(d.ct_huber_scale > 0, "diffusion.ct_huber_scale", "must be > 0")
  levels = tuple(float(v) for v in d.ct_sample_sigmas)
  require(all(d.sigma_min < v < d.sigma_max for v in levels) and all(a > b for a, b in zip(levels, levels[1:])),
          "diffusion.ct_sample_sigmas", "must decrease strictly, inside (sigma_min, sigma_max)")
  require(s.steps >= 1 and s.preview_steps >= 1, "sample.steps", "steps and preview_steps must be >= 1")
  for name, field, steps in ((s.sampler, "sample.steps", s.steps),
                             (s.preview_sampler, "sample.preview_steps", s.preview_steps)):
    require(name != "multistep" or not levels or len(levels) == steps - 1, "diffusion.ct_sample_sigmas",
            f"lists {len(levels)} levels, but the multistep sampler's {field}={steps} evaluations need "
            f"{steps - 1} (or () for rho-spaced levels)")
  ctx = lambda train: ConsistencyContext(
      lambda params, x_in, c_noise, rng, labels=None: network(params, x_in, c_noise, rng, train, labels),
      huber_c=d.ct_huber_scale * math.sqrt(math.prod(image_shape)), total_steps=config.train.steps, s0=d.ct_s0,
      s1=d.ct_s1, sigma_data=d.sigma_data, sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho,
      p_mean=d.ct_p_mean, p_std=d.ct_p_std)
  return Consistency(losses=LOSSES, train_ctx=ctx(True), eval_ctx=ctx(False), samplers=SAMPLERS, held_out=None,
                     loss_takes_step=True,
                     sigma_data=d.sigma_data, sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho,
                     sample_sigmas=levels)
