"""Class conditioning of the diffusion processes: label dropout and classifier-free guidance
(diffusion/guidance.py), alone and through the method's samplers and train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from genimg_jax import methods
from genimg_jax.errors import ConfigError
from genimg_jax.diffusion import guidance
from genimg_jax.diffusion.flow import TIME_SCALE as FLOW_TIME_SCALE
from genimg_jax.diffusion.process import PROCESSES

NULL = 3


def _toy_network(calls=None):
  """out = x * (1 + label) + noise_label, a network whose conditional and unconditional outputs differ."""
  def network(x, noise_label, labels):
    if calls is not None:
      calls.append(x.shape[0])
    return x * (1.0 + labels[:, None]) + noise_label[:, None]

  return network


def test_label_dropout_replaces_labels_at_the_rate():
  labels = jnp.arange(20000, dtype=jnp.int32) % 3
  dropped = np.asarray(guidance.drop_labels(labels, jax.random.PRNGKey(0), 0.1, NULL))
  replaced = dropped != np.asarray(labels)
  assert np.all(dropped[replaced] == NULL) and replaced.mean() == pytest.approx(0.1, abs=0.006)
  np.testing.assert_array_equal(guidance.drop_labels(labels, jax.random.PRNGKey(0), 0.0, NULL), labels)


def test_guidance_is_the_formula_inside_the_interval_and_conditional_outside():
  x, labels = jnp.ones((4, 2)), jnp.array([0, 1, 2, 1], jnp.int32)
  network, identity = _toy_network(), lambda noise_label: noise_label
  cond = network(x, jnp.full((4,), 0.5), labels)
  uncond = network(x, jnp.full((4,), 0.5), jnp.full((4,), NULL))
  f = guidance.guided(network, labels, NULL, 1.5, (0.2, 1.0), identity)
  np.testing.assert_allclose(f(x, jnp.full((4,), 0.5)), cond + 1.5 * (cond - uncond), rtol=1e-6)
  np.testing.assert_allclose(f(x, jnp.full((4,), 2.0)), network(x, jnp.full((4,), 2.0), labels))
  np.testing.assert_allclose(f(x, jnp.full((4,), 0.1)), network(x, jnp.full((4,), 0.1), labels))


def test_guidance_weight_zero_is_the_conditional_model_in_one_pass():
  calls = []
  x, labels = jnp.ones((4, 2)), jnp.array([0, 1, 2, 1], jnp.int32)
  f = guidance.guided(_toy_network(calls), labels, NULL, 0.0, (0.0, float("inf")), lambda n: n)
  np.testing.assert_array_equal(f(x, jnp.zeros(4)), _toy_network()(x, jnp.zeros(4), labels))
  assert calls == [4]


def test_guiding_towards_the_null_label_is_the_unconditional_model():
  x, null = jnp.ones((4, 2)), jnp.full((4,), NULL, jnp.int32)
  f = guidance.guided(_toy_network(), null, NULL, 4.0, (0.0, float("inf")), lambda n: n)
  np.testing.assert_allclose(f(x, jnp.zeros(4)), _toy_network()(x, jnp.zeros(4), null))


@pytest.fixture(scope="module")
def conditional(data_dir):
  """A tiny class-conditional flow model with perturbed (non-trivial) weights, and a make(overrides)."""
  def make(**sample):
    config = tiny_config(data_dir)
    config.unlock()
    config.diffusion.process, config.model.num_classes = "flow", 10
    config.sample.sampler, config.sample.steps, config.sample.preview_sampler = "euler", 4, ""
    for field, value in sample.items():
      config.sample[field] = value
    return methods.make(config)

  params = make().init(jax.random.PRNGKey(0)).params
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
  return make, params


def _draw(method, params, labels):
  return np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(3), len(labels),
                                                             jnp.asarray(labels, jnp.int32)))


def test_guided_sampler_at_the_null_label_equals_the_unconditional_sampler(conditional):
  make, params = conditional
  null = [10] * 4
  np.testing.assert_allclose(_draw(make(guidance=3.0), params, null), _draw(make(), params, null), atol=1e-5)


def test_guidance_changes_samples_only_inside_its_interval(conditional):
  make, params = conditional
  labels = [0, 1, 2, 3]
  plain, guided = _draw(make(), params, labels), _draw(make(guidance=3.0), params, labels)
  assert np.abs(guided - plain).max() > 1e-2
  # Euler-4 evaluates t = 1, 0.75, 0.5, 0.25: sigma = t / (1 - t) = inf, 3, 1, 1/3. None lie in [5, 6].
  outside = _draw(make(guidance=3.0, guidance_interval=(5.0, 6.0)), params, labels)
  np.testing.assert_allclose(outside, plain, atol=1e-6)
  assert make().num_classes == 10


def _levels_of_each_evaluation(process, sampler, steps):
  """EDM sigma (float64) of each network evaluation of one draw, from the samplers' published grids."""
  if process == "ddpm":
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 100, dtype=np.float64))
    timesteps = np.arange(100) if sampler == "ddpm" else np.round(np.linspace(0, 99, steps)).astype(int)
    return np.sqrt((1 - abar[timesteps]) / abar[timesteps])
  if process == "edm":  # Heun at sigma_i for every step, and at sigma_{i+1} but for the last (Euler) step
    ramp = np.arange(steps) / (steps - 1)
    sigmas = (80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    return np.concatenate([sigmas, sigmas[1:]])
  t = np.linspace(1, 0, steps + 1)  # flow: Euler at t_i, Heun at t_i and t_{i+1}
  t = np.concatenate([t[:-1], t[1:]]) if sampler == "heun" else t[:-1]
  with np.errstate(divide="ignore"):
    return t / (1 - t)


@pytest.mark.parametrize("process,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("edm", "heun"), ("flow", "euler"),
                                             ("flow", "heun"), ("flow", "euler_maruyama")])
