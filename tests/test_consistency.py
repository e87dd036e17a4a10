"""Improved consistency training (diffusion/consistency.py) against independent references: the
parameterisation's coefficients and the boundary condition f(x, sigma_min) = x (UNet and DiT at random
parameters, through methods.make), the pseudo-Huber distance, the curriculum N(k) and the noise levels in
float64, the loss at the exact consistency function of a point mass (zero) and of Gaussian data (its
float64 expectation), samples of the exact Gaussian consistency function, CM's Algorithm 1, and the config
path: one compiled train step, reported NFE = counted network calls, bad fields named."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from genimg_jax import methods
from genimg_jax.diffusion import consistency, edm
from genimg_jax.diffusion.process import PROCESSES
from genimg_jax.diffusion.samplers import sampler
from genimg_jax.errors import ConfigError
from helpers import tiny_config
from test_sampler_registry import _config, _counted_calls

SIGMA_MIN, SIGMA_MAX, SD = consistency.SIGMA_MIN, consistency.SIGMA_MAX, consistency.SIGMA_DATA


def _consistency_config(data_dir, **fields):
  config = tiny_config(data_dir)
  config.unlock()
  config.diffusion.process = "consistency"
  config.sample.sampler, config.sample.preview_sampler = "onestep", ""
  for name, value in fields.items():
    section, key = name.split(".")
    config[section][key] = value
  return config


# ---- The parameterisation. --------------------------------------------------------------------

def test_scalings_are_the_closed_forms_and_exact_at_sigma_min():
  sigma = np.concatenate([[SIGMA_MIN], np.geomspace(SIGMA_MIN * 1.01, SIGMA_MAX, 30)])
  got = [np.asarray(c, np.float64) for c in consistency.scalings(jnp.asarray(sigma, jnp.float32))]
  sigma = np.asarray(jnp.asarray(sigma, jnp.float32), np.float64)  # the float32 levels the coefficients saw
  np.testing.assert_allclose(got[0], SD**2 / ((sigma - SIGMA_MIN) ** 2 + SD**2), rtol=1e-6)
  np.testing.assert_allclose(got[1], (sigma - SIGMA_MIN) * SD / np.sqrt(SD**2 + sigma**2), rtol=2e-5, atol=1e-9)
  np.testing.assert_allclose(got[2], 1 / np.sqrt(sigma**2 + SD**2), rtol=1e-6)
  np.testing.assert_allclose(got[3], np.log(sigma) / 4, rtol=1e-6)
  assert got[0][0] == 1.0 and got[1][0] == 0.0  # exactly, not approximately


@sampler(nfe=lambda process, options: 1)
def boundary_probe(process, net, rng, shape, options):
  """A user sampler (sample.sampler 'test_consistency:boundary_probe'): f(x, sigma) for x uniform in (-0.9, 0.9)
  from its rng, sigma = sigma_min for the first half of the images and 2 sigma_min for the rest; one network
  evaluation through the method's sampling network."""
  x = jax.random.uniform(rng, shape, jnp.float32, -0.9, 0.9)
  sigma = jnp.where(jnp.arange(shape[0]) < shape[0] // 2, 1.0, 2.0) * process.sigma_min
  return process.consistency_function(net)(x, sigma.astype(jnp.float32))


# Small enough to compile quickly: the property holds for any widths.
ARCHS = {"unet": {"model.ch": 8, "model.ch_mult": (1,), "model.attn_resolutions": (8,)},
         "dit": {"model.arch": "dit", "model.patch_size": 2, "model.hidden_size": 32, "model.depth": 1,
                 "model.num_heads": 2}}


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_boundary_condition_holds_exactly_at_every_initialisation(data_dir, arch):
  """f(x, sigma_min) = x bit for bit at random parameters (every leaf perturbed, so the zero-initialised output
  layers do not make F = 0), while at 2 sigma_min the network visibly contributes."""
  probe = {"sample.sampler": f"{__name__}:boundary_probe"}
  method = methods.make(_consistency_config(data_dir, **ARCHS[arch], **probe))
  sample = jax.jit(method.sample, static_argnums=2)

  @jax.jit
  def random_params(seed):
    leaves, tree = jax.tree.flatten(method.init(jax.random.PRNGKey(seed)).params)
    keys = jax.random.split(jax.random.PRNGKey(100 + seed), len(leaves))
    return tree.unflatten([p + 0.5 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

  for seed in range(3):
    params, rng = random_params(seed), jax.random.PRNGKey(seed)
    got = np.asarray(sample(params, rng, 8))
    x = np.asarray(jax.random.uniform(rng, (8, 8, 8, 1), jnp.float32, -0.9, 0.9))
    np.testing.assert_array_equal(got[:4], x[:4])
    assert np.min(np.max(np.abs(got[4:] - x[4:]), axis=(1, 2, 3))) > 1e-5


# ---- The distance and the discretisation. -----------------------------------------------------

def test_pseudo_huber_is_the_formula_per_image_even_far_below_c():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 4, 4, 3))
  for scale in (1.0, 1e-2, 1e-6):
    b = (a + scale * rng.normal(size=a.shape)).astype(np.float32)
    c = 0.00054 * math.sqrt(48)
    want = np.sqrt(np.sum((a.astype(np.float32) - b.astype(np.float64)) ** 2, axis=(1, 2, 3)) + c**2) - c
    got = consistency.pseudo_huber(jnp.asarray(a, jnp.float32), jnp.asarray(b), c)
    assert got.shape == (6,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)  # sqrt(. + c^2) - c in float32 is off by 3% at scale 1e-6


def _paper_num_scales(k, total, s0, s1):
  period = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
  return min(s0 * 2 ** math.floor(k / period), s1) + 1


@pytest.mark.parametrize("total,s0,s1", [(400_000, 10, 1280), (1200, 10, 40), (1000, 3, 50), (777, 7, 7)])
def test_curriculum_is_the_paper_formula(total, s0, s1):
  period = consistency.curriculum_period(total, s0, s1)
  ks = np.unique(np.concatenate([np.arange(0, 3 * total, max(total // 97, 1)),
                                 np.arange(10) * period - 1, np.arange(10) * period]))
  ks = ks[ks >= 0]
  traced = jax.jit(lambda k: consistency.num_scales(k, total, s0, s1))
  for k in ks:
    want = _paper_num_scales(int(k), total, s0, s1)
    assert int(consistency.num_scales(int(k), total, s0, s1)) == want == int(traced(jnp.int32(k))), k


def test_curriculum_of_ict_on_cifar10_doubles_every_50000_steps():
  n = lambda k: int(consistency.num_scales(k, 400_000, 10, 1280))
  assert [n(k) for k in (0, 49_999, 50_000, 100_000, 150_000, 349_999, 350_000, 399_999)] == [
      11, 11, 21, 41, 81, 641, 1281, 1281]


@pytest.mark.parametrize("n", [2, 11, 41, 1281])
def test_noise_levels_and_their_probabilities_are_the_paper_formulas(n):
  size = 1281
  got = np.asarray(consistency.karras_levels(jnp.int32(n), size), np.float64)
  i = np.arange(1, n + 1)
  want = (SIGMA_MIN ** (1 / 7) + (i - 1) / (n - 1) * (SIGMA_MAX ** (1 / 7) - SIGMA_MIN ** (1 / 7))) ** 7
  np.testing.assert_allclose(got[:n], want, rtol=3e-6)
  assert got[0] == np.float32(SIGMA_MIN) and np.all(got[n - 1:] == np.float32(SIGMA_MAX))
  log_weights = consistency.level_log_weights(jnp.asarray(got, jnp.float32), jnp.int32(n))
  assert log_weights.shape == (size - 1,) and np.all(np.isneginf(log_weights[n - 1:]))
  cdf = special.erf((np.log(want) + 1.1) / (np.sqrt(2) * 2.0))
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(log_weights))[:n - 1], np.diff(cdf) / (cdf[-1] - cdf[0]),
                             rtol=2e-5, atol=3e-7)  # erf differences in float32


# ---- The loss at exact consistency functions. -------------------------------------------------

def _exact_network(f_star):
  """The network F for which c_skip x + c_out F(c_in x, c_noise) = f_star(x, sigma), as a ctx network."""
  def network(params, x_in, c_noise, rng, labels=None):
    sigma = jnp.exp(4.0 * c_noise).reshape((-1,) + (1,) * (x_in.ndim - 1))
    c_skip, c_out, c_in, _ = consistency.scalings(sigma)
    x = x_in / c_in
    return jnp.where(c_out > 0, (f_star(params, x, sigma) - c_skip * x) / jnp.where(c_out > 0, c_out, 1.0), 0.0)

  return network


def _context(network, d, s1=10, total=1000):
  return consistency.ConsistencyContext(network, huber_c=0.00054 * math.sqrt(d), total_steps=total, s1=s1)


def test_loss_is_zero_at_the_exact_consistency_function_of_a_point_mass():
  """For data at mu, x_0 + sigma z lies on the ODE trajectory mu + sigma z for every sigma, so CT's pairs share a
  trajectory and the exact f(x, sigma) = mu + (x - mu) sigma_min / sigma makes the loss vanish; f built for a
  wrong mu does not."""
  mu = 0.3
  f_star = lambda center, x, sigma: center + (x - center) * SIGMA_MIN / sigma
  batch = {"image": jnp.full((512, 4, 4, 1), mu, jnp.float32)}
  for s1, step in ((10, None), (1280, 350_000)):  # N = 11 and, through the curriculum, 1281
    ctx = _context(_exact_network(f_star), 16, s1=s1, total=400_000)
    loss_fn = jax.jit(lambda center: consistency.consistency_loss(center, batch, jax.random.PRNGKey(s1), ctx=ctx,
                                                                  step=step))
    loss, metrics = loss_fn(mu)
    assert int(metrics["num_scales"]) == s1 + 1
    assert float(loss) < 1e-6
    assert float(loss_fn(mu + 0.05)[0]) > 0.05


def _gaussian_f_star(s):
  """The exact consistency function of x_0 ~ N(0, s^2 I): the ODE trajectory through x at sigma is x sqrt(s^2 +
  sigma'^2) / sqrt(s^2 + sigma^2) at sigma', so f(x, sigma) = x sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma^2)."""
  return lambda params, x, sigma: x * jnp.sqrt(s**2 + SIGMA_MIN**2) / jnp.sqrt(s**2 + sigma**2)


def test_loss_on_gaussian_data_at_the_exact_function_is_its_float64_expectation():
  """CT replaces the trajectory by the pair x_0 + sigma_i z, x_0 + sigma_{i+1} z, so even the exact f has a
  non-zero loss: delta = A x_0 + B z with A = a_{i+1} - a_i, B = a_{i+1} sigma_{i+1} - a_i sigma_i,
  a = sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma^2); ||delta||^2 = (A^2 s^2 + B^2) chi^2_D, so the loss is
  sum_i p_i / (sigma_{i+1} - sigma_i) E[sqrt(v_i chi^2_D + c^2) - c], integrated here in float64."""
  s, d, n = 0.5, 4, 11
  sigma = (SIGMA_MIN ** (1 / 7) + np.arange(n) / (n - 1) * (SIGMA_MAX ** (1 / 7) - SIGMA_MIN ** (1 / 7))) ** 7
  a = np.sqrt(s**2 + SIGMA_MIN**2) / np.sqrt(s**2 + sigma**2)
  v = np.diff(a) ** 2 * s**2 + np.diff(a * sigma) ** 2
  c = 0.00054 * math.sqrt(d)
  cdf = special.erf((np.log(sigma) + 1.1) / (np.sqrt(2) * 2.0))
  p = np.diff(cdf) / (cdf[-1] - cdf[0])
  huber = [integrate.quad(lambda q: (np.sqrt(vi * q + c**2) - c) * stats.chi2.pdf(q, d), 0, np.inf)[0] for vi in v]
  want = np.sum(p / np.diff(sigma) * np.array(huber))

  ctx = _context(_exact_network(_gaussian_f_star(s)), d, total=1000)
  loss_fn = jax.jit(lambda x0, rng: consistency.consistency_loss(None, {"image": x0}, rng, ctx=ctx, step=0)[0])
  losses = []
  for seed in range(8):
    data_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
    losses.append(float(loss_fn(s * jax.random.normal(data_rng, (16384, 2, 2, 1)), rng)))
  standard_error = np.std(losses) / np.sqrt(len(losses))
  assert np.mean(losses) == pytest.approx(want, abs=4 * standard_error)
  assert standard_error < 0.01 * want  # the comparison is sharp enough to see a wrong level law or weight


# ---- The samplers. ----------------------------------------------------------------------------

def test_one_and_two_step_samples_of_the_exact_gaussian_function_have_its_std(data_dir):
  s = 0.5
  config = _consistency_config(data_dir, **{"diffusion.ct_sample_sigmas": (0.821,), "sample.steps": 2})
  exact = _exact_network(_gaussian_f_star(s))
  process = PROCESSES["consistency"](config, lambda p, x, c, rng, train, labels=None: exact(p, x, c, rng), (8, 8, 1))
  net = lambda x, c_noise: exact(None, x, c_noise, None)
  # The sample is the trajectory's point at sigma_min, N(0, s^2 + sigma_min^2) up to the start's s/sigma_max.
  var_1 = (s**2 + SIGMA_MIN**2) * SIGMA_MAX**2 / (s**2 + SIGMA_MAX**2)
  var_2 = (var_1 + 0.821**2 - SIGMA_MIN**2) * (s**2 + SIGMA_MIN**2) / (s**2 + 0.821**2)
  for name, var in (("onestep", var_1), ("multistep", var_2)):
    x = consistency.SAMPLERS[name](process, net, jax.random.PRNGKey(0), (512, 8, 8, 1), config.sample)
    assert np.std(np.asarray(x)) == pytest.approx(math.sqrt(var), rel=0.015)
    assert abs(np.mean(np.asarray(x))) < 0.01


def test_multistep_is_algorithm_1_over_its_levels(data_dir):
  process = PROCESSES["consistency"](_consistency_config(data_dir), None, (8, 8, 1))
  np.testing.assert_allclose(process.sampling_levels(3), edm.sigma_steps(4)[:3], rtol=1e-12)
  assert process.sampling_levels(1).tolist() == [SIGMA_MAX]
  c_noise = consistency.scalings(jnp.float32(2.5))[3]
  assert float(process.sigma_of(c_noise)) == pytest.approx(2.5, rel=1e-6)  # the guidance interval's sigma
  levels = np.array([80.0, 3.0, 0.821, 0.1])
  f = lambda x, sigma: 0.5 * x + 0.01 * sigma.reshape((-1, 1))
  rng, shape = jax.random.PRNGKey(3), (5, 7)
  got = consistency.multistep(f, levels, rng, shape)
  z = [np.asarray(jax.random.normal(jax.random.fold_in(rng, j), shape), np.float64) for j in range(4)]
  x = 0.5 * levels[0] * z[0] + 0.01 * levels[0]
  for j in range(1, 4):
    x = 0.5 * (x + np.sqrt(levels[j] ** 2 - SIGMA_MIN**2) * z[j]) + 0.01 * levels[j]
  np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,fields,calls", [
    ("onestep", {}, 1), ("multistep", {}, 4),
    ("multistep", {"sample.steps": 2, "diffusion.ct_sample_sigmas": (0.821,)}, 2)])
