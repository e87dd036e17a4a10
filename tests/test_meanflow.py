"""MeanFlow (genimg_jax/diffusion/meanflow.py) against independent references: the jvp term against central
finite differences in float64; r = t everywhere is flow matching's loss on the same draws; the adaptive weight
against NumPy; for Gaussian data the closed-form average velocity (checked against a float64 RK4 solve of the
ODE) is the MeanFlow target's fixed point and a stationary point of the loss on conditional draws; the
training-time guidance against its formula; one and two jumps with the exact average velocity of a Gaussian
mixture (its flow map solved in float64 NumPy) land on the mixture; the config path with UNet and DiT trains,
compiles once and samples with the NFE it reports, counted at run time; bad fields name themselves."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from genimg_jax import methods
from genimg_jax.diffusion import flow, meanflow
from genimg_jax.errors import ConfigError
from genimg_jax.methods import diffusion as diffusion_method
from helpers import REPO, assert_states_close, tiny_config

CALLS: list[int] = []


def _smooth_network(rng, shape):
  """A small smooth u(z, r, t) on images of `shape` [B, ...] (float64 under x64): a tanh layer whose
  input and output both depend on r and t."""
  dims = int(np.prod(shape[1:]))
  w1, w2 = rng.normal(size=(dims, 8)) / np.sqrt(dims), rng.normal(size=(8, dims)) / np.sqrt(8)
  a, b = rng.normal(size=8), rng.normal(size=8)

  def u_fn(z, r, t):
    flat = z.reshape(z.shape[0], -1)
    hidden = jnp.tanh(flat @ w1 + t[:, None] * a + r[:, None] * b)
    out = (hidden @ w2) * (1.0 + t * r)[:, None] + jnp.sin(3.0 * t - r)[:, None]
    return out.reshape(z.shape)

  return u_fn


def test_the_jvp_term_is_the_total_time_derivative_by_central_differences():
  """d/dt u(z + (tau - t) v, r, tau) at tau = t, by central differences in float64, equals time_derivative's
  jvp; it differs from the partial d_t u alone, so the z term is in it."""
  with jax.enable_x64():
    rng = np.random.default_rng(0)
    shape = (5, 2, 3, 1)
    u_fn = _smooth_network(rng, shape)
    z, v = rng.normal(size=shape), rng.normal(size=shape)
    t = rng.uniform(0.3, 0.9, size=5)
    r = t * rng.uniform(0.0, 1.0, size=5)
    u, du_dt = meanflow.time_derivative(u_fn, z, r, t, v)
    h = 1e-5
    along = lambda s: u_fn(z + s * v, r, t + s)
    finite = (along(h) - along(-h)) / (2 * h)
    np.testing.assert_allclose(du_dt, finite, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(u, u_fn(z, r, t), rtol=1e-14)
    partial_t = (u_fn(z, r, t + h) - u_fn(z, r, t - h)) / (2 * h)
    assert np.max(np.abs(du_dt - partial_t)) > 1e-2
    target = meanflow.meanflow_target(v, r, t, du_dt)
    np.testing.assert_allclose(target, v - (t - r)[:, None, None, None] * finite, rtol=1e-7, atol=1e-9)


def _stand_in(params, z, t):
  return params["w"] * jnp.tanh(z) + params["b"] * t.reshape(-1, 1, 1, 1) * z


@pytest.mark.parametrize("schedule", ["uniform", "logit_normal"])
def test_r_equal_t_everywhere_is_the_flow_matching_loss_on_the_same_draws(schedule):
  """equal_fraction = 1, p = 0 (unweighted), t's logit-normal N(0, 1) (flow.py's): the loss and its gradient
  are flow.flow_loss's with u(z, t, t) as the velocity, to float32 rounding (a sum per image, then the mean,
  against one mean); r enters u off the diagonal, so the jvp runs."""
  params = {"w": jnp.float32(0.7), "b": jnp.float32(-0.4)}
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 2), minval=-1, maxval=1)}
  rng = jax.random.PRNGKey(2)
  flow_ctx = flow.FlowContext(lambda params, z, t, rng, labels=None: _stand_in(params, z, t), schedule)
  network = lambda params, z, r, t, rng, labels=None: (
      _stand_in(params, z, t) + params["w"] * (t - r).reshape(-1, 1, 1, 1) * jnp.sin(z))
  ctx = lambda fraction: meanflow.MeanFlowContext(network, schedule=schedule, t_mean=0.0, t_std=1.0,
                                                  equal_fraction=fraction, pairs="clip", p=0.0)
  flow_loss = lambda params: flow.flow_loss(params, batch, rng, ctx=flow_ctx)[0]
  mf_loss = lambda params, fraction: meanflow.meanflow_loss(params, batch, rng, ctx=ctx(fraction))[0]
  np.testing.assert_allclose(mf_loss(params, 1.0), flow_loss(params), rtol=1e-6)
  grads_mf, grads_flow = jax.grad(mf_loss)(params, 1.0), jax.grad(flow_loss)(params)
  for key in params:
    np.testing.assert_allclose(grads_mf[key], grads_flow[key], rtol=1e-5)
  assert abs(float(mf_loss(params, 0.0)) - float(flow_loss(params))) > 1e-3  # r != t: not flow matching


def test_adaptive_weight_is_one_over_the_squared_error_plus_c_to_the_p_and_is_not_differentiated():
  rng = np.random.default_rng(3)
  u, target = rng.normal(size=(4, 3, 2, 1)).astype(np.float32), rng.normal(size=(4, 3, 2, 1)).astype(np.float32)
  p, c = 0.75, 1e-3
  squared = np.sum((u.astype(np.float64) - target) ** 2, axis=(1, 2, 3))
  weight = 1.0 / (squared + c) ** p
  loss, mse = meanflow.adaptive_loss(jnp.asarray(u), jnp.asarray(target), p, c)
  assert float(loss) == pytest.approx(np.mean(weight * squared) / 6, rel=1e-5)
  assert float(mse) == pytest.approx(np.mean(squared) / 6, rel=1e-5)
  grad = jax.grad(lambda u: meanflow.adaptive_loss(u, jnp.asarray(target), p, c)[0])(jnp.asarray(u))
  want = 2 * weight[:, None, None, None] * (u - target) / (4 * 6)  # w held constant
  np.testing.assert_allclose(grad, want, rtol=1e-4)


# ---- Gaussian data: the exact average velocity. ---------------------------------------------------
# For x ~ N(mu, s^2 I), z_t = (1 - t) x + t eps is N(m_t, sigma_t^2 I), m_t = (1 - t) mu,
# sigma_t^2 = (1 - t)^2 s^2 + t^2, and the marginal velocity E[eps - x | z_t] = -mu + sigma_t'/sigma_t (z - m_t)
# is affine: the ODE keeps (z - m_t) / sigma_t constant, so z_r = m_r + sigma_r / sigma_t (z_t - m_t) and
#   u(z, r, t) = (z - z_r) / (t - r) = (z - m_t) (1 - sigma_r / sigma_t) / (t - r) - mu,   u(z, t, t) = v(z, t).

MU, S = np.array([0.7, -0.3]), 0.5


def _sigma(t):
  return jnp.sqrt((1 - t) ** 2 * S**2 + t**2)


def _gaussian_velocity(z, t):
  t4 = t.reshape(-1, 1, 1, 1)
  mu = jnp.asarray(MU).reshape(1, -1, 1, 1)
  return -mu + (t4 - (1 - t4) * S**2) / _sigma(t4) ** 2 * (z - (1 - t4) * mu)


def _gaussian_average_velocity(z, r, t):
  gap = (t - r).reshape(-1, 1, 1, 1)
  t4, r4 = t.reshape(-1, 1, 1, 1), r.reshape(-1, 1, 1, 1)
  mu = jnp.asarray(MU).reshape(1, -1, 1, 1)
  safe = jnp.where(gap > 0, gap, 1.0)
  jumped = (z - (1 - t4) * mu) * (1 - _sigma(r4) / _sigma(t4)) / safe - mu
  return jnp.where(gap > 0, jumped, _gaussian_velocity(z, t))


def test_the_gaussian_average_velocity_is_the_ode_s_displacement_and_the_target_s_fixed_point():
  """The closed form against an RK4 solve of dz/dtau = v(z, tau) from t to r (float64); with the exact
  marginal velocity as v the MeanFlow target equals u (the identity, eq. 6) and the loss is 0."""
  with jax.enable_x64():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(8, 2, 1, 1)) * 1.5
    t = rng.uniform(0.05, 1.0, size=8)
    r = t * rng.uniform(0.0, 0.95, size=8)
    steps, path = 200, z
    for i in range(steps):
      tau, h = t + (r - t) * i / steps, (r - t) / steps
      k1 = _gaussian_velocity(path, tau)
      k2 = _gaussian_velocity(path + 0.5 * h.reshape(-1, 1, 1, 1) * k1, tau + 0.5 * h)
      k3 = _gaussian_velocity(path + 0.5 * h.reshape(-1, 1, 1, 1) * k2, tau + 0.5 * h)
      k4 = _gaussian_velocity(path + h.reshape(-1, 1, 1, 1) * k3, tau + h)
      path = path + h.reshape(-1, 1, 1, 1) / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    u = _gaussian_average_velocity(z, r, t)
    np.testing.assert_allclose(u, (z - path) / (t - r).reshape(-1, 1, 1, 1), rtol=1e-9, atol=1e-10)
    near = lambda gap: np.max(np.abs(_gaussian_average_velocity(z, t - gap, t) - _gaussian_velocity(z, t)))
    assert near(1e-6) < 3e-5 and near(1e-7) < 0.2 * near(1e-6)  # u(z, r, t) -> v(z, t) as r -> t, O(t - r)

    v = _gaussian_velocity(z, t)
    _, du_dt = meanflow.time_derivative(_gaussian_average_velocity, z, r, t, v)
    target = meanflow.meanflow_target(v, r, t, du_dt)
    np.testing.assert_allclose(target, u, rtol=1e-10, atol=1e-12)
    loss, mse = meanflow.adaptive_loss(u, target, 0.75, 1e-3)
    assert float(mse) < 1e-20 and float(loss) < 1e-15


def test_the_exact_gaussian_average_velocity_is_a_stationary_point_of_the_loss_on_conditional_draws():
  """The training target uses the conditional velocity eps - x; it is linear in it, so its mean given z_t is
  the exact target: the gradient in an offset and a scale of u vanishes at the exact u, up to Monte Carlo
  error, and does not for the instantaneous velocity u(z, r, t) = v(z, t) (exact only at r = t)."""
  with jax.enable_x64():
    num = 400_000
    x = MU.reshape(1, -1, 1, 1) + S * np.random.default_rng(5).normal(size=(num, 2, 1, 1))
    batch = {"image": jnp.asarray(x)}

    def gradient(base):
      network = lambda params, z, r, t, rng, labels=None: base(z, r, t) * (1 + params["scale"]) + params["offset"]
      ctx = meanflow.MeanFlowContext(network, p=0.0)  # py-meanflow's (r, t), 25% with r = t
      loss = lambda params: meanflow.meanflow_loss(params, batch, jax.random.PRNGKey(6), ctx=ctx)[0]
      grads = jax.jit(jax.grad(loss))({"scale": jnp.float64(0.0), "offset": jnp.float64(0.0)})
      return np.array([grads["scale"], grads["offset"]])

    exact = gradient(_gaussian_average_velocity)
    instantaneous = gradient(lambda z, r, t: _gaussian_velocity(z, t))
    assert np.all(np.abs(exact) < 0.01), exact  # the Monte Carlo error over seeds is about 0.002
    assert np.max(np.abs(instantaneous)) > 0.1, instantaneous


def test_guided_velocity_folds_guidance_into_the_target_inside_its_interval_and_not_for_dropped_labels():
  """v_g = omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | c) for t in the interval,
  v elsewhere and for images whose label is the null label, recomputed in NumPy."""
  null = 10
  guide = lambda params, z, t, labels: jnp.cos(z) * (1.0 + labels.reshape(-1, 1, 1, 1)) + t.reshape(-1, 1, 1, 1)
  ctx = meanflow.MeanFlowContext(None, guide=guide, guidance=2.5, kappa=0.3, interval=(0.2, 0.7), null_label=null)
  rng = np.random.default_rng(7)
  z, v = rng.normal(size=(6, 2, 2, 1)).astype(np.float32), rng.normal(size=(6, 2, 2, 1)).astype(np.float32)
  t = np.array([0.1, 0.3, 0.5, 0.69, 0.9, 0.4], np.float32)
  labels = np.array([3, 3, 7, null, 1, 0], np.int32)
  got = np.asarray(meanflow.guided_velocity(None, ctx, jnp.asarray(z), jnp.asarray(t), jnp.asarray(v),
                                            jnp.asarray(labels)))
  want = v.copy()
  for i in range(6):
    if 0.2 <= t[i] <= 0.7 and labels[i] != null:
      unconditional = np.cos(z[i]) * (1 + null) + t[i]
      conditional = np.cos(z[i]) * (1 + labels[i]) + t[i]
      want[i] = 2.5 * v[i] + (1 - 2.5 - 0.3) * unconditional + 0.3 * conditional
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got[[1, 2, 5]], v[[1, 2, 5]])


# ---- A Gaussian mixture: one and two jumps with the exact average velocity. ----------------------

WEIGHTS, MEANS, STDS = np.array([0.3, 0.7]), np.array([-1.0, 1.0]), np.array([0.1, 0.2])


def _mixture_velocity(x, t):
  """E[eps - x0 | x_t = x] for 1-d data sum_k w_k N(m_k, s_k^2), float64 NumPy; x [N], t scalar."""
  var = (1 - t) ** 2 * STDS**2 + t**2
  residual = x[:, None] - (1 - t) * MEANS
  log_p = np.log(WEIGHTS) - 0.5 * np.log(var) - 0.5 * residual**2 / var
  post = np.exp(log_p - log_p.max(axis=1, keepdims=True))
  post /= post.sum(axis=1, keepdims=True)
  x0 = MEANS + (1 - t) * STDS**2 / var * residual
  eps = t / var * residual
  return np.sum(post * (eps - x0), axis=1)


def _flow_map(x, t, r, steps=100):
  """The ODE's solution at r from x at t, RK4 in float64 (within 2e-5 of 1000 steps from t = 1 to 0)."""
  h = (r - t) / steps
  for i in range(steps):
    tau = t + i * h
    k1 = _mixture_velocity(x, tau)
    k2 = _mixture_velocity(x + 0.5 * h * k1, tau + 0.5 * h)
    k3 = _mixture_velocity(x + 0.5 * h * k2, tau + 0.5 * h)
    k4 = _mixture_velocity(x + h * k3, tau + h)
    x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return x


