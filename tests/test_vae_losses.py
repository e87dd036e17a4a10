"""VAE likelihoods and ELBO terms against closed forms, SciPy, finite differences and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genimg_jax.losses import elbo, gaussian
from genimg_jax.losses import likelihoods as lk

ALL_VALUES = np.arange(256) / 127.5 - 1.0  # every 8-bit pixel value as the library's float


def _params(name: str, channels: int, shape, seed: int, dtype=jnp.float64):
  """Random decoder outputs for `name`, moderate in size so no bin is vanishingly small."""
  likelihood = lk.make(name, channels, num_mixtures=3)
  return likelihood, jax.random.normal(jax.random.PRNGKey(seed), shape + (likelihood.num_params,), dtype)


# ---- KL and the reparameterization trick. ---------------------------------------------------


def test_analytic_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mean, log_var = rng.normal(size=3), rng.normal(size=3) * 0.5
  prior_mean, prior_log_var = rng.normal(size=3), rng.normal(size=3) * 0.5
  with jax.enable_x64():
    z = mean + np.exp(0.5 * log_var) * rng.standard_normal((400_000, 3))
    mc = gaussian.log_prob(z, mean, log_var) - gaussian.log_prob(z, prior_mean, prior_log_var)
    analytic = gaussian.kl(mean, log_var, prior_mean, prior_log_var)
    standard_error = np.std(mc, axis=0) / math.sqrt(len(z))
    np.testing.assert_array_less(np.abs(np.mean(mc, axis=0) - analytic), 4 * standard_error)
    # The standard normal prior is the default; log N(z; 0, 1) against SciPy.
    np.testing.assert_allclose(gaussian.kl(mean, log_var), gaussian.kl(mean, log_var, 0.0, 0.0))
    np.testing.assert_allclose(gaussian.log_prob(z[:5]), stats.norm.logpdf(z[:5]), rtol=1e-12)
  assert np.all(np.asarray(analytic) > 0)


def test_kl_of_identical_distributions_is_zero():
  mean = jnp.array([-2.0, 0.0, 0.3, 5.0])
  log_var = jnp.array([-3.0, 0.0, 1.2, 2.0])
  np.testing.assert_allclose(gaussian.kl(mean, log_var, mean, log_var), 0.0, atol=1e-6)
  np.testing.assert_array_equal(gaussian.kl(jnp.zeros(3), jnp.zeros(3)), 0.0)


def test_reparameterized_gradient_of_a_quadratic_matches_the_analytic_gradient():
  """f(z) = sum a (z - c)^2: E f = sum a ((m - c)^2 + s^2), so dE/dm = 2a(m - c), dE/dlog_var = a s^2."""
  a, c = jnp.array([1.5, 0.5]), jnp.array([0.3, -1.0])
  mean, log_var = jnp.array([1.0, 0.2]), jnp.array([-0.5, 0.4])
  noise = jax.random.normal(jax.random.PRNGKey(0), (200_000, 2))
  f = lambda m, lv, eps: jnp.sum(a * jnp.square(elbo.reparameterize(m, lv, eps) - c))
  per_draw = jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(None, None, 0))(mean, log_var, noise)
  for grad, analytic in zip(per_draw, (2 * a * (mean - c), a * jnp.exp(log_var))):
    grad = np.asarray(grad)
    standard_error = grad.std(0) / math.sqrt(len(noise))
    np.testing.assert_array_less(np.abs(grad.mean(0) - analytic), 4 * standard_error)
    assert np.all(standard_error < 0.01 * np.abs(analytic))  # a test that can tell a wrong gradient


def test_kl_weight_and_free_bits():
  assert float(elbo.kl_weight(jnp.int32(50), 0.5, 200)) == pytest.approx(0.125)
  assert float(elbo.kl_weight(jnp.int32(500), 0.5, 200)) == pytest.approx(0.5)
  assert float(elbo.kl_weight(jnp.int32(0), 2.0, 0)) == 2.0
  kl = jnp.array([[0.1, 2.0, 0.0], [0.3, 4.0, 0.0]])  # batch means 0.2, 3.0, 0.0
  assert float(elbo.free_bits_kl(kl, 0.0)) == pytest.approx(3.2)
  assert float(elbo.free_bits_kl(kl, 0.5)) == pytest.approx(0.5 + 3.0 + 0.5)
  grad = jax.grad(lambda k: elbo.free_bits_kl(k, 0.5))(kl)
  np.testing.assert_allclose(grad, [[0, 0.5, 0], [0, 0.5, 0]])  # no push below the free bits


# ---- Likelihoods over 8-bit pixels. --------------------------------------------------------


@pytest.mark.parametrize("name", lk.LIKELIHOODS)
def test_likelihood_sums_to_one_over_the_256_values_of_a_pixel(name):
  with jax.enable_x64():
    likelihood, params = _params(name, 1, (5,), seed=1)
    x = jnp.asarray(ALL_VALUES).reshape(1, 256, 1)
    log_p = likelihood.log_prob(jnp.broadcast_to(params[:, None], (5, 256, params.shape[-1])),
                                jnp.broadcast_to(x, (5, 256, 1)))  # [5 pixels, 256 values]
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(log_p, axis=1)), 1.0, rtol=1e-10)
    if name == "bernoulli":  # Mass only on 0 and 255.
      assert np.all(np.isneginf(np.asarray(log_p[:, 1:255])))


def test_coupled_mixture_sums_to_one_over_all_values_of_a_two_channel_pixel():
  with jax.enable_x64():
    likelihood, params = _params("logistic_mixture", 2, (), seed=2)
    grid = jnp.stack(jnp.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij"), -1).reshape(-1, 2)  # 65536 pixels
    log_p = likelihood.log_prob(jnp.broadcast_to(params, (grid.shape[0], params.shape[-1])), grid)
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(log_p)), 1.0, rtol=1e-10)


def test_discretized_logistic_matches_scipy():
  """Bin probabilities from SciPy's logistic CDF, edge bins taking the tails."""
  mean, log_scale = 0.137, -2.3
  with jax.enable_x64():
    got = lk.discretized_logistic_log_prob(jnp.asarray(ALL_VALUES), mean, log_scale)
  cdf = stats.logistic(loc=mean, scale=math.exp(log_scale)).cdf
  edges = np.concatenate([[-np.inf], ALL_VALUES[:-1] + 1 / 255, [np.inf]])
  np.testing.assert_allclose(np.exp(got), np.diff(cdf(edges)), rtol=1e-9, atol=1e-300)
  # Far in a tail in float32 the exact difference-of-sigmoids form stays finite and accurate.
  tail = lk.discretized_logistic_log_prob(jnp.float32(0.9), jnp.float32(-0.9), jnp.float32(-4.0))
  reference = stats.logistic(loc=-0.9, scale=math.exp(-4.0))
  expected = np.log(reference.sf(0.9 - 1 / 255) - reference.sf(0.9 + 1 / 255))
  np.testing.assert_allclose(float(tail), expected, rtol=1e-5)