def test_each_consistency_sampler_reports_the_network_calls_it_makes(data_dir, name, fields, calls):
  config = _config(data_dir, "consistency", name)
  for field, value in fields.items():
    section, key = field.split(".")
    config[section][key] = value
  nfe, counted, images = _counted_calls(config)
  assert (nfe, counted) == (calls, calls) and np.all(np.isfinite(images))
  assert set(consistency.SAMPLERS) == {"onestep", "multistep"}


# ---- The config path. -------------------------------------------------------------------------

COUNTING = {"model.arch": "test_sampler_registry:counting_denoiser"}  # a one-parameter network: compiles fast


def test_a_consistency_run_trains_compiled_once_follows_the_curriculum_and_samples(data_dir):
  """The method gives the loss the state's step: 20 steps, s0 = 10, s1 = 20, so K' = 10 and N is 11 until
  step 10, then 21."""
  method = methods.make(_consistency_config(data_dir, **COUNTING, **{"diffusion.ct_s1": 20, "train.steps": 20}))
  traces = []

  def step(state, batch, rng):
    traces.append(1)
    return method.train_step(state, batch, rng)

  step = jax.jit(step)
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1), jnp.float32, -1, 1),
           "label": jnp.zeros((16,), jnp.int32)}
  for i in range(3):
    state, metrics = step(state, batch, jax.random.PRNGKey(10 + i))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["num_scales"]) == 11
  state, metrics = step(state.replace(step=jnp.full_like(state.step, 10)), batch, jax.random.PRNGKey(13))
  assert float(metrics["num_scales"]) == 21
  assert len(traces) == 1 and int(state.step) == 11
  assert float(metrics["grad_norm"]) > 0
  one_step = jax.jit(method.sample, static_argnums=2)
  assert method.sample_nfe == 1 and np.all(np.isfinite(one_step(state.ema_params, jax.random.PRNGKey(2), 2)))
  assert set(jax.jit(method.eval_step)(state.ema_params, batch, jax.random.PRNGKey(3))) == {"loss", "num_scales"}
  two_step = methods.make(_consistency_config(data_dir, **COUNTING, **{"sample.sampler": "multistep",
                                                                        "sample.steps": 2}))
  assert two_step.sample_nfe == 2
  assert np.all(np.isfinite(jax.jit(two_step.sample, static_argnums=2)(state.ema_params, jax.random.PRNGKey(2), 2)))