def _process():
  return meanflow.MeanFlow(losses=meanflow.LOSSES, train_ctx=None, eval_ctx=None, samplers=meanflow.SAMPLERS)


def test_one_and_two_jumps_with_the_exact_average_velocity_land_on_a_gaussian_mixture():
  """The network u(z, r, t) = (z - Phi_{t->r}(z)) / (t - r), Phi the ODE's flow map solved by `_flow_map` at
  the very points the sampler passes (a host callback), t and r read from its (t, t - r) labels:
  onestep and meanflow with 2 steps reach the mixture's weights, means and stds, and agree with each other
  (the maps compose) but for a few points on the steep watershed between the modes."""

  def average_velocity(z, noise_label):
    t = float(noise_label[0, 0])
    r = t - float(noise_label[0, 1])
    x = np.asarray(z[:, 0], np.float64)
    return ((x - _flow_map(x, t, r)) / (t - r))[:, None].astype(np.float32)

  net = lambda z, noise_label: jax.pure_callback(average_velocity, jax.ShapeDtypeStruct(z.shape, jnp.float32),
                                                 z, noise_label)
  options = ml_collections.ConfigDict({"steps": 2})
  rng = jax.random.PRNGKey(0)
  one = np.asarray(meanflow.onestep_sampler(_process(), net, rng, (20000, 1), options))
  two = np.asarray(meanflow.meanflow_sampler(_process(), net, rng, (20000, 1), options))
  assert np.mean(np.abs(one - two) < 1e-4) > 0.99
  for x in (one, two):
    left, right = x[x[:, 0] < 0, 0], x[x[:, 0] >= 0, 0]
    assert len(left) / len(x) == pytest.approx(0.3, abs=0.015)
    assert np.mean(left) == pytest.approx(-1.0, abs=0.01) and np.std(left) == pytest.approx(0.1, rel=0.05)
    assert np.mean(right) == pytest.approx(1.0, abs=0.01) and np.std(right) == pytest.approx(0.2, rel=0.05)