def test_network_passes_count_two_per_guided_evaluation(data_dir, process, sampler):
  def passes(**sample):
    config = tiny_config(data_dir)
    config.unlock()
    config.diffusion.process, config.model.num_classes = process, 10
    config.sample.sampler, config.sample.steps, config.sample.preview_sampler = sampler, 5, ""
    for field, value in sample.items():
      config.sample[field] = value
    method = methods.make(config)
    return method.sample_nfe, method.sample_network_passes

  levels = _levels_of_each_evaluation(process, sampler, 5)
  nfe, unguided = passes()
  assert unguided == nfe == len(levels)
  assert passes(guidance=1.0) == (nfe, 2 * nfe)
  inside = np.sum((levels >= 0.5) & (levels <= 10.0))
  assert 0 < inside < nfe
  assert passes(guidance=1.0, guidance_interval=(0.5, 10.0)) == (nfe, nfe + inside)


def test_noise_level_of_each_process_is_edm_sigma():
  config = tiny_config("unused")
  schedule_sigma = PROCESSES["ddpm"](config, None, (8, 8, 1)).sigma_of
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 100, dtype=np.float64))
  np.testing.assert_allclose(float(schedule_sigma(jnp.int32(40))), np.sqrt((1 - abar[40]) / abar[40]), rtol=1e-5)
  edm = PROCESSES["edm"](config, None, (8, 8, 1)).sigma_of
  assert float(edm(jnp.log(jnp.float32(2.5)) / 4)) == pytest.approx(2.5, rel=1e-6)
  flow = PROCESSES["flow"](config, None, (8, 8, 1)).sigma_of
  assert float(flow(jnp.float32(FLOW_TIME_SCALE * 0.8))) == pytest.approx(4.0, rel=1e-5)


def test_dropped_labels_reach_the_loss_as_the_null_label(data_dir):
  """A step with label dropout ~1 on real labels equals a step without dropout on null labels."""
  def step(rate, labels):
    config = tiny_config(data_dir)
    config.unlock()
    config.model.num_classes, config.diffusion.label_dropout = 10, rate
    method = methods.make(config)
    state = method.init(jax.random.PRNGKey(0))  # Perturbed: at init no output depends on the labels.
    state = state.replace(params=jax.tree.map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                                              state.params))
    batch = {"image": jnp.zeros((16, 8, 8, 1)), "label": jnp.asarray(labels, jnp.int32)}
    return float(method.train_step(state, batch, jax.random.PRNGKey(1))[1]["loss"])

  real, null = np.arange(16) % 10, np.full(16, 10)
  unconditional = step(0.0, null)
  assert step(1 - 1e-7, real) == unconditional and step(0.0, real) != unconditional


@pytest.mark.parametrize("fields,words", [
    ({"sample.guidance": 2.0}, "sample.guidance: classifier-free guidance needs a class-conditional model"),
    ({"model.num_classes": 10, "diffusion.label_dropout": 0.0, "sample.guidance": 2.0},
     "needs an unconditional model trained alongside"),
    ({"model.num_classes": 10, "sample.guidance_interval": (2.0, 1.0)}, "sample.guidance_interval"),
    ({"diffusion.label_dropout": 1.0}, "diffusion.label_dropout: must be in [0, 1)"),
])
def test_bad_conditioning_settings_name_the_field(fields, words):
  config = tiny_config("unused")
  config.unlock()
  for field, value in fields.items():
    section, name = field.split(".")
    config[section][name] = value
  with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
    methods.make(config)
