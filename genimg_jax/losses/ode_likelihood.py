"""Exact log-likelihoods of continuous-time models through their probability-flow ODE.

A drift dx/dt = f(x, t) carrying the data at t0 to a known prior at t1 changes the log-density
along a path by d log p / dt = -div f (Chen et al. 2018, FFJORD), so

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

Wrappers for the processes of losses/continuous.py: flow (t from t_min to 1, prior N(0, I)) and
EDM (sigma from sigma_min to sigma_max, prior N(0, sigma_max^2 I)). Bits/dim over 8-bit
pixels come from uniformly dequantized images (`dequantize`, `bits_per_dim_dequantized`).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.ode import odeint

from genimg_jax.losses import continuous, gaussian, likelihoods

RTOL = ATOL = 1e-5
TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
FLOW_T_MIN = 1e-5  # keeps a network's time embedding off t = 0 (score_sde's eps), for a change of ~D t_min nats
# -log2 of the width 2/256 of a dequantization bin in [-1, 1]: 7 bits/dim.
DEQUANTIZED_BIN_BITS = math.log2(likelihoods.NUM_VALUES / 2)

Drift = Callable[[jax.Array, jax.Array], jax.Array]


def _per_image_sum(a: jax.Array) -> jax.Array:
  return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


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


def flow_log_likelihood(velocity: Drift, x0: jax.Array, rng: jax.Array, *, t_min: float = FLOW_T_MIN,
                        trace: str = "hutchinson", probe: str = "rademacher", rtol: float = RTOL,
                        atol: float = ATOL) -> jax.Array:
  """log p(x0) in nats per image [B] float32 of a flow model x_t = (1 - t) x0 + t eps.

  velocity(x [B, ...], t [B]) -> dx/dt; x0 [B, ...] float32. The ODE runs from t_min to 1 into the
  prior N(0, I), so this is the density of x_{t_min}, within about D t_min nats of that of x_0.
  rng, trace, probe, rtol, atol: as `ode_log_likelihood`.
  """
  return ode_log_likelihood(velocity, normal_log_prob, x0, rng, t_min, 1.0, trace=trace, probe=probe,
                            rtol=rtol, atol=atol)


def edm_log_likelihood(denoise: Drift, x0: jax.Array, rng: jax.Array, sigma_min: float = continuous.SIGMA_MIN,
                       sigma_max: float = continuous.SIGMA_MAX, *, trace: str = "hutchinson",
                       probe: str = "rademacher", rtol: float = RTOL, atol: float = ATOL) -> jax.Array:
  """log p_{sigma_min}(x0) in nats per image [B] float32 of an EDM model x = x0 + sigma n.

  denoise(x [B, ...], sigma [B]) -> D(x; sigma); x0 [B, ...] float32. The probability-flow ODE
  dx/dsigma = (x - D(x; sigma)) / sigma runs in sigma itself: far above the data's scale x grows
  linearly in sigma, which Dormand-Prince crosses in a few steps (on the tests' Gaussian, 92 drift
  evaluations against 140 in ln sigma). The prior is N(0, sigma_max^2 I) in place of
  p_data * N(0, sigma_max^2 I): off by log E[exp(x . x0 / sigma_max^2 - |x0|^2 / (2 sigma_max^2))], of
  order |x0| / sigma_max nats (32x32x3 images in [-1, 1] at sigma_max = 80: under 1 nat, 5e-4 bits/dim).
  rng, trace, probe, rtol, atol: as `ode_log_likelihood`.
  """
  return ode_log_likelihood(continuous.edm_ode_drift(denoise), lambda x: normal_log_prob(x, sigma_max), x0, rng,
                            sigma_min, sigma_max, trace=trace, probe=probe, rtol=rtol, atol=atol)


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