# ---- The config path: UNet and DiT, trained and sampled through the method. ----------------------

class Counted(nn.Module):
  """An architecture around another that appends its batch size to CALLS each time it runs."""

  inner: nn.Module

  def __call__(self, x, noise_label, labels=None, train=False):
    jax.debug.callback(lambda n: CALLS.append(int(n)), jnp.asarray(x.shape[0]))
    return self.inner(x, noise_label, labels, train=train)


class TinyNet(nn.Module):
  """A small network of one or two times, quick to compile: conv(x) (1 + sin(3 t)) + d tanh(x) with
  (t, d) = noise_label (MeanFlow's unscaled [B, 2]), or t = noise_label / 999 and d = 0 (flow's [B]), plus a
  class embedding of labels in [0, num_classes] (num_classes: the null label, also for labels=None) if
  num_classes > 0."""

  num_classes: int = 0

  @nn.compact
  def __call__(self, x, noise_label, labels=None, train=False):
    if noise_label.ndim == 2:
      t, d = noise_label[:, 0], noise_label[:, 1]
    else:
      t = noise_label / flow.TIME_SCALE
      d = jnp.zeros_like(t)
    t, d = t.reshape(-1, 1, 1, 1), d.reshape(-1, 1, 1, 1)
    out = nn.Conv(x.shape[-1], (3, 3))(x) * (1 + jnp.sin(3 * t)) + d * jnp.tanh(x)
    if self.num_classes:
      labels = jnp.full(x.shape[:1], self.num_classes) if labels is None else labels
      out = out + nn.Embed(self.num_classes + 1, x.shape[-1])(labels)[:, None, None, :]
    return out


