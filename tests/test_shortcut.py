"""Shortcut models (diffusion/shortcut.py) against independent references: flow.py's flow-matching loss
(no self-consistency rows), the self-consistency target recomputed in float64 NumPy, the exact flow map of
Gaussian data in closed form (two half steps of the exact velocity are two Euler steps: their error is
d^2 x''(t) + O(d^3)), a float64 SciPy ODE solve of that flow (an exact shortcut samples the data in 1, 2
and 4 steps), flow.py's held-out likelihood; then the config path with the UNet and the DiT, the NFE
each draw reports against the network calls it makes, and the config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate

from genimg_jax import methods
from genimg_jax.diffusion import flow, shortcut
from genimg_jax.errors import ConfigError
from helpers import tiny_config

MU, SIGMA = 0.3, 0.5  # the 1-d Gaussian data N(MU, SIGMA^2) of the closed-form tests


# ---- Gaussian data: the exact flow (float64 NumPy) and its velocity (JAX). ----------------------

def _std(t):
  """The standard deviation s_t of x_t = (1 - t) x0 + t eps, x0 ~ N(MU, SIGMA^2)."""
  return np.sqrt((1 - t) ** 2 * SIGMA**2 + t**2)


def _flow_map(x, t, t_next):
  """The exact ODE flow from t to t_next: the standardised (x - (1 - t) MU) / s_t is constant along it."""
  return (1 - t_next) * MU + _std(t_next) * (x - (1 - t) * MU) / _std(t)


def _velocity_np(x, t):
  """E[eps - x0 | x_t = x] = (t - (1 - t) SIGMA^2) (x - (1 - t) MU) / s_t^2 - MU."""
  return (t - (1 - t) * SIGMA**2) * (x - (1 - t) * MU) / _std(t) ** 2 - MU


def _velocity_jax(x, t, d=None):
  t = t.reshape((-1,) + (1,) * (x.ndim - 1))
  return (t - (1 - t) * SIGMA**2) * (x - (1 - t) * MU) / ((1 - t) ** 2 * SIGMA**2 + t**2) - MU


def _std_second_derivative(t):
  """d^2 s_t / dt^2 for s_t = sqrt(f), f = (1 - t)^2 SIGMA^2 + t^2."""
  f, df, ddf = (1 - t) ** 2 * SIGMA**2 + t**2, -2 * (1 - t) * SIGMA**2 + 2 * t, 2 * SIGMA**2 + 2
  return ddf / (2 * np.sqrt(f)) - df**2 / (4 * f**1.5)


# ---- The objective. ---------------------------------------------------------------------------

def _stand_in(params, x, t, rng, labels):
  """A network of (x, t, dropout rng (None: eval mode), labels) that is not linear in anything."""
  out = params["w"] * jnp.tanh(x + t[:, None, None, None])
  out = out if rng is None else out + 0.1 * jax.random.normal(rng, x.shape)
  return out if labels is None else out + 0.01 * labels[:, None, None, None]


def _with_step(params, x, t, d, rng, labels):
  """_stand_in with the step size added, so that a row fed d != 0 moves the loss."""
  return _stand_in(params, x, t, rng, labels) + 5.0 * d[:, None, None, None]


def _batch(num=16, size=4):
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (num, size, size, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, num), jnp.int32)}


@pytest.mark.parametrize("schedule", flow.TIME_SCHEDULES)
def test_with_no_self_consistency_rows_the_loss_is_flow_matching(schedule):
  params, batch, rng = {"w": jnp.float32(0.7)}, _batch(), jax.random.PRNGKey(3)
  flow_ctx = flow.FlowContext(_stand_in, schedule)
  ctx = lambda fraction: shortcut.ShortcutContext(_with_step, _with_step, fraction, 8, 4.0, schedule)
  (expected, _), expected_grad = jax.value_and_grad(flow.flow_loss, has_aux=True)(params, batch, rng, ctx=flow_ctx)
  (loss, metrics), grad = jax.value_and_grad(shortcut.shortcut_loss, has_aux=True)(params, batch, rng, ctx=ctx(0.0))
  assert float(loss) == float(expected) and float(grad["w"]) == float(expected_grad["w"])
  assert float(metrics["flow_loss"]) == float(loss) and "self_consistency_loss" not in metrics
  # A quarter of the rows at d > 0 (where the stand-in adds 5 d) moves it: the comparison above can fail.
  loss, metrics = shortcut.shortcut_loss(params, batch, rng, ctx=ctx(0.25))
  assert abs(float(loss) - float(expected)) > 0.1 and "self_consistency_loss" in metrics


def _nonlinear_shortcut_np(x, t, d):
  return (1.0 + 3.0 * t + 7.0 * d) * x + 2.0 * np.sin(5.0 * x) + t * d


def test_the_self_consistency_target_is_the_mean_of_two_half_steps_float64():
  max_steps, clip = 16, 4.0
  rng = np.random.default_rng(1)
  d = np.repeat([1 / 16, 1 / 8, 1 / 4, 1 / 2], 6)  # the half steps; 1/16 is the finest level
  t = 1.0 - rng.integers(0, np.round(1 / (2 * d)).astype(int)) * 2 * d
  x = rng.normal(0, 1.5, (len(d), 3, 3, 1))

  def reference():
    d_in = np.where(d == 1 / max_steps, 0.0, d)[:, None, None, None]  # the paper: the finest level asks d = 0
    tb, db = t[:, None, None, None], d[:, None, None, None]
    first = _nonlinear_shortcut_np(x, tb, d_in)
    midpoint = np.clip(x - db * first, -clip, clip)
    unclipped = 0.5 * (first + _nonlinear_shortcut_np(midpoint, tb - db, d_in))
    return np.clip(unclipped, -clip, clip), unclipped

  def net(x, t, d):
    t, d = t[:, None, None, None], d[:, None, None, None]
    return (1.0 + 3.0 * t + 7.0 * d) * x + 2.0 * jnp.sin(5.0 * x) + t * d

  got = shortcut.self_consistency_target(net, *(jnp.asarray(a, jnp.float32) for a in (x, t, d)), max_steps, clip)
  expected, unclipped = reference()
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  assert (np.abs(unclipped) > clip).any() and (np.abs(unclipped) < clip).any()  # the clip is exercised


def test_self_consistency_times_are_stratified_on_the_sampler_grid():
  max_steps, per_level = 16, 500
  t, big = (np.asarray(a, np.float64) for a in
            shortcut.self_consistency_times(jax.random.PRNGKey(0), 4 * per_level + 3, max_steps))
  np.testing.assert_array_equal(big, np.repeat([1 / 8, 1 / 4, 1 / 2, 1.0], [per_level] * 3 + [per_level + 3]))
  for step in (1 / 8, 1 / 4, 1 / 2, 1.0):
    k = (1.0 - t[big == step]) / step  # t = 1 - k 2d, k = 0, ..., 1/(2d) - 1, each about equally often
    np.testing.assert_array_equal(k, np.round(k))
    counts = np.bincount(k.astype(int), minlength=int(1 / step))
    assert len(counts) == int(1 / step) and counts.min() > 0.5 * counts.mean()
  assert (t - big >= 0).all() and (t <= 1).all()


def test_two_half_steps_of_the_exact_velocity_follow_the_flow_map_to_euler_order():
  """The target over 2d, x - 2d target, is two Euler steps of the exact velocity: it misses the exact
  flow map by d^2 x''(t) + O(d^3) with x''(t) = s_t'' z along the trajectory of z. A wrong time direction, a
  wrong midpoint or a missing half would miss by O(d) or with another constant."""
  t0, z = 0.75, np.array([-2.0, -1.0, 1.0, 2.0])
  x = (1 - t0) * MU + _std(t0) * z
  ratios = []
  for d in (1 / 32, 1 / 64):
    target = shortcut.self_consistency_target(
        _velocity_jax, jnp.asarray(x, jnp.float32), jnp.full(4, t0, jnp.float32), jnp.full(4, d, jnp.float32),
        128, 1e6)
    two_steps = x - 2 * d * np.asarray(target, np.float64)
    ratios.append((_flow_map(x, t0, t0 - 2 * d) - two_steps) / (d**2 * _std_second_derivative(t0) * z))
  ratios = np.array(ratios)
  assert np.abs(ratios[-1] - 1).max() < 0.05, ratios
  # The next term is O(d): Richardson's 2 r(d / 2) - r(d) leaves 1 + O(d^2).
  np.testing.assert_allclose(2 * ratios[1] - ratios[0], 1.0, atol=0.01)


def test_the_targets_carry_no_gradient():
  """max_steps = 2, every row self-consistency: 2d = 1 at t = 1 (x_t = eps), half steps at d = 1/2 queried at
  d = 0. For s = theta x: target T = theta x (1 - theta / 4), loss L = theta^4 mean(x^2) / 16; with T held
  fixed dL/dtheta = 2 mean((theta x - T) x) = 8 L / theta^2, through T it would be 4 L / theta."""
  theta = 0.8
  net = lambda params, x, t, d, rng, labels: params * x
  ctx = shortcut.ShortcutContext(net, net, fraction=1.0, max_steps=2, clip=1e6)
  (loss, _), grad = jax.value_and_grad(shortcut.shortcut_loss, has_aux=True)(
      jnp.float32(theta), {"image": _batch()["image"]}, jax.random.PRNGKey(0), ctx=ctx)
  np.testing.assert_allclose(float(grad), 8 * float(loss) / theta**2, rtol=1e-5)


# ---- Sampling with the exact shortcut of a Gaussian. -------------------------------------------

def _affine_flow_map(t, t_next):
  """(A, c) with flow map x -> A x + c from t to t_next (affine for Gaussian data), by a float64 ODE solve."""
  solve = lambda x: integrate.solve_ivp(lambda s, y: _velocity_np(y, s), (t, t_next), [x], method="DOP853",
                                        rtol=1e-12, atol=1e-12).y[0, -1]
  c = solve(0.0)
  return solve(1.0) - c, c


def _exact_shortcut_net(step_counts):
  """net(x, noise_label [B, 2]) -> s(x, t, d) = (x - flowmap_{t -> t - d}(x)) / d at the (t, d) the samplers of
  `step_counts` visit; NaN elsewhere, so a wrong time or step size cannot pass."""
  keys, maps = [], []
  for n in step_counts:
    for k in range(n):
      t = 1 - k / n
      keys.append((999 * t, 999 / n))
      maps.append(_affine_flow_map(t, t - 1 / n))
  keys, (a, c) = jnp.asarray(keys, jnp.float32), jnp.asarray(np.array(maps).T, jnp.float32)

  def net(x, noise_label):
    match = jnp.all(jnp.abs(noise_label[:, None, :] - keys[None]) < 1e-2, axis=-1)  # [B, K]
    index = jnp.argmax(match, axis=-1)
    d = noise_label[:, 1] / 999
    s = (x - a[index, None, None, None] * x - c[index, None, None, None]) / d[:, None, None, None]
    return jnp.where(jnp.any(match, axis=-1)[:, None, None, None], s, jnp.nan)

  return net


def test_an_exact_shortcut_samples_the_data_in_one_two_and_four_steps():
  process = shortcut.Shortcut(losses=shortcut.LOSSES, train_ctx=None, eval_ctx=None, samplers=shortcut.SAMPLERS)
  net = _exact_shortcut_net((1, 2, 4))
  shape = (4096, 2, 2, 1)
  for steps in (1, 2, 4):
    options = ml_collections.ConfigDict({"steps": steps})
    x = np.asarray(shortcut.SAMPLERS["shortcut"](process, net, jax.random.PRNGKey(steps), shape, options))
    assert shortcut.SAMPLERS["shortcut"].nfe(process, options) == steps
    # 16384 draws: standard errors 0.004 (mean), 0.003 (std).
    assert abs(x.mean() - MU) < 0.02 and abs(x.std() - SIGMA) < 0.015, (steps, x.mean(), x.std())
  # The control: one Euler step of the flow's velocity lands every draw on the mean (std 0).
  euler = flow.SAMPLERS["euler"](process, lambda x, label: _velocity_jax(x, label[:, 0] / 999), jax.random.PRNGKey(1),
                                 shape, ml_collections.ConfigDict({"steps": 1}))
  assert float(jnp.std(euler)) < 1e-3


# ---- The process through the method. -----------------------------------------------------------

def _config(data_dir, **fields):
  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.process = "shortcut"
  config.diffusion.shortcut_max_steps = 8
  config.sample.sampler, config.sample.steps, config.sample.preview_sampler = "shortcut", 1, ""
  for name, value in fields.items():
    section, field = name.split("__")
    config[section][field] = value
  return config


def test_held_out_is_the_flow_likelihood_of_the_d0_velocity(data_dir):
  """The same drift as flow.py's network at d = 0 (NaN at any other d) gives flow.py's ODE bits/dim."""
  linear = lambda x, t: (-0.3 + 0.2 * t[:, None, None, None]) * x
  flow_network = lambda params, x, label, rng, train, labels: linear(x, label / 999)
  shortcut_network = lambda params, x, label, rng, train, labels: jnp.where(
      (label[:, 1] == 0)[:, None, None, None], linear(x, label[:, 0] / 999), jnp.nan)
  config = _config(data_dir)
  batch, rng = {"image": _batch(2)["image"]}, jax.random.PRNGKey(0)
  expected = flow.build(config, flow_network, (4, 4, 1)).held_out(None, batch, rng)["ode_bpd"]
  got = shortcut.build(config, shortcut_network, (4, 4, 1)).held_out(None, batch, rng)["ode_bpd"]
  assert np.isfinite(float(got)) and float(got) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_trains_compiles_once_and_samples_in_one_two_and_four_steps(data_dir, arch):
  fields = {"model__arch": arch}
  if arch == "dit":
    fields.update(model__patch_size=2, model__hidden_size=32, model__depth=1, model__num_heads=2, model__mlp_ratio=2.0)
  else:  # the UNet class-conditional (guided sampling: the counting test below)
    fields.update(model__num_classes=10)
  config = _config(data_dir, **fields)
  method = methods.make(config)
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  step = jax.jit(method.train_step)
  for i in range(2):
    state, metrics = step(state, _batch(16, 8), jax.random.PRNGKey(i))
    assert all(np.isfinite(float(metrics[k])) for k in ("loss", "flow_loss", "self_consistency_loss")), metrics
  assert step._cache_size() == 1
  # Perturbed weights: the DiT outputs zero at initialisation, which would make every step count sample alike.
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), state.params)
  samples = {}
  for steps in (1, 2, 4):
    config.sample.steps = steps
    sample = jax.jit(methods.make(config).sample, static_argnums=2)
    samples[steps] = np.asarray(sample(params, jax.random.PRNGKey(5), 3))
    assert samples[steps].shape == (3, 8, 8, 1) and np.isfinite(samples[steps]).all()
  assert np.abs(samples[1] - samples[4]).max() > 1e-3


CALLS: list[tuple[int, tuple]] = []


class CountingShortcutNet(nn.Module):
  """A one-parameter network of (x, 999 (t, d)) that records each call's batch size and noise-label shape."""

  @nn.compact
  def __call__(self, x, noise_label, labels=None, train=False):
    shape = noise_label.shape
    jax.debug.callback(lambda n: CALLS.append((int(n), shape)), jnp.asarray(x.shape[0]))
    scale = self.param("scale", nn.initializers.constant(0.5), ())
    return scale * jnp.tanh(x) + 1e-3 * (noise_label[:, 0] + noise_label[:, 1])[:, None, None, None]