def test_mixture_with_one_component_is_the_discretized_logistic():
  with jax.enable_x64():
    params = jnp.array([0.7, -0.2, -1.5])  # logit, mean, log-scale
    x = jnp.asarray(ALL_VALUES)[:, None]
    mixture = lk.logistic_mixture_log_prob(jnp.broadcast_to(params, (256, 3)), x, num_mixtures=1)
    np.testing.assert_allclose(mixture, lk.discretized_logistic_log_prob(x[:, 0], -0.2, -1.5), rtol=1e-12)


@pytest.mark.parametrize("name,channels", [(n, 1) for n in lk.LIKELIHOODS] + [("logistic_mixture", 3)])
def test_log_prob_gradient_matches_finite_differences(name, channels):
  with jax.enable_x64():
    likelihood, params = _params(name, channels, (4,), seed=3)
    values = jnp.array([0, 1, 128, 255]) / 127.5 - 1.0  # edges and interior
    x = jnp.broadcast_to(values[:, None], (4, channels))
    if name == "bernoulli":
      x = jnp.where(x > 0, 1.0, -1.0)
    f = lambda p: jnp.sum(likelihood.log_prob(p, x))
    direction = jax.random.normal(jax.random.PRNGKey(4), params.shape, jnp.float64)
    h = 1e-6
    finite_difference = (f(params + h * direction) - f(params - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(jax.grad(f)(params), direction), finite_difference, rtol=1e-6)


def test_uniform_categorical_is_exactly_8_bits_per_dim():
  likelihood = lk.make("categorical", 3)
  x = lk.quantize(jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 3), minval=-1, maxval=1))
  nll = -likelihood.log_prob(jnp.zeros((2, 4, 4, likelihood.num_params)), x).sum((1, 2))
  np.testing.assert_allclose(lk.bits_per_dim(nll, 4 * 4 * 3), 8.0, rtol=1e-6)


