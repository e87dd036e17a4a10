"""DDPM ancestral and DDIM samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import methods
from genimg_jax.diffusion import ddpm
from helpers import tiny_config


def _toy_predictor(schedule):
  """A fixed smooth denoiser: x0_hat depends on x_t and t; eps consistent with it."""

  def predict(x, t):
    x0 = jnp.tanh(1.3 * x + 0.002 * t[:, None, None, None])
    abar = schedule.alphas_cumprod[t][:, None, None, None]
    return x0, (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

  return predict


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("clip_x0", [True, False])
def test_ddim_eta1_all_steps_is_ddpm_with_posterior_variance(name, clip_x0):
  """Equal in float64 up to rounding; in float32 up to the error 1000 steps accumulate."""
  shape = (4, 6, 6, 2)
  rng = jax.random.PRNGKey(3)
  for dtype, atol in ((jnp.float64, 1e-9), (jnp.float32, 1e-3)):
    with jax.enable_x64(dtype == jnp.float64):
      schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule(name, 1000), dtype=dtype)
      predict = _toy_predictor(schedule)
      ancestral = ddpm.ddpm(predict, schedule, rng, shape, variance="beta_tilde", clip_x0=clip_x0)
      implicit = ddpm.ddim(predict, schedule, rng, shape, num_steps=1000, eta=1.0, clip_x0=clip_x0)
      assert ancestral.dtype == dtype and float(jnp.abs(ancestral).max()) > 0.1
      np.testing.assert_allclose(implicit, ancestral, atol=atol, rtol=0)
  # Not trivially equal: eta = 0 and DDPM's beta variance both give other samples.
  assert not np.allclose(ddpm.ddim(predict, schedule, rng, shape, num_steps=1000, eta=0.0,
                                    clip_x0=clip_x0), ancestral, atol=1e-2)
  assert not np.allclose(ddpm.ddpm(predict, schedule, rng, shape, variance="beta",
                                    clip_x0=clip_x0), ancestral, atol=1e-2)


def test_ddim_eta0_with_perfect_denoiser_recovers_the_image():
  """A denoiser that knows x0 gives x0 back from pure noise in a few deterministic steps."""
  schedule = ddpm.Schedule.from_betas(ddpm.beta_schedule("linear", 1000))
  target = jnp.linspace(-0.9, 0.9, 2 * 4 * 4).reshape(2, 4, 4, 1)

  def predict(x, t):
    abar = schedule.alphas_cumprod[t][:, None, None, None]
    return target, (x - jnp.sqrt(abar) * target) / jnp.sqrt(1 - abar)

  out = ddpm.ddim(predict, schedule, jax.random.PRNGKey(0), target.shape, num_steps=10, eta=0.0)
  np.testing.assert_allclose(out, target, atol=1e-5)


def test_ddim_timesteps():
  np.testing.assert_array_equal(ddpm.ddim_timesteps(10, 10), np.arange(10))
  ts = ddpm.ddim_timesteps(1000, 50)
  assert len(ts) == 50 and ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
  with pytest.raises(ValueError, match="DDIM steps"):
    ddpm.ddim_timesteps(10, 11)


def test_method_sample_ddim_eta1_equals_ddpm(data_dir):
  """The same equivalence through the method's UNet, with perturbed (non-trivial) weights."""
  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.num_timesteps = 50
  state = methods.make(config).init(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.02 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), state.params)
  results = {}
  for sampler, eta in (("ddpm", 0.0), ("ddim", 1.0)):
    config.sample.sampler, config.sample.steps, config.sample.eta = sampler, 50, eta
    results[sampler] = jax.jit(methods.make(config).sample, static_argnums=2)(params, jax.random.PRNGKey(7), 4)
  assert results["ddpm"].shape == (4, 8, 8, 1)
  assert float(results["ddpm"].min()) >= -1 and float(results["ddpm"].max()) <= 1
  np.testing.assert_allclose(results["ddim"], results["ddpm"], atol=2e-4)


def _gan_config(data_dir):
  from genimg_jax import config as config_lib
  from helpers import REPO

  return config_lib.load(f"{REPO}/configs/dcgan_digits_cond.py", [
      f"--config.data.data_dir={data_dir}", "--config.model.z_dim=8", "--config.model.g_ch=8",
      "--config.model.d_ch=8"])


@pytest.mark.parametrize("family", ["ddpm", "gan"])
def test_image_i_is_drawn_with_fold_in_key_i_whatever_the_batch(data_dir, family):
  """functions.sampler: batches of 2 from 0 and 2 equal one batch of 4, and image i is method.sample of
  one image with key fold_in(key, i) (a conditional model: with class classes[i % len(classes)])."""
  from genimg_jax.parallel import functions
  from genimg_jax.parallel import mesh as mesh_lib

  config = tiny_config(data_dir) if family == "ddpm" else _gan_config(data_dir)
  method = methods.make(config)
  mesh = mesh_lib.make_mesh()
  params = jax.jit(method.init)(jax.random.PRNGKey(0)).ema_params
  if method.num_classes:  # Class-conditional batch norm starts the same for every class: move it.
    leaves, tree = jax.tree.flatten(params["params"])
    noisy = [x + 0.1 * jax.random.normal(jax.random.PRNGKey(i), x.shape) for i, x in enumerate(leaves)]
    params = dict(params, params=jax.tree.unflatten(tree, noisy))
  key = jax.random.PRNGKey(5)
  classes = (7, 2) if method.num_classes else None
  whole = functions.sampler(method, mesh, 4, classes)(params, key, 0)
  halves = np.concatenate([functions.sampler(method, mesh, 2, classes)(params, key, start) for start in (0, 2)])
  np.testing.assert_allclose(halves, whole, atol=1e-5)
  for i in (0, 3):
    labels = jnp.asarray([classes[i % 2]]) if classes else None
    alone = jax.jit(method.sample, static_argnums=2)(params, jax.random.fold_in(key, i), 1, labels)
    np.testing.assert_allclose(whole[i], np.asarray(alone)[0], atol=1e-5)
  if classes:  # Another class gives another image from the same noise.
    other = functions.sampler(method, mesh, 4, (0,))(params, key, 0)
    assert np.abs(other - whole).max() > 1e-3