def counted_unet(config, image_shape, dtype):
  """model.arch = 'test_meanflow:counted_unet': the project's UNet, its calls counted."""
  return Counted(diffusion_method.unet(config, image_shape, dtype))


def counted_dit(config, image_shape, dtype):
  """model.arch = 'test_meanflow:counted_dit': the project's DiT, its calls counted."""
  return Counted(diffusion_method.dit(config, image_shape, dtype))


def counted_tiny(config, image_shape, dtype):
  """model.arch = 'test_meanflow:counted_tiny': TinyNet, its calls counted."""
  return Counted(TinyNet(config.model.num_classes))


def _config(data_dir, arch="unet", sampler="meanflow", steps=1, num_classes=0, process="meanflow"):
  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.process = process
  config.model.arch = f"{__name__}:counted_{arch}"
  config.model.attn_resolutions = ()  # the tiny UNet without attention, the DiT with one block: quicker to compile
  config.model.patch_size, config.model.hidden_size, config.model.depth, config.model.num_heads = 2, 32, 1, 2
  config.sample.sampler, config.sample.steps, config.sample.preview_sampler = sampler, steps, ""
  if num_classes:
    config.model.num_classes = num_classes
    config.diffusion.meanflow_guidance, config.diffusion.meanflow_guidance_kappa = 2.0, 0.5
    config.diffusion.meanflow_guidance_interval = (0.0, 0.6)
  return config


