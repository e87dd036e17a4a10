"""Probability-flow ODE likelihoods (diffusion/likelihood.py) against closed forms in float64:
traces of linear drifts, the flow and EDM ODEs of Gaussian data N(mu, Sigma) with their exact
velocity and denoiser, and the bits/dim of dequantized 8-bit images."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg, stats

from genimg_jax.images import uint8_to_float
from genimg_jax.diffusion import edm, flow, likelihood

DIMS = 6


def _gaussian_data():
  """mu [6] and a full covariance Sigma [6, 6] (eigenvalues 0.05 to 1, not diagonal, so Rademacher
  probes have variance), float64, and 8 points x0: 7 draws and one 3-sigma outlier."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(DIMS, DIMS)))
  cov = q @ np.diag(np.geomspace(0.05, 1.0, DIMS)) @ q.T
  mu = rng.uniform(-0.5, 0.5, DIMS)
  x0 = rng.multivariate_normal(mu, cov, size=8)
  x0[-1] = mu + 3.0 * q[:, 0] * np.sqrt(0.05)
  return mu, cov, x0


def _in_eigenbasis(cov):
  lam, q = np.linalg.eigh(cov)
  return jnp.asarray(lam, jnp.float32), jnp.asarray(q, jnp.float32)


def _flow_velocity(mu, lam, q):
  """E[eps - x0 | x_t = x] = (t I - (1 - t) Sigma) C_t^-1 (x - (1 - t) mu) - mu, with
  C_t = (1 - t)^2 Sigma + t^2 I the covariance of x_t (all diagonal in Sigma's eigenbasis)."""
  def velocity(x, t):
    t = t[:, None]
    gain = (t - (1 - t) * lam) / ((1 - t) ** 2 * lam + t**2)
    return (gain * ((x - (1 - t) * mu) @ q)) @ q.T - mu

  return velocity


def _edm_denoiser(mu, lam, q):
  """D(x; sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu), the exact denoiser of N(mu, Sigma)."""
  def denoise(x, sigma):
    return mu + (lam / (lam + sigma[:, None] ** 2) * ((x - mu) @ q)) @ q.T

  return denoise


def _repeat(a, n):
  return jnp.repeat(jnp.asarray(a, jnp.float32), n, axis=0)


def _counting(drift, calls):
  """The drift, counting its evaluations at run time (odeint does not report them)."""
  def counted(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return drift(x, t)

  return counted


# ---- Divergence estimators. --------------------------------------------------------------------


def test_exact_divergence_is_the_trace_and_hutchinson_is_unbiased_with_the_known_variance():
  """f(x, t) = t A x on images [B, 2, 3]: div f = t tr(A); eps^T (t A) eps per probe, averaging to
  t tr(A), with variance t^2 2 sum_{i != j} S_ij^2 (rademacher) or t^2 2 ||S||_F^2 (gaussian)."""
  a = np.random.default_rng(1).normal(size=(DIMS, DIMS))
  drift = lambda x, t: t[:, None, None] * (x.reshape(x.shape[0], -1) @ jnp.asarray(a.T, jnp.float32)).reshape(x.shape)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 3))
  t = jnp.array([0.5, 1.0, 2.0, -1.0])
  f, div = jax.jit(lambda x, t: likelihood.exact_divergence(drift, x, t))(x, t)
  chex.assert_shape(div, (4,))
  np.testing.assert_allclose(f, drift(x, t), rtol=1e-6)
  np.testing.assert_allclose(div, np.asarray(t) * np.trace(a), rtol=1e-5)

  n, s = 40000, (a + a.T) / 2
  variance = {"rademacher": 2 * (np.sum(s**2) - np.sum(np.diag(s) ** 2)), "gaussian": 2 * np.sum(s**2)}
  for kind in likelihood.PROBES:
    probes = likelihood.hutchinson_probes(jax.random.PRNGKey(2), (n, 2, 3), kind)
    ones = jnp.ones((n,))
    _, est = likelihood.hutchinson_divergence(drift, jnp.zeros((n, 2, 3)), ones, probes)
    p = np.asarray(probes, np.float64).reshape(n, -1)
    np.testing.assert_allclose(est, np.einsum("bi,ij,bj->b", p, a, p), rtol=1e-4, atol=1e-4)
    est = np.asarray(est, np.float64)
    assert abs(est.mean() - np.trace(a)) < 4 * est.std() / math.sqrt(n)
    assert est.var() == pytest.approx(variance[kind], rel=0.05)


# ---- The ODE. ---------------------------------------------------------------------------------


