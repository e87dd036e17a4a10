"""EDM and flow matching (diffusion/edm.py, diffusion/flow.py) against closed forms:
the paper's coefficients in float64 NumPy, Heun on Gaussian data with its exact denoiser, and the
flow ODE with the exact velocity of a Gaussian mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from genimg_jax.diffusion import edm, flow


def test_edm_preconditioning_and_weight_are_table_1_of_the_paper():
  sigma = np.geomspace(0.002, 80.0, 25)
  sd = 0.5
  c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in edm.preconditioning(jnp.asarray(sigma)))
  np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sd**2 + sigma**2), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6, atol=1e-7)
  # The weight makes the effective weight of the network's error one at every sigma (eq. 8).
  np.testing.assert_allclose(np.asarray(edm.loss_weight(jnp.asarray(sigma))) * c_out**2, 1.0, rtol=1e-5)


def test_edm_sigma_steps_are_eq_5():
  sigmas = edm.sigma_steps(18)
  assert sigmas.dtype == np.float64 and sigmas.shape == (19,) and sigmas[-1] == 0.0
  assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002) and np.all(np.diff(sigmas) < 0)
  i = 7
  want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  assert sigmas[i] == pytest.approx(want, rel=1e-12)


def test_training_noise_is_log_normal():
  sigmas = np.asarray(edm.training_sigmas(jax.random.PRNGKey(0), 20000))
  assert np.mean(np.log(sigmas)) == pytest.approx(-1.2, abs=0.03)
  assert np.std(np.log(sigmas)) == pytest.approx(1.2, rel=0.03)
  t = np.asarray(flow.training_times(jax.random.PRNGKey(1), 20000, "logit_normal"))
  assert np.all((t > 0) & (t < 1)) and np.std(special.logit(t)) == pytest.approx(1.0, rel=0.03)


def test_preconditioned_denoiser_returns_x0_for_the_exact_network_target():
  """F's target is (x0 - c_skip x) / c_out; fed it, D(x; sigma) must give back x0."""
  rng = np.random.default_rng(0)
  x0, n = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  sigma = np.array([0.01, 0.5, 3.0, 70.0])
  x = x0 + sigma[:, None] * n
  c_skip, c_out, c_in, _ = edm.preconditioning(jnp.asarray(sigma))
  target = (x0 - np.asarray(c_skip)[:, None] * x) / np.asarray(c_out)[:, None]
  seen = {}

  def network(scaled_x, c_noise):
    seen["input"] = scaled_x
    return jnp.asarray(target, jnp.float32)

  got = edm.denoiser(network)(jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32))
  np.testing.assert_allclose(got, x0, atol=1e-4)
  np.testing.assert_allclose(seen["input"], np.asarray(c_in)[:, None] * x, rtol=1e-5)


def _gaussian_denoiser(s, calls=None):
  """The exact denoiser of data N(0, diag(s^2)): D(x; sigma) = s^2 x / (s^2 + sigma^2)."""
  def denoise(x, sigma):
    if calls is not None:
      calls.append(1)
    return s**2 * x / (s**2 + sigma[:, None] ** 2)

  return denoise


def test_heun_is_the_float64_recursion_of_algorithm_2():
  """18 steps on the Gaussian's ODE dx/dsigma = x sigma / (s^2 + sigma^2), against NumPy in float64."""
  s, sigmas, rng = 0.5, edm.sigma_steps(18), jax.random.PRNGKey(3)
  got = edm.heun(_gaussian_denoiser(jnp.array([s])), sigmas, rng, (3, 1))
  x = sigmas[0] * np.asarray(jax.random.normal(jax.random.fold_in(rng, 0), (3, 1)), np.float64)
  for a, b in zip(sigmas[:-1], sigmas[1:]):
    d = x * a / (s**2 + a**2)
    x_next = x + (b - a) * d
    x = x + (b - a) * 0.5 * (d + x_next * b / (s**2 + b**2)) if b > 0 else x_next
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-5)
  calls = []
  with jax.disable_jit():  # The scan runs step by step: count the denoiser calls.
    edm.heun(_gaussian_denoiser(jnp.array([s]), calls), edm.sigma_steps(5), rng, (4, 1))
  assert len(calls) == edm.heun_nfe(5) == 9