def test_the_curriculum_runs_inside_one_compiled_loss_when_given_the_step():
  network = lambda params, x_in, c_noise, rng, labels=None: params * jnp.tanh(x_in) + 0.1 * c_noise.reshape(-1, 1, 1, 1)
  ctx = _context(network, 16, s1=80, total=400)  # K' = 100: N = 11, 21, 41, 81
  traces = []

  def loss(params, step):
    traces.append(1)
    return jax.value_and_grad(consistency.consistency_loss, has_aux=True)(
        params, {"image": jnp.zeros((8, 4, 4, 1))}, jax.random.PRNGKey(0), ctx=ctx, step=step)

  loss = jax.jit(loss)
  seen = [int(loss(jnp.float32(0.5), jnp.int32(k))[0][1]["num_scales"]) for k in (0, 99, 100, 250, 399, 1000)]
  assert seen == [11, 11, 21, 41, 81, 81] and len(traces) == 1


@pytest.mark.parametrize("fields,field", [
    ({"diffusion.ct_s0": 0}, "diffusion.ct_s0"),
    ({"diffusion.ct_s1": 5}, "diffusion.ct_s1"),
    ({"diffusion.ct_p_std": 0.0}, "diffusion.ct_p_std"),
    ({"diffusion.ct_huber_scale": 0.0}, "diffusion.ct_huber_scale"),
    ({"diffusion.ct_sample_sigmas": (0.5, 1.0)}, "diffusion.ct_sample_sigmas"),
    ({"diffusion.ct_sample_sigmas": (90.0,)}, "diffusion.ct_sample_sigmas"),
    ({"diffusion.ct_sample_sigmas": (0.821,), "sample.sampler": "multistep", "sample.steps": 4},
     "diffusion.ct_sample_sigmas"),
    ({"diffusion.sigma_min": 100.0}, "diffusion.sigma_min"),
    ({"sample.steps": 0}, "sample.steps"),
    ({"sample.sampler": "heun"}, "sample.sampler")])
def test_bad_fields_are_refused_naming_the_field(data_dir, fields, field):
  with pytest.raises(ConfigError, match=f"^config\\.{re.escape(field)}: "):
    methods.make(_consistency_config(data_dir, **fields))
