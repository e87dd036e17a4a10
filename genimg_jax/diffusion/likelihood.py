"""Likelihoods of the diffusion processes in bits/dim over 8-bit pixels.

The variational bound of DDPM (Ho et al. 2020, eq. 5): L_vlb = L_T + sum_{t>=1} L_{t-1} + L_0, every term
evaluated, with the discretised Gaussian decoder over 8-bit bins; an upper bound on -log P(x_0).

The probability-flow ODE of the continuous processes: a drift dx/dt = f(x, t) carrying the data at t0 to a
known prior at t1 changes the log-density along a path by d log p / dt = -div f (Chen et al. 2018, FFJORD), so

  log p_t0(x(t0)) = log p_prior(x(t1)) + integral_{t0}^{t1} div f(x(t), t) dt,

both terms from one solve of the augmented ODE d/dt [x, delta] = [f, div f] started at the
data point (Song et al. 2021, appendix D.2). The divergence is exact (one forward-mode Jacobian
product per dimension of an image: small images only) or Hutchinson's estimate eps^T J eps with
one probe per image, fixed over the whole solve (Grathwohl et al. 2019), unbiased for log p.

Solver: `jax.experimental.ode.odeint`, adaptive Dormand-Prince 5(4) with rtol = atol = 1e-5 by
default (score_sde's RK45 settings). Its error control is over the whole state, so one image's
result moves, within the tolerance, with the rest of its batch. It does not report its work: an
attempted step costs 6 drift evaluations, and 2 more start the solve (count them with a
jax.debug.callback in the drift). If the drift turns NaN mid-way, odeint stops without a word
and extrapolates from the last good step; a NaN at the start gives NaN.

The processes' own drifts and priors are in edm.py and flow.py. Bits/dim over 8-bit pixels come from
uniformly dequantized images (`dequantize`, `bits_per_dim_dequantized`).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.ode import odeint

from genimg_jax.config import require
from genimg_jax.losses import gaussian, likelihoods


# ---- The variational bound of DDPM. -----------------------------------------------------------

_LOG_PROB_FLOOR = 1e-12


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(8-bit pixel) per element under N(mean, e^(2 log_scale)), in nats.

  x: images on the 8-bit grid k / 127.5 - 1, k in 0..255. The bin of k is
  x +- 1/255; the bins of 0 and 255 extend to -inf and +inf, so the 256
  probabilities sum to 1. Differences of the normal CDF are taken on the side
  of the tail they lie in, so that narrow Gaussians far from the mean keep
  their precision. Shapes broadcast; float32.
  """
  inv_scale = jnp.exp(-log_scale)
  upper = (x - mean + 1.0 / 255.0) * inv_scale
  lower = (x - mean - 1.0 / 255.0) * inv_scale
  # Phi(upper) - Phi(lower), computed as Phi(-lower) - Phi(-upper) when both are above 0.
  mass = jnp.where(lower > 0, jax.scipy.special.ndtr(-lower) - jax.scipy.special.ndtr(-upper),
                   jax.scipy.special.ndtr(upper) - jax.scipy.special.ndtr(lower))
  interior = jnp.log(jnp.maximum(mass, _LOG_PROB_FLOOR))
  return jnp.where(x < -1.0 + 1.0 / 255.0, jax.scipy.special.log_ndtr(upper),
                   jnp.where(x > 1.0 - 1.0 / 255.0, jax.scipy.special.log_ndtr(-lower), interior))