def test_pixel_values_and_quantize_match_the_uint8_convention():
  from genimg_jax.images import uint8_to_float

  k = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(lk.pixel_values(uint8_to_float(k)), k)
  np.testing.assert_array_equal(jax.jit(lk.quantize)(jnp.asarray(uint8_to_float(k)) + 0.003), uint8_to_float(k))
  np.testing.assert_array_equal(lk.quantize(jnp.array([-5.0, 5.0])), [-1.0, 1.0])


@pytest.mark.parametrize("name,channels", [(n, 1) for n in lk.LIKELIHOODS] + [("logistic_mixture", 2)])
def test_samples_follow_the_distribution_and_means_are_exact(name, channels):
  """200k draws of one pixel: histogram vs the probabilities (total variation), and the mean.

  Two channels are compared on a 16 x 16 grid of value ranges (the joint, coupling included).
  """
  likelihood, params = _params(name, channels, (), seed=5, dtype=jnp.float32)
  params = params * 0.5
  draws = jax.jit(likelihood.sample)(jnp.broadcast_to(params, (200_000, params.shape[-1])), jax.random.PRNGKey(6))
  np.testing.assert_array_equal(lk.PIXEL_FLOATS[np.asarray(lk.pixel_values(draws))], draws)  # on the 8-bit grid
  if channels == 1:
    grid = jnp.asarray(ALL_VALUES, jnp.float32)[:, None]
  else:
    grid = jnp.stack(jnp.meshgrid(ALL_VALUES, ALL_VALUES, indexing="ij"), -1).reshape(-1, 2).astype(jnp.float32)
  log_p = jax.jit(likelihood.log_prob)(jnp.broadcast_to(params, (grid.shape[0], params.shape[-1])), grid)
  probs = np.exp(np.asarray(log_p, np.float64))
  k = np.asarray(lk.pixel_values(draws))
  if channels == 1:
    codes = k[:, 0]
  else:
    codes = (k[:, 0] // 16) * 16 + k[:, 1] // 16
    probs = probs.reshape(16, 16, 16, 16).sum((1, 3)).reshape(-1)
  empirical = np.bincount(codes, minlength=len(probs)) / len(codes)
  assert 0.5 * np.abs(empirical - probs).sum() < 0.02
  mean = np.asarray(likelihood.mean(params))
  assert mean.shape == (channels,) and np.all(np.abs(mean) <= 1.0)
  if name in ("bernoulli", "categorical"):  # Their mean is the exact mean over the bins.
    np.testing.assert_allclose(mean, [np.sum(probs * ALL_VALUES)], rtol=1e-5)


def test_mixture_mean_is_the_continuous_mean_with_coupling():
  """Two channels, one component: E[x_1] = mu_1 + c * mu_0 (mean of the logistic before binning)."""
  likelihood = lk.make("logistic_mixture", 2, num_mixtures=1)
  params = jnp.array([0.0, 0.2, -0.1, -2.0, -2.0, 0.3])  # logit, means (2), log-scales (2), raw coupling
  np.testing.assert_allclose(likelihood.mean(params), [0.2, -0.1 + math.tanh(0.3) * 0.2], rtol=1e-6)


# ---- The importance-weighted bound. ---------------------------------------------------------


def _linear_gaussian():
  """p(z) = N(0, 1), p(x|z) = N(x; w z + b, s^2) per dimension: log p(x) is closed-form."""
  w, b, s = 1.3, -0.2, 0.6
  x = jnp.array([[0.5], [-1.1], [2.0]])

  def log_likelihood_fn(z):  # z [n * 3, 1] sample-major
    repeated = jnp.tile(x, (z.shape[0] // x.shape[0], 1))
    return gaussian.log_prob(repeated, w * z + b, 2 * math.log(s)).sum(-1)

  exact = stats.norm(b, math.sqrt(w * w + s * s)).logpdf(np.asarray(x)).sum(-1)
  # A deliberately imperfect posterior: mean off by about 0.23, variance 1.5 times too wide
  # (wider than the true posterior, so the importance weights have a finite variance).
  mean = x * w / (w * w + s * s) - 0.1
  log_var = jnp.full_like(x, math.log(1.5 * s * s / (w * w + s * s)))
  return log_likelihood_fn, mean, log_var, exact


def test_iwae_with_one_sample_is_the_single_sample_elbo_on_the_same_noise():
  log_likelihood_fn, mean, log_var, _ = _linear_gaussian()
  rng = jax.random.PRNGKey(0)
  bound = elbo.importance_weighted_bound(log_likelihood_fn, mean, log_var, rng, num_samples=1, chunk_size=1)
  noise = elbo.importance_noise(rng, jnp.array([0]), mean.shape)[0]
  mc_elbo, _, _ = elbo.single_sample_elbo(log_likelihood_fn, mean, log_var, noise, analytic_kl=False)
  np.testing.assert_allclose(bound, mc_elbo, rtol=1e-6)
  analytic_elbo, _, _ = elbo.single_sample_elbo(log_likelihood_fn, mean, log_var, noise)
  assert not np.allclose(bound, analytic_elbo, rtol=1e-3)  # same reconstruction, another KL estimate


def test_iwae_rises_with_k_towards_log_p_x_and_does_not_depend_on_chunking():
  log_likelihood_fn, mean, log_var, exact = _linear_gaussian()
  keys = jax.random.split(jax.random.PRNGKey(1), 256)

  def mean_bound(k, chunk):  # averaged over 256 keys: the expectation, up to small noise
    bound = lambda key: elbo.importance_weighted_bound(log_likelihood_fn, mean, log_var, key, k, chunk)
    return np.asarray(jax.jit(jax.vmap(bound))(keys).mean(0))

  bounds = [mean_bound(k, min(k, 100)) for k in (1, 10, 1000)]
  totals = [b.sum() for b in bounds]  # bounds on log p(all three x)
  assert totals[0] < exact.sum() - 0.3  # the posterior is off, so the ELBO has a real gap
  assert np.all(np.diff(totals) > 0)
  np.testing.assert_allclose(bounds[-1], exact, atol=0.01)
  chunked = elbo.importance_weighted_bound(log_likelihood_fn, mean, log_var, keys[0], 100, 25)
  whole = elbo.importance_weighted_bound(log_likelihood_fn, mean, log_var, keys[0], 100, 100)
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
  with pytest.raises(ValueError, match="not a multiple"):
    elbo.importance_weighted_bound(log_likelihood_fn, mean, log_var, keys[0], 10, 3)
