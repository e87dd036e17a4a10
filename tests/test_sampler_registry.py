"""Every sampler of every process is one registered `Sampler` record (draw + nfe): a new one registered for
each process is selected by config like a built-in, a user's is selected as 'module:attribute', and for
every registered sampler the NFE the method reports equals the network calls a draw actually makes,
counted at run time inside the compiled sampler."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import methods
from genimg_jax.diffusion import ddpm, edm, flow
from genimg_jax.diffusion.samplers import every_image, sampler, steps_nfe
from genimg_jax.errors import ConfigError
from helpers import readme_block, tiny_config

CALLS: list[int] = []
STEPS = 4


class CountingDenoiser(nn.Module):
  """A one-parameter denoiser that counts its calls: each appends its batch size to CALLS when it runs."""

  @nn.compact
  def __call__(self, x, noise_label, labels=None, train=False):
    jax.debug.callback(lambda n: CALLS.append(int(n)), jnp.asarray(x.shape[0]))
    scale = self.param("scale", nn.initializers.constant(0.5), ())
    return scale * jnp.tanh(x) + 1e-3 * noise_label.reshape((-1,) + (1,) * (x.ndim - 1))


def counting_denoiser(config, image_shape, dtype):
  """The architecture as a user gives it: model.arch = 'test_sampler_registry:counting_denoiser'."""
  return CountingDenoiser()


# ---- One new sampler per process, registered like a built-in. ---------------------------------

@sampler(nfe=lambda process, options: options.steps + 1)
def ddim_then_denoise(process, net, rng, shape, options):
  """DDIM over options.steps timesteps, then the x0 estimate at t = 0: steps + 1 calls."""
  predict = process.predictor(net)
  x = ddpm.ddim(predict, process.schedule, rng, shape, num_steps=options.steps, eta=0.0)
  return predict(x, jnp.zeros((shape[0],), jnp.int32))[0]


@sampler(nfe=steps_nfe)
def edm_euler(process, net, rng, shape, options):
  """Euler on the probability-flow ODE over EDM's levels: one call per step."""
  sigmas = edm.sigma_steps(options.steps, process.sigma_min, process.sigma_max, process.rho)
  drift = edm.ode_drift(process.denoiser(net))
  x = sigmas[0] * jax.random.normal(rng, shape)
  for level, level_next in zip(sigmas[:-1], sigmas[1:]):
    x = x + (level_next - level) * drift(x, every_image(level, x))
  return x


def _midpoint_step(velocity, x, t, t_next):
  half = x + 0.5 * (t_next - t) * velocity(x, every_image(t, x))
  return x + (t_next - t) * velocity(half, every_image(0.5 * (t + t_next), x))


@sampler(nfe=lambda process, options: 2 * options.steps)
def flow_midpoint(process, net, rng, shape, options):
  """The explicit midpoint rule: two calls per step."""
  return flow.ode(process.velocity(net), flow.times(options.steps), flow.prior(rng, shape), _midpoint_step)


@sampler(nfe=lambda process, options: 1)
def one_jump(process, net, rng, shape, options):
  """A user's flow sampler, selected as 'module:attribute': x_0 = x_1 - v(x_1, 1)."""
  x1 = flow.prior(rng, shape)
  return x1 - process.velocity(net)(x1, every_image(1.0, x1))


def not_a_sampler(process, net, rng, shape, options):
  """A draw function not wrapped in a Sampler record."""
  return flow.prior(rng, shape)


NEW_SAMPLERS = {"ddpm": (ddpm.SAMPLERS, "ddim_then_denoise", ddim_then_denoise),
                "edm": (edm.SAMPLERS, "euler", edm_euler),
                "flow": (flow.SAMPLERS, "midpoint", flow_midpoint)}


@pytest.fixture
def registered():
  """Registers NEW_SAMPLERS with `register`, as a module would, and takes them out afterwards."""
  for registry, name, record in NEW_SAMPLERS.values():
    registry.register(name)(record)
  yield
  for registry, name, _ in NEW_SAMPLERS.values():
    del registry[name], registry.fields[name]


def _config(data_dir, process: str, sampler_name: str):
  config = tiny_config(data_dir)
  config.unlock()
  config.model.arch = f"{__name__}:counting_denoiser"
  config.diffusion.process, config.diffusion.num_timesteps = process, 20
  config.sample.sampler, config.sample.steps, config.sample.preview_sampler = sampler_name, STEPS, ""
  config.sample.preview_steps = STEPS
  return config


