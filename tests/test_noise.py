"""The DDPM process (diffusion/ddpm.py): parameterisation records against their closed forms, and the
DDPM sampler against a float64 NumPy reference of ancestral sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax.diffusion import ddpm

BETAS = ddpm.beta_schedule("linear", 20, 1e-3, 0.1)
ABAR = np.cumprod(1.0 - BETAS)
A, S = np.sqrt(ABAR), np.sqrt(1.0 - ABAR)
# prediction: (target (x0, eps) coefficients, x0 from (x_t, out), eps from (x_t, out)), float64.
CLOSED_FORMS = {
    "eps": ((0 * A, 1 + 0 * A), (1 / A, -S / A), (0 * A, 1 + 0 * A)),
    "x0": ((1 + 0 * A, 0 * A), (0 * A, 1 + 0 * A), (1 / S, -A / S)),
    "v": ((-S, A), (A, -S), (S, A)),  # v = a eps - s x0 (Salimans & Ho 2022)
}


@pytest.mark.parametrize("prediction", ddpm.PREDICTIONS)
def test_parameterization_coefficients_are_the_closed_forms_cast_once(prediction):
  record = ddpm.Schedule.from_betas(BETAS).parameterizations[prediction]
  (tx0, teps), (x0_xt, x0_out), (eps_xt, eps_out) = CLOSED_FORMS[prediction]
  for got, want in [(record.target_x0, tx0), (record.target_eps, teps), (record.x0_xt, x0_xt),
                    (record.x0_out, x0_out), (record.eps_xt, eps_xt), (record.eps_out, eps_out)]:
    assert got.dtype == jnp.float32
    np.testing.assert_array_max_ulp(np.asarray(got), want.astype(np.float32), maxulp=1)


def test_schedule_and_posterior_against_float64():
  schedule = ddpm.Schedule.from_betas(BETAS)
  np.testing.assert_allclose(schedule.signal, A, rtol=1e-7)
  np.testing.assert_allclose(schedule.noise, S, rtol=1e-7)
  rng = np.random.default_rng(0)
  x0, x_t = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
  t = np.arange(20)
  abar_prev = np.concatenate([[1.0], ABAR[:-1]])
  want = (BETAS * np.sqrt(abar_prev) / (1 - ABAR))[:, None] * x0 + (
      (1 - abar_prev) * np.sqrt(1 - BETAS) / (1 - ABAR))[:, None] * x_t
  got = schedule.posterior_mean(jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variance", ddpm.REVERSE_VARIANCES)
def test_ddpm_sampler_equals_a_float64_numpy_reference(variance):
  schedule = ddpm.Schedule.from_betas(BETAS)
  shape, rng = (3, 4, 4, 1), jax.random.PRNGKey(4)
  x0_of = lambda x, t: np.tanh(1.3 * x + 0.01 * t)  # A fixed smooth denoiser; eps follows from it.

  def predict(x, t):
    x0 = jnp.tanh(1.3 * x + 0.01 * t[:, None, None, None])
    return schedule.parameterizations["x0"].x0_eps(x0, x, t)

  got = ddpm.ddpm(predict, schedule, rng, shape, variance=variance, clip_x0=True)
  x = np.asarray(ddpm.initial_noise(rng, schedule, shape), np.float64)
  abar_prev = np.concatenate([[1.0], ABAR[:-1]])
  posterior_var = BETAS * (1 - abar_prev) / (1 - ABAR)
  for t in range(19, -1, -1):
    x0 = np.clip(x0_of(x, t), -1, 1)
    mean = BETAS[t] * np.sqrt(abar_prev[t]) / (1 - ABAR[t]) * x0 + (
        (1 - abar_prev[t]) * np.sqrt(1 - BETAS[t]) / (1 - ABAR[t])) * x
    std = np.sqrt(posterior_var[t] if variance == "beta_tilde" else BETAS[t]) if t > 0 else 0.0
    x = mean + std * np.asarray(jax.random.normal(jax.random.fold_in(rng, t), shape), np.float64)
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-5)