def _batch(num_classes=0):
  images = jax.random.uniform(jax.random.PRNGKey(11), (16, 8, 8, 1), minval=-1, maxval=1)
  return {"image": images, "label": jnp.arange(16, dtype=jnp.int32) % 10} if num_classes else {"image": images}


def _counted_draw(config, params) -> tuple[int, int]:
  """(the NFE the method reports, the network calls one compiled draw of 3 images makes)."""
  method = methods.make(config)
  CALLS.clear()
  images = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 3))
  jax.effects_barrier()
  assert images.shape == (3, 8, 8, 1) and np.all(np.isfinite(images)) and set(CALLS) == {3}
  return method.sample_nfe, len(CALLS)


@pytest.mark.parametrize("arch,num_classes,draws", [
    ("unet", 0, [("meanflow", 1), ("meanflow", 2)]), ("dit", 0, [("meanflow", 1), ("meanflow", 2)]),
    ("tiny", 10, [("onestep", 1)])])
def test_the_method_trains_compiles_once_and_samples_with_the_nfe_it_reports(data_dir, arch, num_classes, draws):
  """UNet and DiT with their two time embeddings, and a class-conditional network with guidance (omega, kappa
  and an interval) folded into training: two train steps of one compiled function with a finite loss, then
  compiled draws whose network calls, counted at run time, are the NFE the method reports."""
  method = methods.make(_config(data_dir, arch, num_classes=num_classes))
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  step = jax.jit(method.train_step)
  for i in range(2):
    state, metrics = step(state, _batch(num_classes), jax.random.PRNGKey(i))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0 and np.isfinite(float(metrics["mse"]))
  assert step._cache_size() == 1
  for name, steps in draws:
    nfe, calls = _counted_draw(_config(data_dir, arch, name, steps, num_classes), state.ema_params)
    assert nfe == calls == steps, (name, steps, nfe, calls)