def _per_image_sum(a: jax.Array) -> jax.Array:
  return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def prior_kl(schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) per image [B], in nats (no network involved); schedule: a
  ddpm.Schedule."""
  abar = schedule.alphas_cumprod[-1]
  kl = gaussian.kl(jnp.sqrt(abar) * x0, jnp.log1p(-abar), 0.0, 0.0)
  return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


def vlb_term(x0_estimate: Callable[[jax.Array, jax.Array], jax.Array], schedule, x0: jax.Array, t: jax.Array,
             eps: jax.Array, *, variance: str = "beta_tilde", clip_x0: bool = True) -> jax.Array:
  """One term of the bound per image [B], in nats, at x_t = schedule.q_sample(x0, t, eps).

  t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)). t = 0: the discretised decoder's
  -log p(x_0 | x_1) over 8-bit bins. The model's mean is the posterior mean at its x0 estimate
  x0_estimate(x_t, t) (clipped to [-1, 1] if clip_x0, as the sampler does); its variance is fixed
  (`Schedule.reverse_log_variance`). x0 must lie on the 8-bit grid. x0, eps [B, H, W, C]; t [B] int32, one
  value for the batch; schedule: a ddpm.Schedule.
  """
  x_t = schedule.q_sample(x0, t, eps)
  x0_hat = x0_estimate(x_t, t)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  model_mean = schedule.posterior_mean(x0_hat, x_t, t)
  model_logvar = schedule.reverse_log_variance(variance, t, x0.ndim)
  kl = gaussian.kl(schedule.posterior_mean(x0, x_t, t), schedule.posterior_log_variance(t, x0.ndim), model_mean,
                   model_logvar)
  decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
  axes = tuple(range(1, x0.ndim))
  return jnp.where(t == 0, jnp.sum(decoder_nll, axis=axes), jnp.sum(kl, axis=axes))


def variational_bound(x0_estimate: Callable[[jax.Array, jax.Array], jax.Array], schedule, x0: jax.Array,
                      rng: jax.Array, *, variance: str = "beta_tilde", clip_x0: bool = True) -> dict[str, jax.Array]:
  """Ho et al.'s L_vlb = L_T + sum_{t>=1} L_{t-1} + L_0 for images x0 [B, H, W, C] on the 8-bit grid.

  x0_estimate(x_t, t [B]) -> the network's x0 estimate (eval mode); schedule: a ddpm.Schedule. Every one of
  the T terms is evaluated (one network call each, in a scan); the noise eps of term t is
  normal(fold_in(fold_in(rng, t), 0)). Returns per-image [B] float32 values in nats: 'total', 'prior' (L_T),
  'decoder' (L_0) and 'diffusion' (the sum of the T - 1 KL terms). An upper bound on -log P(x0) of the
  8-bit image.
  """
  def term(total, t):
    tb = jnp.full((x0.shape[0],), t, jnp.int32)
    eps = jax.random.normal(jax.random.fold_in(jax.random.fold_in(rng, t), 0), x0.shape, x0.dtype)
    value = vlb_term(x0_estimate, schedule, x0, tb, eps, variance=variance, clip_x0=clip_x0)
    return total + jnp.where(t > 0, value, 0.0), value

  diffusion, per_t = jax.lax.scan(term, jnp.zeros(x0.shape[:1], jnp.float32), jnp.arange(schedule.num_timesteps))
  prior = prior_kl(schedule, x0)
  decoder = per_t[0]
  return {"total": prior + diffusion + decoder, "prior": prior, "decoder": decoder, "diffusion": diffusion}


# ---- The probability-flow ODE. ----------------------------------------------------------------

RTOL = ATOL = 1e-5
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# -log2 of the width 2/256 of a dequantization bin in [-1, 1]: 7 bits/dim.
DEQUANTIZED_BIN_BITS = math.log2(likelihoods.NUM_VALUES / 2)

Drift = Callable[[jax.Array, jax.Array], jax.Array]


def check_trace(trace: str) -> None:
  """ConfigError naming diffusion.likelihood_trace unless it is one of TRACES."""
  require(trace in TRACES, "diffusion.likelihood_trace", f"must be one of {TRACES}")


def exact_divergence(drift: Drift, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(f, div f): f = drift(x, t) like x [B, ...], and sum_i d f_i / d x_i per image [B].

  One linearisation, then a Jacobian-vector product per basis vector of an image (D of them,
  vmapped: memory D times an evaluation, for small images only). Assumes images do not interact
  inside the drift, as a batch-norm-free network's do not.
  """
  f, jvp = jax.linearize(lambda y: drift(y, t), x)
  dims = math.prod(x.shape[1:])
  basis = jnp.eye(dims, dtype=x.dtype).reshape((dims, 1) + x.shape[1:])
  columns = jax.vmap(jvp)(jnp.broadcast_to(basis, (dims,) + x.shape))  # [D, B, ...]: J e_i, each image
  return f, jnp.einsum("ibi->b", columns.reshape(dims, x.shape[0], dims))


