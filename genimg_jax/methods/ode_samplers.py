"""Samplers of the continuous-time processes (losses/continuous.py), each one `lax.scan` over
noise levels or times fixed on the host in float64 and cast once.

edm_heun: EDM's Algorithm 2 (Karras et al. 2022): Heun's 2nd-order method on the probability-flow
  ODE dx/dsigma = (x - D(x; sigma)) / sigma, optionally with stochastic churn; the last step, to
  sigma = 0, is an Euler step, so N steps cost 2N - 1 denoiser calls (18 steps: 35).
flow_ode: Euler or Heun on dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data).
flow_sde: Euler-Maruyama on an SDE with the flow's marginals, from the same velocity network.
"""

import jax
import jax.numpy as jnp
import numpy as np

from genimg_jax.losses import continuous
from genimg_jax.registry import Registry


def _every_image(level, x: jax.Array) -> jax.Array:
  """The noise level or time `level` (a scalar) for each image of x: [B] float32."""
  return jnp.full((x.shape[0],), level, jnp.float32)


def edm_heun_nfe(num_steps: int) -> int:
  """Denoiser calls of `edm_heun` over num_steps steps: 2N - 1."""
  return 2 * num_steps - 1


def edm_heun(denoise, sigmas: np.ndarray, rng: jax.Array, shape, *, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0) -> jax.Array:
  """x_0 [shape] float32 from x_N ~ N(0, sigmas[0]^2 I), through the levels `sigmas` (float64 [N + 1],
  decreasing, last 0: losses.continuous.edm_sigma_steps). denoise(x [B, ...], sigma [B]) -> D(x; sigma).

  Churn (Algorithm 2): at levels in [s_tmin, s_tmax], gamma = min(s_churn / N, sqrt(2) - 1) raises
  sigma to sigma (1 + gamma) with fresh noise of scale s_noise (normal(fold_in(rng, i + 1)) at step i).
  """
  sigmas = np.asarray(sigmas, np.float64)
  num_steps = len(sigmas) - 1
  if num_steps < 1 or sigmas[-1] != 0.0 or np.any(np.diff(sigmas) >= 0):
    raise ValueError("sigmas must decrease to a final 0, with at least one step")
  gamma = np.where((sigmas[:-1] >= s_tmin) & (sigmas[:-1] <= s_tmax), min(s_churn / num_steps, np.sqrt(2) - 1), 0.0)
  sigma_hat = sigmas[:-1] * (1.0 + gamma)
  noise_scale = s_noise * np.sqrt(np.maximum(sigma_hat**2 - sigmas[:-1] ** 2, 0.0))
  drift = continuous.edm_ode_drift(denoise)

  def churn_and_euler(x, i, s_hat, scale, s_next):
    x_hat = x + scale * jax.random.normal(jax.random.fold_in(rng, i + 1), shape, jnp.float32)
    d = drift(x_hat, _every_image(s_hat, x))
    return x_hat, d, x_hat + (s_next - s_hat) * d

  def heun_step(x, step):
    i, s_hat, scale, s_next = step
    x_hat, d, x_next = churn_and_euler(x, i, s_hat, scale, s_next)
    d_next = drift(x_next, _every_image(s_next, x))
    return x_hat + (s_next - s_hat) * 0.5 * (d + d_next), None

  cast = lambda a: jnp.asarray(a, jnp.float32)
  x = sigmas[0] * jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
  steps = (jnp.arange(num_steps - 1), cast(sigma_hat[:-1]), cast(noise_scale[:-1]), cast(sigmas[1:-1]))
  x, _ = jax.lax.scan(heun_step, x, steps)
  return churn_and_euler(x, num_steps - 1, sigma_hat[-1], noise_scale[-1], 0.0)[2]


def flow_times(num_steps: int) -> np.ndarray:
  """Times float64 [num_steps + 1], evenly from 1 (noise) down to 0 (data)."""
  if num_steps < 1:
    raise ValueError(f"the flow sampler needs at least one step, got {num_steps}")
  return np.linspace(1.0, 0.0, num_steps + 1)


def flow_ode_nfe(num_steps: int, method: str) -> int:
  """Velocity calls of a flow sampler over N steps: N (euler, euler_maruyama) or 2N (heun)."""
  return num_steps * {"euler": 1, "euler_maruyama": 1, "heun": 2}[method]