def test_every_registered_sampler_reports_the_network_calls_it_makes(data_dir):
  params = jax.jit(methods.make(_config(data_dir, "tiny")).init)(jax.random.PRNGKey(0)).ema_params
  counts = {(name, steps): _counted_draw(_config(data_dir, "tiny", name, steps), params)
            for name in sorted(meanflow.SAMPLERS) for steps in (1, 2, 3)}
  assert all(nfe == calls for nfe, calls in counts.values()), counts
  assert counts[("onestep", 3)] == (1, 1) and counts[("meanflow", 3)] == (3, 3)


def test_the_held_out_bits_per_dim_are_flow_s_ode_likelihood_of_the_velocity_u_z_t_t(data_dir):
  """eval_step's ode_bpd with the network's second time t - r = 0 equals the flow process's with the
  same network and draws: the probability-flow ODE of the instantaneous velocity u(z, t, t)."""
  images = jnp.round((_batch()["image"][:2] + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid
  held_out = {}
  for process, sampler in [("meanflow", "meanflow"), ("flow", "euler")]:
    method = methods.make(_config(data_dir, "tiny", sampler, process=process))
    params = jax.jit(method.init)(jax.random.PRNGKey(0)).params
    held_out[process] = jax.jit(method.eval_step)(params, {"image": images}, jax.random.PRNGKey(3))
  assert set(held_out["meanflow"]) == {"loss", "mse", "ode_bpd"}
  assert np.isfinite(float(held_out["meanflow"]["ode_bpd"]))
  assert float(held_out["meanflow"]["ode_bpd"]) == pytest.approx(float(held_out["flow"]["ode_bpd"]), rel=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("diffusion.meanflow_time_schedule", "beta", "must be one of"),
    ("diffusion.meanflow_time_pairs", "zip", "must be one of"),
    ("diffusion.meanflow_equal_fraction", 1.5, r"must be in \[0, 1\]"),
    ("diffusion.meanflow_t_std", 0.0, "must be > 0"),
    ("diffusion.meanflow_r_std", -1.0, "must be > 0"),
    ("diffusion.meanflow_p", -0.5, "must be >= 0"),
    ("diffusion.meanflow_c", 0.0, "must be > 0"),
    ("diffusion.meanflow_guidance", 2.0, "needs a class-conditional model"),
    ("diffusion.meanflow_guidance_kappa", -0.1, "must be >= 0"),
    ("sample.steps", 0, "must be >= 1"),
    ("sample.sampler", "heun", "unknown MeanFlow sampler 'heun'; built-in: meanflow, onestep")])
def test_a_bad_field_is_refused_with_its_name(data_dir, field, value, message):
  config = _config(data_dir)
  if field == "diffusion.meanflow_guidance_kappa":
    config.model.num_classes = 10
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=f"^config.{field}: .*{message}"):
    methods.make(config)


def test_guidance_folded_into_training_needs_label_dropout_and_an_interval_inside_0_1(data_dir):
  config = _config(data_dir, num_classes=10)
  config.diffusion.label_dropout = 0.0
  with pytest.raises(ConfigError, match="^config.diffusion.meanflow_guidance: needs the unconditional field"):
    methods.make(config)
  config = _config(data_dir, num_classes=10)
  config.diffusion.meanflow_guidance_interval = (0.5, 1.2)
  with pytest.raises(ConfigError, match="^config.diffusion.meanflow_guidance_interval: must be"):
    methods.make(config)


@pytest.mark.slow  # a subprocess with 8 CPU devices
def test_the_jvp_step_trains_on_a_data_x_fsdp_mesh_as_data_parallel(data_dir, tmp_path):
  """3 steps of the tiny MeanFlow UNet on a 2 x 4 data x fsdp mesh: one compiled step, the largest parameter
  sharded over fsdp, and the final state (params, EMA, Adam) that of an 8-way data-parallel run up to the
  summation order of the sharded reductions (1e-4 of each array's largest magnitude)."""
  run = subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts", "meanflow_mesh.py"), data_dir,
                        str(tmp_path)], env=dict(os.environ, JAX_NUM_CPU_DEVICES="8"), cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.load(open(tmp_path / "data_fsdp.json"))
  assert summary["variants"] == 1
  largest = max(summary["shardings"].values(), key=lambda shape_spec: np.prod(shape_spec[0]))
  assert "fsdp" in largest[1], summary["shardings"]
  assert_states_close(dict(np.load(tmp_path / "data_fsdp.npz")), dict(np.load(tmp_path / "dp.npz")), rtol=1e-4)