def _counted_calls(config) -> tuple[int, int, np.ndarray]:
  """(reported NFE, network calls of one draw of 3 images, the images)."""
  method = methods.make(config)
  params = jax.jit(method.init)(jax.random.PRNGKey(0)).ema_params
  CALLS.clear()
  images = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 3))
  jax.effects_barrier()
  assert set(CALLS) == {3}, f"every call sees the whole batch of 3, got {set(CALLS)}"
  return method.sample_nfe, len(CALLS), images


@pytest.mark.parametrize("process", ["ddpm", "edm", "flow"])
def test_every_registered_sampler_reports_the_network_calls_it_makes(data_dir, registered, process):
  registry, new_name, _ = NEW_SAMPLERS[process]
  assert new_name in registry and len(registry) >= 2
  counts = {}
  for name in sorted(registry):
    nfe, calls, images = _counted_calls(_config(data_dir, process, name))
    assert np.all(np.isfinite(images)) and images.shape == (3, 8, 8, 1)
    counts[name] = (nfe, calls)
  assert all(nfe == calls for nfe, calls in counts.values()), counts
  # The counts differ between samplers, so the one selected by config is the one that ran.
  expected_new = {"ddpm": STEPS + 1, "edm": STEPS, "flow": 2 * STEPS}[process]
  assert counts[new_name] == (expected_new, expected_new)
  if process == "ddpm":
    assert counts["ddpm"] == (20, 20) and counts["ddim"] == (STEPS, STEPS)


def test_a_user_sampler_is_selected_as_module_attribute_and_draws_what_it_defines(data_dir):
  config = _config(data_dir, "flow", f"{__name__}:one_jump")
  nfe, calls, images = _counted_calls(config)
  assert (nfe, calls) == (1, 1)
  method = methods.make(config)
  params = jax.jit(method.init)(jax.random.PRNGKey(0)).ema_params
  net = lambda x, label: CountingDenoiser().apply({"params": params}, x, label)
  x1 = flow.prior(jax.random.PRNGKey(1), images.shape)
  np.testing.assert_allclose(images, np.clip(x1 - net(x1, jnp.full((3,), 999.0)), -1, 1), atol=1e-6)


def test_the_guide_s_sampler_runs_as_its_file_and_reports_its_calls(data_dir, tmp_path, monkeypatch):
  """docs/diffusion.md's my_samplers.py, selected from the current directory as the guide says."""
  (tmp_path / "my_samplers.py").write_text(readme_block("# my_samplers.py", document="docs/diffusion.md"))
  monkeypatch.chdir(tmp_path)
  monkeypatch.delitem(sys.modules, "my_samplers", raising=False)
  assert _counted_calls(_config(data_dir, "flow", "my_samplers:midpoint"))[:2] == (2 * STEPS, 2 * STEPS)


def test_a_function_that_is_not_a_sampler_record_is_refused(data_dir):
  config = _config(data_dir, "flow", f"{__name__}:not_a_sampler")
  with pytest.raises(ConfigError,
                     match=r"config.sample.sampler: '\S+:not_a_sampler' is a function, not a Sampler: decorate"):
    methods.make(config)


@pytest.mark.parametrize("process,sampler_name,names", [
    ("edm", "ddim", "EDM sampler 'ddim'; built-in: heun"),
    ("flow", "ddpm", "flow sampler 'ddpm'; built-in: euler, euler_maruyama, heun"),
    ("ddpm", "heun", "DDPM sampler 'heun'; built-in: ddim, ddpm")])
def test_a_sampler_of_another_process_is_refused_with_the_process_names(data_dir, process, sampler_name, names):
  with pytest.raises(ConfigError, match=f"^config.sample.sampler: unknown {names}; or give your own as "
                                        "'module:attribute'$"):
    methods.make(_config(data_dir, process, sampler_name))


def test_a_sampler_name_is_registered_once():
  with pytest.raises(ValueError, match="DDPM sampler 'ddim' is registered twice"):
    ddpm.SAMPLERS.register("ddim")(ddim_then_denoise)
  assert ddpm.SAMPLERS["ddim"] is not ddim_then_denoise