def flow_ode(velocity, times: np.ndarray, x1: jax.Array, method: str = "euler") -> jax.Array:
  """Integrates dx/dt = velocity(x [B, ...], t [B]) from x1 at times[0] to times[-1] (float64 [N + 1],
  e.g. `flow_times`) with Euler or Heun steps; returns x at times[-1], like x1."""
  if method not in ("euler", "heun"):
    raise ValueError(f"unknown flow ODE method {method!r}; choose euler or heun")

  def step(x, ts):
    t, t_next = ts
    v = velocity(x, _every_image(t, x))
    x_next = x + (t_next - t) * v
    if method == "heun":
      x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, _every_image(t_next, x)))
    return x_next, None

  times = jnp.asarray(times, jnp.float32)
  x, _ = jax.lax.scan(step, x1, (times[:-1], times[1:]))
  return x


def flow_sde(velocity, times: np.ndarray, x1: jax.Array, rng: jax.Array, noise_scale: float = 1.0) -> jax.Array:
  """Euler-Maruyama from x1 at times[0] = 1 to times[-1] = 0 (float64 [N + 1], decreasing, e.g.
  `flow_times`) on the reverse-time SDE dx = [v + a eps_hat(x, t)] dt + sqrt(2 a t) dW, a = noise_scale,
  with velocity(x [B, ...], t [B]) -> v. Returns x at time 0, like x1.

  For x_t = (1 - t) x0 + t eps the score is -eps_hat / t with eps_hat = x + (1 - t) v, so for every
  a >= 0 this SDE has the ODE's marginals (diffusion coefficient g^2 = 2 a t, SiT's "sigma" form);
  a = 0 is Euler on the ODE. The drift stays finite at t = 1, unlike g^2 proportional to t / (1 - t).
  The noise at step i is normal(fold_in(rng, i + 1)); the last step adds none (its mean).
  """
  num_steps = len(times) - 1

  def step(x, inputs):
    i, t, t_next = inputs
    v = velocity(x, _every_image(t, x))
    h = t - t_next
    eps_hat = x + (1.0 - t) * v
    noise = jax.random.normal(jax.random.fold_in(rng, i + 1), x.shape, x.dtype)
    scale = jnp.where(i < num_steps - 1, jnp.sqrt(2.0 * noise_scale * t * h), 0.0)
    return x - h * (v + noise_scale * eps_hat) + scale * noise, None

  times = jnp.asarray(times, jnp.float32)
  x, _ = jax.lax.scan(step, x1, (jnp.arange(num_steps), times[:-1], times[1:]))
  return x


# name -> sampler(denoise, rng, shape, options, process) -> x_0, with denoise(x, sigma [B]) -> D(x; sigma),
# options the config's `sample` section and process its `diffusion` section (sigma_min, sigma_max, rho).
EDM_SAMPLERS = Registry("sample.sampler", "EDM sampler")
# name -> sampler(velocity, rng, shape, options) -> x_0, with velocity(x, t [B]) -> dx/dt.
FLOW_SAMPLERS = Registry("sample.sampler", "flow sampler")


@EDM_SAMPLERS.register("heun")
def edm_heun_sampler(denoise, rng, shape, options, process) -> jax.Array:
  """`edm_heun` over options.steps levels of edm_sigma_steps, with the churn settings s_churn,
  s_tmin, s_tmax, s_noise."""
  sigmas = continuous.edm_sigma_steps(options.steps, process.sigma_min, process.sigma_max, process.rho)
  return edm_heun(denoise, sigmas, rng, shape, s_churn=options.s_churn, s_tmin=options.s_tmin,
                  s_tmax=options.s_tmax, s_noise=options.s_noise)


def _prior(rng, shape) -> jax.Array:
  """x_1 ~ N(0, I) [shape] float32, from normal(fold_in(rng, 0))."""
  return jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)


@FLOW_SAMPLERS.register("euler")
def flow_euler_sampler(velocity, rng, shape, options) -> jax.Array:
  """`flow_ode` with Euler steps over options.steps evenly spaced times, from x_1 ~ N(0, I)."""
  return flow_ode(velocity, flow_times(options.steps), _prior(rng, shape), "euler")


@FLOW_SAMPLERS.register("heun")
def flow_heun_sampler(velocity, rng, shape, options) -> jax.Array:
  """`flow_ode` with Heun steps over options.steps evenly spaced times, from x_1 ~ N(0, I)."""
  return flow_ode(velocity, flow_times(options.steps), _prior(rng, shape), "heun")


@FLOW_SAMPLERS.register("euler_maruyama")
def flow_euler_maruyama_sampler(velocity, rng, shape, options) -> jax.Array:
  """`flow_sde` over options.steps evenly spaced times with noise_scale options.sde_noise, from x_1 ~ N(0, I)."""
  return flow_sde(velocity, flow_times(options.steps), _prior(rng, shape), rng, options.sde_noise)