def test_linear_drift_under_jit_with_a_closure_over_params():
  """dx/dt = A x from 0 to 1 with A a traced argument: x1 = expm(A) x0, the exact integral is tr(A)
  and Hutchinson's with a fixed probe eps is eps^T A eps, to the solver's tolerance."""
  a = 0.5 * np.random.default_rng(3).normal(size=(DIMS, DIMS))
  x0 = np.random.default_rng(4).normal(size=(5, DIMS))
  rng = jax.random.PRNGKey(5)

  @jax.jit
  def log_p(a, x0):
    drift = lambda x, t: x @ a.T
    return [likelihood.ode_log_likelihood(drift, likelihood.normal_log_prob, x0, rng, 0.0, 1.0, trace=trace)
            for trace in likelihood.TRACES]

  exact, hutchinson = log_p(jnp.asarray(a, jnp.float32), jnp.asarray(x0, jnp.float32))
  chex.assert_shape(exact, (5,))
  chex.assert_type(exact, jnp.float32)
  prior = stats.multivariate_normal(np.zeros(DIMS)).logpdf(x0 @ linalg.expm(a).T)
  np.testing.assert_allclose(exact, prior + np.trace(a), rtol=1e-4)
  eps = np.asarray(likelihood.hutchinson_probes(rng, (5, DIMS)), np.float64)
  np.testing.assert_allclose(hutchinson, prior + np.einsum("bi,ij,bj->b", eps, a, eps), rtol=1e-4)


def _flow(mu, cov, **kwargs):
  lam, q = _in_eigenbasis(cov)
  return lambda x0, rng: flow.log_likelihood(_flow_velocity(jnp.asarray(mu, jnp.float32), lam, q), x0, rng,
                                                **kwargs)


def _edm(mu, cov, **kwargs):
  lam, q = _in_eigenbasis(cov)
  return lambda x0, rng: edm.log_likelihood(_edm_denoiser(jnp.asarray(mu, jnp.float32), lam, q), x0, rng,
                                               **kwargs)


def _edm_expected(mu, cov, x0, sigma_min=edm.SIGMA_MIN, sigma_max=edm.SIGMA_MAX):
  """What edm_log_likelihood computes, in closed form: the ODE carries x0 to
  x_T = mu + (Sigma + sigma_max^2)^(1/2) (Sigma + sigma_min^2)^(-1/2) (x0 - mu), and
  log p_{sigma_min}(x0) = log N(x_T; mu, Sigma + sigma_max^2) + integral; the prior replaces the first term."""
  lam, q = np.linalg.eigh(cov)
  x_t = mu + ((x0 - mu) @ q * np.sqrt((lam + sigma_max**2) / (lam + sigma_min**2))) @ q.T
  at_min = stats.multivariate_normal(mu, cov + sigma_min**2 * np.eye(DIMS)).logpdf(x0)
  prior_error = (stats.multivariate_normal(np.zeros(DIMS), sigma_max**2 * np.eye(DIMS)).logpdf(x_t)
                 - stats.multivariate_normal(mu, cov + sigma_max**2 * np.eye(DIMS)).logpdf(x_t))
  return at_min + prior_error, prior_error


def test_flow_and_edm_with_the_exact_trace_give_the_gaussian_log_density():
  """Flow: log N(x0; (1 - t_min) mu, C_{t_min}), and the data's own density, to 1e-3 relative.
  EDM: the closed form of what it computes to 1e-3 relative; against the data's density it is off by
  the prior's approximation, here |prior_error| < 0.02 nats (sigma_max = 80, |mu| ~ 0.6).
  Dormand-Prince takes 2 drift evaluations to start and 6 per attempted step (measured: 38 and 92)."""
  mu, cov, x0 = _gaussian_data()
  mu32, (lam, q) = jnp.asarray(mu, jnp.float32), _in_eigenbasis(cov)
  log_p_data = stats.multivariate_normal(mu, cov).logpdf(x0)
  flow_calls, edm_calls = [], []
  velocity = _counting(_flow_velocity(mu32, lam, q), flow_calls)
  denoise = _counting(_edm_denoiser(mu32, lam, q), edm_calls)
  both = jax.jit(lambda x0: (flow.log_likelihood(velocity, x0, None, trace="exact"),
                             edm.log_likelihood(denoise, x0, None, trace="exact")))
  flow_log_p, edm_log_p = both(jnp.asarray(x0, jnp.float32))

  t = flow.T_MIN
  np.testing.assert_allclose(flow_log_p, stats.multivariate_normal((1 - t) * mu, (1 - t) ** 2 * cov + t**2).logpdf(x0),
                             rtol=1e-3)
  np.testing.assert_allclose(flow_log_p, log_p_data, rtol=1e-3)
  expected, prior_error = _edm_expected(mu, cov, x0)
  np.testing.assert_allclose(edm_log_p, expected, rtol=1e-3)
  assert np.max(np.abs(prior_error)) < 0.02
  np.testing.assert_allclose(edm_log_p, log_p_data, atol=0.03)
  for calls, most in ((flow_calls, 60), (edm_calls, 130)):
    assert len(calls) % 6 == 2 and len(calls) < most, len(calls)


