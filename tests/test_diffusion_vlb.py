"""The diffusion variational bound: its pieces against float64 references and an exact case."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from genimg_jax.diffusion import ddpm, likelihood
from genimg_jax.losses import gaussian, likelihoods


@pytest.mark.parametrize("m1,v1,m2,v2", [(0.3, 0.5, -0.2, 2.0), (1.0, 1.0, 1.0, 1.0), (0.0, 0.01, 0.5, 0.3)])
def test_normal_kl_equals_numerical_integration(m1, v1, m2, v2):
  p, q = scipy.stats.norm(m1, math.sqrt(v1)), scipy.stats.norm(m2, math.sqrt(v2))
  expected, _ = scipy.integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30, points=[m1])
  with jax.enable_x64():
    got = float(gaussian.kl(jnp.float64(m1), jnp.log(jnp.float64(v1)), jnp.float64(m2), jnp.log(jnp.float64(v2))))
  assert got == pytest.approx(expected, rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("mean,scale", [(0.0, 0.5), (0.37, 0.004), (-0.99, 0.02), (0.9, 1e-3)])
def test_discretized_likelihood_sums_to_one_and_matches_scipy(mean, scale):
  x = np.arange(256) / 127.5 - 1.0
  edges = np.concatenate([[-np.inf], (x[:-1] + x[1:]) / 2, [np.inf]])
  expected = np.diff(scipy.stats.norm.cdf(edges, mean, scale))
  got = np.exp(np.asarray(likelihood.discretized_gaussian_log_likelihood(
      jnp.asarray(x, jnp.float32), jnp.float32(mean), jnp.log(jnp.float32(scale)))))
  assert got.sum() == pytest.approx(1.0, abs=2e-5)
  significant = expected > 1e-6
  np.testing.assert_allclose(got[significant], expected[significant], rtol=2e-3)


def test_prior_kl_equals_the_closed_form():
  schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule("linear", 50, 1e-3, 0.1))
  x0 = np.random.default_rng(0).uniform(-1, 1, (3, 2, 2, 1))
  abar = np.prod(1 - ddpm.beta_schedule("linear", 50, 1e-3, 0.1))
  mean_sq, var = abar * x0 ** 2, 1 - abar
  expected = 0.5 * np.sum(mean_sq + var - 1 - np.log(var), axis=(1, 2, 3))
  got = likelihood.prior_kl(schedule, jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def _grid_images(rng, shape):
  return (rng.integers(0, 256, shape) / 127.5 - 1.0).astype(np.float32)


def test_bound_of_the_exact_denoiser_of_one_image_is_prior_plus_decoder():
  """Data = one image: the ideal x0-prediction is that image, every KL term is 0, and the decoder
  term is the Gaussian N(x0, beta-tilde_1) mass of each pixel's bin."""
  T = 40
  betas = ddpm.beta_schedule("linear", T, 1e-4, 0.05)
  schedule = ddpm.Schedule.from_betas(betas)
  image = _grid_images(np.random.default_rng(1), (1, 4, 4, 1))
  image[0, 0, 0, 0], image[0, 0, 1, 0] = -1.0, 1.0  # Both edge bins appear.
  x0_estimate = lambda x_t, t: jnp.broadcast_to(image, x_t.shape)
  bound = likelihood.variational_bound(x0_estimate, schedule, jnp.asarray(image), jax.random.PRNGKey(0))
  abar = np.cumprod(1 - betas)
  sigma = math.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))
  x = image.astype(np.float64).ravel()
  upper = scipy.stats.norm.cdf(np.where(x > 1 - 1 / 255, np.inf, 1 / 255), 0, sigma)
  lower = scipy.stats.norm.cdf(np.where(x < -1 + 1 / 255, -np.inf, -1 / 255), 0, sigma)
  decoder = -np.sum(np.log(upper - lower))
  prior = 0.5 * np.sum(abar[-1] * x ** 2 + (1 - abar[-1]) - 1 - np.log(1 - abar[-1]))
  assert float(bound["diffusion"][0]) == pytest.approx(0.0, abs=1e-4)
  assert float(bound["decoder"][0]) == pytest.approx(decoder, rel=1e-4)
  assert float(bound["total"][0]) == pytest.approx(prior + decoder, rel=1e-4)


def _numpy_vlb_term(betas, x0, t, noise, eps_fn, variance):
  """One bound term in float64 NumPy for an eps-predicting denoiser eps_fn(x_t, t), no clipping."""
  alphas = 1 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise
  x0_hat = (x_t - np.sqrt(1 - abar[t]) * eps_fn(x_t, t)) / np.sqrt(abar[t])
  mean = lambda x: betas[t] * np.sqrt(abar_prev[t]) / (1 - abar[t]) * x + (
      1 - abar_prev[t]) * np.sqrt(alphas[t]) / (1 - abar[t]) * x_t
  model_var = (post_var if variance == "beta_tilde" else betas)[t] if t > 0 else post_var[1]
  if t == 0:
    x = x0
    hi = np.where(x > 1 - 1 / 255, 1.0, scipy.stats.norm.cdf(x + 1 / 255, mean(x0_hat), np.sqrt(model_var)))
    lo = np.where(x < -1 + 1 / 255, 0.0, scipy.stats.norm.cdf(x - 1 / 255, mean(x0_hat), np.sqrt(model_var)))
    return -np.sum(np.log(hi - lo), axis=(1, 2, 3))
  kl = 0.5 * (np.log(model_var / post_var[t]) + post_var[t] / model_var
              + (mean(x0) - mean(x0_hat)) ** 2 / model_var - 1)
  return np.sum(kl, axis=(1, 2, 3))


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
@pytest.mark.parametrize("t", [0, 1, 7, 29])
def test_vlb_terms_equal_a_float64_numpy_reference(variance, t):
  T = 30
  betas = ddpm.beta_schedule("linear", T, 1e-3, 0.1)
  schedule = ddpm.Schedule.from_betas(betas)
  rng = np.random.default_rng(2)
  x0, eps = _grid_images(rng, (2, 3, 3, 2)), rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
  eps_fn = lambda x_t, t: 0.8 * x_t + 0.01 * t  # A deliberately imperfect denoiser.
  eps_record = schedule.parameterizations["eps"]
  x0_estimate = lambda x_t, tt: eps_record.x0_eps(0.8 * x_t + 0.01 * tt[:, None, None, None], x_t, tt)[0]
  got = likelihood.vlb_term(x0_estimate, schedule, jnp.asarray(x0), jnp.full((2,), t, jnp.int32), jnp.asarray(eps),
                            variance=variance, clip_x0=False)
  expected = _numpy_vlb_term(betas, x0.astype(np.float64), t, eps.astype(np.float64), eps_fn, variance)
  assert np.all(expected > 0)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-3)


def test_bits_per_dim_divides_nats_by_dims_and_ln2():
  assert float(likelihoods.bits_per_dim(jnp.float32(3 * 64 * math.log(2)), 64)) == pytest.approx(3.0)