@pytest.mark.parametrize("s_churn,steps", [(0.0, 64), (40.0, 256)])
def test_heun_on_gaussian_data_reproduces_its_mean_and_variance(s_churn, steps):
  """The ODE (or the churned SDE) carries N(0, s^2 + sigma_max^2) to the data N(0, diag(s^2)). (At 18
  steps, Heun's discretisation leaves the standard deviation 5.5% high for s = 0.5; see the test above.)"""
  s = jnp.array([0.5, 1.5])
  sigmas = edm.sigma_steps(steps)
  x = jax.jit(lambda rng: edm.heun(_gaussian_denoiser(s), sigmas, rng, (40000, 2),
                                       s_churn=s_churn))(jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.mean(x, axis=0), 0.0, atol=0.03)
  np.testing.assert_allclose(np.std(x, axis=0), [0.5, 1.5], rtol=0.015)


def _mixture_velocity(weights, means, stds):
  """The exact flow-matching velocity E[eps - x0 | x_t = x] for 1-d data sum_k w_k N(m_k, s_k^2)."""
  w, m, s = (jnp.asarray(a) for a in (weights, means, stds))

  def velocity(x, t):
    x, t = x[:, :1], t[:, None]
    var = (1 - t) ** 2 * s**2 + t**2  # x_t | k ~ N((1 - t) m_k, var_k)
    log_p = jnp.log(w) - 0.5 * jnp.log(var) - 0.5 * (x - (1 - t) * m) ** 2 / var
    post = jax.nn.softmax(log_p, axis=-1)
    residual = x - (1 - t) * m
    x0 = m + (1 - t) * s**2 / var * residual
    eps = t / var * residual
    return jnp.sum(post * (eps - x0), axis=-1, keepdims=True)

  return velocity


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun", 50)])
def test_flow_ode_with_the_exact_velocity_transports_noise_to_a_gaussian_mixture(method, steps):
  velocity = _mixture_velocity([0.3, 0.7], [-1.0, 1.0], [0.1, 0.2])
  x1 = jax.random.normal(jax.random.PRNGKey(0), (20000, 1))
  step = {"euler": flow.euler_step, "heun": flow.heun_step}[method]
  x = np.asarray(jax.jit(lambda x1: flow.ode(velocity, flow.times(steps), x1, step))(x1))
  left, right = x[x[:, 0] < 0, 0], x[x[:, 0] >= 0, 0]
  assert len(left) / len(x) == pytest.approx(0.3, abs=0.015)
  assert np.mean(left) == pytest.approx(-1.0, abs=0.01) and np.std(left) == pytest.approx(0.1, rel=0.05)
  assert np.mean(right) == pytest.approx(1.0, abs=0.01) and np.std(right) == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("noise_scale", [0.5, 2.0])
def test_flow_sde_with_the_exact_velocity_has_the_ode_marginals(noise_scale):
  """Euler-Maruyama on dx = [v + a eps_hat] dt + sqrt(2 a t) dW reaches the same mixture for any a;
  with a = 0 it is the Euler ODE step for step."""
  velocity = _mixture_velocity([0.3, 0.7], [-1.0, 1.0], [0.1, 0.2])
  x1, rng = jax.random.normal(jax.random.PRNGKey(0), (20000, 1)), jax.random.PRNGKey(1)
  sde = jax.jit(lambda x1, a: flow.sde(velocity, flow.times(400), x1, rng, a))
  x = np.asarray(sde(x1, noise_scale))
  left, right = x[x[:, 0] < 0, 0], x[x[:, 0] >= 0, 0]
  assert len(left) / len(x) == pytest.approx(0.3, abs=0.015)
  assert np.mean(left) == pytest.approx(-1.0, abs=0.01) and np.std(left) == pytest.approx(0.1, rel=0.06)
  assert np.mean(right) == pytest.approx(1.0, abs=0.01) and np.std(right) == pytest.approx(0.2, rel=0.06)
  ode = flow.ode(velocity, flow.times(400), x1[:64], flow.euler_step)
  np.testing.assert_allclose(sde(x1[:64], 0.0), ode, atol=1e-5)