def hutchinson_divergence(drift: Drift, x: jax.Array, t: jax.Array, probe: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(f, eps^T J eps): f = drift(x, t) like x [B, ...], and the estimate of div f per image [B] with
  the probe eps [B, ...] (one forward-mode product, which also gives f)."""
  f, j_probe = jax.jvp(lambda y: drift(y, t), (x,), (probe,))
  return f, _per_image_sum(probe * j_probe)


def hutchinson_probes(rng: jax.Array, shape, kind: str = "rademacher") -> jax.Array:
  """Probes eps float32 [shape] with E[eps eps^T] = I per image: rademacher (+-1, the smaller
  variance, 2 sum_{i != j} S_ij^2 for S the symmetric part of J) or gaussian (2 ||S||_F^2)."""
  if kind == "rademacher":
    return jax.random.rademacher(rng, shape, jnp.float32)
  if kind == "gaussian":
    return jax.random.normal(rng, shape, jnp.float32)
  raise ValueError(f"unknown Hutchinson probe {kind!r}; choose one of {PROBES}")


def ode_log_likelihood(drift: Drift, prior_log_prob: Callable[[jax.Array], jax.Array], x0: jax.Array,
                       rng: jax.Array, t0: float, t1: float, *, trace: str = "hutchinson",
                       probe: str = "rademacher", rtol: float = RTOL, atol: float = ATOL) -> jax.Array:
  """log p_t0(x0) in nats per image [B] float32, through dx/dt = drift(x [B, ...], t [B]) from t0 to t1.

  Args:
    drift: f(x, t) -> dx/dt like x; t is the current time for every image, float32 [B].
    prior_log_prob: log p_t1(x) [B] of x [B, ...].
    x0: the data points [B, ...], float32.
    rng: draws the probes, hutchinson_probes(rng, x0.shape, probe); unused by the exact trace.
    t0, t1: Python floats, t0 < t1.
    trace: "exact" or "hutchinson".
    probe: "rademacher" or "gaussian" (Hutchinson only).
    rtol, atol: odeint's local error tolerances.
  Returns:
    log p_prior(x(t1)) + integral of the divergence, float32 [B]. Jit the caller: odeint traces anew
    for every new drift closure.
  """
  if not t0 < t1:
    raise ValueError(f"the likelihood ODE runs forward from the data at t0 to the prior at t1, got {t0} -> {t1}")
  if trace == "exact":
    divergence = lambda x, t: exact_divergence(drift, x, t)
  elif trace == "hutchinson":
    probes = hutchinson_probes(rng, x0.shape, probe)  # drawn once: the same probe for the whole path
    divergence = lambda x, t: hutchinson_divergence(drift, x, t, probes)
  else:
    raise ValueError(f"unknown trace {trace!r}; choose one of {TRACES}")

  def augmented(state, t):
    x, _ = state
    return divergence(x, jnp.full((x.shape[0],), t, jnp.float32))

  x0 = x0.astype(jnp.float32)
  state = (x0, jnp.zeros((x0.shape[0],), jnp.float32))
  path = odeint(augmented, state, jnp.array([t0, t1], jnp.float32), rtol=rtol, atol=atol)
  x1, delta = path[0][-1], path[1][-1]
  return prior_log_prob(x1) + delta


def normal_log_prob(x: jax.Array, scale: float = 1.0) -> jax.Array:
  """log N(x; 0, scale^2 I) per image [B] of x [B, ...], in nats."""
  return _per_image_sum(gaussian.log_prob(x, 0.0, 2.0 * math.log(scale)))


def dequantize(x: jax.Array, rng: jax.Array) -> jax.Array:
  """Uniformly dequantized images: x [B, ...] in [-1, 1] on the 8-bit grid (k / 127.5 - 1, k recovered
  by rounding) -> 2 (k + u) / 256 - 1 with u ~ U[0, 1) per sub-pixel, float32 in [-1, 1), like x."""
  k = likelihoods.pixel_values(x).astype(jnp.float32)
  return 2.0 * (k + jax.random.uniform(rng, x.shape, jnp.float32)) / likelihoods.NUM_VALUES - 1.0


def bits_per_dim_dequantized(log_p: jax.Array, num_dims: int) -> jax.Array:
  """Bits/dim over 8-bit pixels from log p [any shape] in nats of `dequantize`d images of num_dims
  dimensions: -log p / (num_dims ln 2) + 7, the bin width 2/256 per dimension. Averaged over u it
  bounds the discrete negative log-likelihood from above (Jensen). Same shape."""
  return likelihoods.bits_per_dim(-log_p, num_dims) + DEQUANTIZED_BIN_BITS


def ode_bpd(network, log_likelihood, image_shape) -> Callable[[dict, dict, jax.Array], dict]:
  """held_out(params, batch, rng) -> {"ode_bpd"}: the mean over the batch of the probability-flow ODE's
  bits/dim of uniformly dequantized images (an upper bound on the 8-bit NLL, up to the solver's
  tolerance and, with Hutchinson's trace, an unbiased estimate of it), given their labels if the
  model is class-conditional. log_likelihood(net, x, rng) -> log p(x) [B] nats, with net(x, noise_label)
  the network in eval mode; network as a process builder takes it (process.py)."""
  num_dims = math.prod(image_shape)

  def held_out(params, batch, rng):
    dequantize_rng, probe_rng = jax.random.split(rng)
    net = lambda x, noise_label: network(params, x, noise_label, None, False, batch.get("label"))
    log_p = log_likelihood(net, dequantize(batch["image"], dequantize_rng), probe_rng)
    return {"ode_bpd": jnp.mean(bits_per_dim_dequantized(log_p, num_dims))}

  return held_out
