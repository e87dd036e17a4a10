"""The forward process, schedules, parameterizations and the simple loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.diffusion import ddpm


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_closed_form_q_matches_iterated_noising(name):
  """x_t from q(x_t|x_0) in closed form == x_0 noised one step at a time (float64 reference)."""
  T = 1000
  betas = ddpm.beta_schedule(name, T)
  schedule = ddpm.Schedule.from_betas(betas)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, size=(4, 3))
  # Iterate x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) e_t, tracking the total
  # noise coefficient; the combined noise is Gaussian with variance sum c_s^2.
  x, coef_x0, noise_var = x0.copy(), 1.0, 0.0
  for t in range(T):
    coef_x0 *= np.sqrt(1 - betas[t])
    noise_var = (1 - betas[t]) * noise_var + betas[t]
    x = np.sqrt(1 - betas[t]) * x + np.sqrt(betas[t]) * rng.standard_normal(x.shape)
    if t in (0, 1, 10, 250, 500, 999):
      abar = float(schedule.alphas_cumprod[t])
      np.testing.assert_allclose(np.sqrt(abar), coef_x0, rtol=2e-5, atol=1e-7)
      np.testing.assert_allclose(1 - abar, noise_var, rtol=2e-5, atol=1e-7)
      # With the iterated noise folded into one N(0, I) draw, q_sample gives the same x_t.
      folded = (x - coef_x0 * x0) / np.sqrt(noise_var)
      got = schedule.q_sample(jnp.asarray(x0, jnp.float32), jnp.full((4,), t), jnp.asarray(folded, jnp.float32))
      np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-5)


def test_q_sample_moments_monte_carlo():
  """Many per-step noising chains reach the closed-form mean and variance."""
  T = 200
  betas = ddpm.beta_schedule("linear", T, 1e-3, 0.05)
  abar = np.cumprod(1 - betas)
  rng = np.random.default_rng(1)
  x = np.full(200_000, 0.7)
  for t in range(T):
    x = np.sqrt(1 - betas[t]) * x + np.sqrt(betas[t]) * rng.standard_normal(x.shape)
  np.testing.assert_allclose(x.mean(), np.sqrt(abar[-1]) * 0.7, atol=5e-3)
  np.testing.assert_allclose(x.var(), 1 - abar[-1], rtol=1e-2)


def test_schedules():
  lin = ddpm.beta_schedule("linear", 1000)
  assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
  cos = ddpm.beta_schedule("cosine", 1000)
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(np.cumprod(1 - cos)[:900], f(np.arange(1, 901)) / f(0), rtol=1e-9)
  assert cos.max() <= 0.999
  s = ddpm.Schedule.from_betas(lin)
  chex.assert_trees_all_close(s.posterior_variance[1:],
                              jnp.asarray(lin[1:] * (1 - np.cumprod(1 - lin)[:-1]) / (1 - np.cumprod(1 - lin)[1:]),
                                          jnp.float32), rtol=1e-6)
  assert float(s.posterior_variance[0]) == 0.0
  with pytest.raises(ValueError, match="unknown beta schedule"):
    ddpm.beta_schedule("quadratic", 10)


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_parameterizations_invert(prediction):
  """The record's inverse applied to its exact target recovers x0 and the ddpm."""
  schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule("linear", 1000))
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0 = jax.random.uniform(k1, (6, 4, 4, 2), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jax.random.randint(k3, (6,), 0, 1000)
  x_t = schedule.q_sample(x0, t, eps)
  record = schedule.parameterizations[prediction]
  x0_hat, eps_hat = record.x0_eps(record.target(x0, eps, t), x_t, t)
  # Recovering eps from x0 at t near 0 divides by sqrt(1 - abar) ~ 1e-2: looser there.
  chex.assert_trees_all_close(x0_hat, x0, atol=2e-3)
  chex.assert_trees_all_close(eps_hat, eps, atol=5e-2)


def test_simple_loss_closed_form():
  """A denoiser that outputs zeros has loss E[target^2]; for eps that is 1."""
  schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule("linear", 1000))
  ctx = ddpm.DenoiserContext(lambda p, x, t, r, labels: jnp.zeros_like(x), schedule, "eps")
  x0 = jnp.zeros((256, 16, 16, 1))  # 65536 draws: the mean of noise^2 has std 0.0055.
  loss, metrics = ddpm.simple_loss(None, {"image": x0}, jax.random.PRNGKey(0), ctx=ctx)
  assert abs(float(loss) - 1.0) < 0.03
  assert float(metrics["loss"]) == float(loss)
  # x0-prediction of an all-zero image with a zero output is exact.
  ctx = ddpm.DenoiserContext(lambda p, x, t, r, labels: jnp.zeros_like(x), schedule, "x0")
  assert float(ddpm.simple_loss(None, {"image": x0}, jax.random.PRNGKey(0), ctx=ctx)[0]) == 0.0


def test_simple_loss_gradient_matches_finite_differences():
  schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule("linear", 100))
  ctx = ddpm.DenoiserContext(lambda p, x, t, r, labels: p["w"] * x + p["b"], schedule, "v")
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 4, 4, 1), minval=-1, maxval=1)}
  rng = jax.random.PRNGKey(2)
  f = lambda w, b: ddpm.simple_loss({"w": w, "b": b}, batch, rng, ctx=ctx)[0]
  with jax.enable_x64():
    w, b = jnp.float64(0.3), jnp.float64(-0.1)
    gw, gb = jax.grad(f, argnums=(0, 1))(w, b)
    h = 1e-6
    np.testing.assert_allclose(gw, (f(w + h, b) - f(w - h, b)) / (2 * h), rtol=1e-5)
    np.testing.assert_allclose(gb, (f(w, b + h) - f(w, b - h)) / (2 * h), rtol=1e-5)