@pytest.mark.parametrize("process", ["flow", "edm"])
def test_hutchinson_averages_to_the_gaussian_log_density(process):
  """Each point repeated with 256 Rademacher probes: the mean lies within 4 standard errors of the
  exact answer, and the spread is real (the covariance is not diagonal)."""
  mu, cov, x0 = _gaussian_data()
  n = 256
  log_p = jax.jit({"flow": _flow, "edm": _edm}[process](mu, cov))
  est = np.asarray(log_p(_repeat(x0, n), jax.random.PRNGKey(6)), np.float64).reshape(len(x0), n)
  want = (stats.multivariate_normal(mu, cov).logpdf(x0) if process == "flow" else _edm_expected(mu, cov, x0)[0])
  standard_error = est.std(axis=1) / math.sqrt(n)
  assert np.all(standard_error > 1e-3)
  np.testing.assert_array_less(np.abs(est.mean(axis=1) - want), 4 * standard_error + 1e-3 * np.abs(want))


def test_bad_arguments_are_refused():
  x0, rng = jnp.zeros((2, 3)), jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="unknown trace 'diag'"):
    likelihood.ode_log_likelihood(lambda x, t: x, likelihood.normal_log_prob, x0, rng, 0.0, 1.0, trace="diag")
  with pytest.raises(ValueError, match="unknown Hutchinson probe 'uniform'"):
    flow.log_likelihood(lambda x, t: x, x0, rng, probe="uniform")
  with pytest.raises(ValueError, match="runs forward"):
    likelihood.ode_log_likelihood(lambda x, t: x, likelihood.normal_log_prob, x0, rng, 1.0, 0.0)


# ---- Dequantization and bits/dim. -------------------------------------------------------------


def test_dequantize_spreads_each_pixel_value_uniformly_over_its_bin():
  k = np.tile(np.arange(256, dtype=np.uint8), 200).reshape(100, 512)
  y = np.asarray(likelihood.dequantize(jnp.asarray(uint8_to_float(k)), jax.random.PRNGKey(7)), np.float64)
  u = (y + 1) * 128 - k  # y = 2 (k + u) / 256 - 1
  assert y.dtype == np.float64 and np.all((y >= -1) & (y < 1))
  assert np.all((u >= -1e-4) & (u < 1 + 1e-4))
  assert np.mean(u) == pytest.approx(0.5, abs=0.005) and np.var(u) == pytest.approx(1 / 12, rel=0.02)


def test_bits_per_dim_of_dequantized_densities():
  """The uniform density on [-1, 1]^D (2^-D) is 8 bits/dim; a density constant on each bin, P(k) / (2/256),
  makes the bound exact: -sum_d log2 P(k_d) / D."""
  dims = 12
  bpd = likelihood.bits_per_dim_dequantized(jnp.float32(-dims * math.log(2)), dims)
  assert float(bpd) == pytest.approx(8.0, rel=1e-6)
  probs = np.random.default_rng(8).dirichlet(np.ones(256))
  k = np.random.default_rng(9).integers(0, 256, size=(3, dims))
  y = likelihood.dequantize(jnp.asarray(uint8_to_float(k.astype(np.uint8))), jax.random.PRNGKey(10))
  bins = np.floor((np.asarray(y, np.float64) + 1) * 128).astype(int)
  log_p = np.sum(np.log(probs[bins] * 128), axis=-1)
  got = likelihood.bits_per_dim_dequantized(jnp.asarray(log_p, jnp.float32), dims)
  np.testing.assert_allclose(got, -np.sum(np.log2(probs[k]), axis=-1) / dims, rtol=1e-5)


@pytest.mark.parametrize("process", ["flow", "edm"])
def test_the_methods_held_out_ode_bpd_at_init_is_its_closed_form(data_dir, process):
  """At initialisation the network outputs 0 (zero-initialised last layer): the flow's velocity is 0, so
  log p(x) = log N(x; 0, I); EDM's denoiser is c_skip x, whose ODE scales x by r(sigma) =
  sqrt((sigma^2 + sd^2) / (sigma_min^2 + sd^2)), so log p(x) = log N(r x; 0, sigma_max^2 I) + D log r.
  Both Jacobians are multiples of I, where a Rademacher probe's estimate of the trace is exact."""
  from helpers import tiny_config

  from genimg_jax import methods

  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.process = process
  config.sample.sampler, config.sample.preview_sampler = {"flow": "euler", "edm": "heun"}[process], ""
  config.sample.steps = 2
  method = methods.make(config)
  params = method.init(jax.random.PRNGKey(0)).params
  k = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 1))
  batch, rng = {"image": uint8_to_float(k), "label": jnp.zeros(3, jnp.int32)}, jax.random.PRNGKey(4)
  bpd = float(jax.jit(method.eval_step)(params, batch, rng)["ode_bpd"])
  x = np.asarray(likelihood.dequantize(batch["image"], jax.random.split(jax.random.split(rng)[1])[0]), np.float64)
  x = x.reshape(3, -1)
  if process == "flow":
    log_p = stats.norm.logpdf(x).sum(axis=1)
  else:
    sd, s_min, s_max = 0.5, config.diffusion.sigma_min, config.diffusion.sigma_max
    r = math.sqrt((s_max**2 + sd**2) / (s_min**2 + sd**2))
    log_p = stats.norm.logpdf(r * x, scale=s_max).sum(axis=1) + x.shape[1] * math.log(r)
  want = np.mean(-log_p / (x.shape[1] * math.log(2)) + 7)
  assert bpd == pytest.approx(want, rel=1e-4)