def counting_shortcut_net(config, image_shape, dtype):
  """The architecture given as model.arch = 'test_shortcut:counting_shortcut_net'."""
  assert config.model.time_inputs == 2
  return CountingShortcutNet()


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_every_shortcut_sampler_reports_the_network_calls_it_makes(data_dir, steps, guidance):
  """Unguided: one call of the 3 images per step. Guided (t = 1 - k d lies in the default interval): one call
  of the 3 images and their 3 unconditional twins per step, two network passes per image and step."""
  for name in sorted(shortcut.SAMPLERS):
    config = _config(data_dir, model__arch=f"{__name__}:counting_shortcut_net", sample__sampler=name,
                     sample__steps=steps, model__num_classes=10 if guidance else 0, sample__guidance=guidance)
    method = methods.make(config)
    params = jax.jit(method.init)(jax.random.PRNGKey(0)).ema_params
    CALLS.clear()
    images = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 3))
    jax.effects_barrier()
    batch = 6 if guidance else 3
    assert np.isfinite(images).all() and set(CALLS) == {(batch, (batch, 2))}, CALLS
    assert method.sample_nfe == len(CALLS) == steps
    if guidance:
      assert method.count_network_passes() == 2 * steps


@pytest.mark.parametrize("field,value,message", [
    ("diffusion__shortcut_fraction", 1.0, "config.diffusion.shortcut_fraction: must be in [0, 1)"),
    ("diffusion__shortcut_fraction", -0.1, "config.diffusion.shortcut_fraction: must be in [0, 1)"),
    ("diffusion__shortcut_max_steps", 96, "config.diffusion.shortcut_max_steps: must be a power of two >= 2"),
    ("diffusion__shortcut_clip", 0.0, "config.diffusion.shortcut_clip: must be > 0"),
    ("diffusion__time_schedule", "cosine", "config.diffusion.time_schedule: must be one of"),
    ("sample__steps", 3, "config.sample.steps: must be a power of two <= diffusion.shortcut_max_steps = 8"),
    ("sample__steps", 16, "config.sample.steps: must be a power of two <= diffusion.shortcut_max_steps = 8"),
    ("sample__preview_steps", 50, "config.sample.preview_steps: must be a power of two"),
])
def test_a_bad_field_is_refused_naming_it(data_dir, field, value, message):
  fields = {field: value}
  if field == "sample__preview_steps":
    fields["sample__preview_sampler"] = "shortcut"
  with pytest.raises(ConfigError) as e:
    methods.make(_config(data_dir, **fields))
  assert str(e.value).startswith(message), str(e.value)