def _batch():
  return {"image": jax.random.uniform(jax.random.PRNGKey(5), (6, 4, 4, 2), minval=-1, maxval=1)}


def test_edm_loss_is_zero_for_the_exact_network_and_weights_the_error_by_lambda():
  """With F = the exact target (x0 - c_skip x) / c_out the loss is 0; with F = 0 it is the mean of
  lambda ||(c_skip - 1) x0 + c_skip sigma n||^2, recomputed here from the same draws."""
  batch, rng = _batch(), jax.random.PRNGKey(7)
  x0 = batch["image"]
  sigma_rng, noise_rng, _ = jax.random.split(rng, 3)
  sigma = edm.training_sigmas(sigma_rng, 6)
  n = jax.random.normal(noise_rng, x0.shape)
  exact = lambda p, x_in, c_noise, r, labels: (x0 - edm.preconditioning(sigma)[0][:, None, None, None] * (
      x0 + sigma[:, None, None, None] * n)) / edm.preconditioning(sigma)[1][:, None, None, None]
  loss, _ = edm.edm_loss(None, batch, rng, ctx=edm.EDMContext(exact))
  assert float(loss) == pytest.approx(0.0, abs=1e-9)
  zero = lambda p, x_in, c_noise, r, labels: jnp.zeros_like(x_in)
  loss, _ = edm.edm_loss(None, batch, rng, ctx=edm.EDMContext(zero))
  s64, n64, x64 = (np.asarray(a, np.float64) for a in (sigma, n, x0))
  c_skip = 0.25 / (s64**2 + 0.25)
  err = (c_skip[:, None, None, None] - 1) * x64 + (c_skip * s64)[:, None, None, None] * n64
  want = np.mean((s64**2 + 0.25) / (s64 * 0.5) ** 2 * np.mean(err**2, axis=(1, 2, 3)))
  assert float(loss) == pytest.approx(want, rel=1e-4)


def test_flow_loss_is_zero_for_the_true_velocity_and_has_the_finite_difference_gradient():
  batch, rng = _batch(), jax.random.PRNGKey(8)
  x0 = batch["image"]
  t_rng, noise_rng, _ = jax.random.split(rng, 3)
  eps = jax.random.normal(noise_rng, x0.shape)
  true = lambda p, x_t, t, r, labels: eps - x0
  assert float(flow.flow_loss(None, batch, rng, ctx=flow.FlowContext(true))[0]) == pytest.approx(0, abs=1e-12)
  linear = flow.FlowContext(lambda p, x_t, t, r, labels: p["w"] * x_t + p["b"] * t[:, None, None, None])
  f = lambda w, b: flow.flow_loss({"w": w, "b": b}, batch, rng, ctx=linear)[0]
  grad = jax.grad(f, argnums=(0, 1))(jnp.float32(0.3), jnp.float32(-0.2))
  h = 1e-3
  for i, g in enumerate(grad):
    args_plus, args_minus = [0.3, -0.2], [0.3, -0.2]
    args_plus[i] += h
    args_minus[i] -= h
    numeric = (float(f(*map(jnp.float32, args_plus))) - float(f(*map(jnp.float32, args_minus)))) / (2 * h)
    assert float(g) == pytest.approx(numeric, rel=2e-3)


def test_sampler_arguments_out_of_range_are_refused():
  with pytest.raises(ValueError, match="at least one step"):
    edm.sigma_steps(0)
  with pytest.raises(ValueError, match="decrease to a final 0"):
    edm.heun(lambda x, s: x, np.array([1.0, 2.0, 0.0]), jax.random.PRNGKey(0), (1, 1))
  with pytest.raises(ValueError, match="at least one step"):
    flow.times(0)
  with pytest.raises(ValueError, match="unknown flow time schedule"):
    flow.training_times(jax.random.PRNGKey(0), 2, "cosine")
