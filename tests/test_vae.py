"""The VAE method end to end: CLI training and eval, bits/dim falling, IWAE vs K, samples and grids."""

import copy
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax import methods, seeds
from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import ConfigError
from genimg_jax.evaluation import held_out
from genimg_jax.losses import elbo
from genimg_jax.losses import likelihoods as lk
from genimg_jax.methods import vae
from genimg_jax.train import workdir as workdir_lib
from helpers import REPO

CONFIGS = {name: os.path.join(REPO, "configs", f"{name}.py") for name in ("vae_digits", "vae_mnist", "vae_cifar10")}
STEPS = 200

# vae_digits shrunk for tests: 8x8 digits, a 2-level encoder/decoder, 8 latents, IWAE with K=8.
TINY_OVERRIDES = {
    "data.image_size": 8,
    "model.ch": 16,
    "model.ch_mult": (1, 2),
    "model.latent_dim": 8,
    "likelihood.num_mixtures": 3,
    "kl.warmup_steps": 50,
    "optimizer.learning_rate": 2e-3,
    "optimizer.warmup_steps": 0,
    "eval.iwae_samples": 8,
    "eval.iwae_chunk_size": 4,
    "train.batch_size": 32,
    "train.log_every": 50,
    "train.checkpoint_every": STEPS,
    "train.sample_every": STEPS // 2,
    "train.num_samples": 8,
}


def tiny_args(data_dir: str, **extra) -> list[str]:
  fields = dict(TINY_OVERRIDES, **{"data.data_dir": data_dir, "train.steps": STEPS}, **extra)
  return [f"--config.{k}={v}" for k, v in fields.items()]


def genimg(*args):
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """A tiny vae_digits run through the CLI (train, then eval): (workdir, config, eval metrics)."""
  workdir = str(tmp_path_factory.mktemp("vae") / "run")
  result = genimg("train", "--config", CONFIGS["vae_digits"], "--workdir", workdir, "--no_progress",
                  *tiny_args(data_dir))
  assert result.returncode == 0, result.stderr
  result = genimg("eval", "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(workdir, "eval", f"eval_{STEPS:07d}.json")) as f:
    metrics = json.load(f)["metrics"]["bpd"]
  return workdir, workdir_lib.read_config(workdir), metrics


@pytest.fixture(scope="module")
def trained(run):
  """(config, method, parts, EMA params of the trained run, eval batch of 64 images)."""
  workdir, config, _ = run
  method = methods.make(config)
  mesh, state, step = workdir_lib.restore(workdir, config, method)
  assert step == STEPS
  source = datasets.open_split(config.data, config.data.eval_split)
  batch = pipeline.eval_dataset(source, config.data, local_batch_size=64, process_index=0, process_count=1)[0]
  return config, method, mesh, vae.build(config), state.ema_params, jax.tree.map(jnp.asarray, batch)


@pytest.mark.slow
def test_cli_run_writes_samples_grids_and_eval_json(run):
  workdir, _, metrics = run
  pictures = sorted(os.listdir(os.path.join(workdir, "samples")))
  assert pictures == [f"{kind}_{step:07d}.png" for kind in ("interpolations", "reconstructions", "step")
                      for step in (STEPS // 2, STEPS)]
  assert metrics["split"] == "test" and metrics["num_examples"] == 288
  for key in ("neg_elbo_nats", "elbo_bpd", "recon_nats", "kl_nats", "iwae_nll_nats", "iwae_bpd"):
    assert np.isfinite(metrics[key]), key
  np.testing.assert_allclose(metrics["elbo_bpd"], metrics["neg_elbo_nats"] / (64 * np.log(2)), rtol=1e-5)
  np.testing.assert_allclose(metrics["neg_elbo_nats"], metrics["recon_nats"] + metrics["kl_nats"], rtol=1e-5)


@pytest.mark.slow
def test_training_lowers_eval_bits_per_dim(run, trained):
  _, _, metrics = run
  config, method, mesh, _, _, _ = trained
  initial = held_out.evaluate(config, method, mesh, jax.jit(method.init)(seeds.root_keys(config.seed)["init"]).params,
                              seeds.root_keys(0)["eval"])
  assert metrics["elbo_bpd"] < 0.8 * initial["elbo_bpd"], (initial, metrics)  # about 4.9 -> 3.7
  assert metrics["iwae_bpd"] < metrics["elbo_bpd"]  # K=8 already tightens the bound
  assert metrics["kl_nats"] > 1.0  # the latents carry information


@pytest.mark.slow
def test_iwae_with_one_sample_is_the_elbo_on_the_same_noise_and_rises_with_k(trained):
  _, _, _, parts, params, batch = trained
  x = batch["image"]
  mean, log_var = parts.encode(params, x)
  log_likelihood_fn = parts.log_likelihood_fn(params, x)
  rng = jax.random.PRNGKey(3)
  bound = jax.jit(elbo.importance_weighted_bound, static_argnums=(0, 4, 5))
  noise = elbo.importance_noise(rng, jnp.array([0]), mean.shape)[0]
  single, _, _ = jax.jit(elbo.single_sample_elbo, static_argnums=(0, 4))(log_likelihood_fn, mean, log_var, noise,
                                                                          False)
  np.testing.assert_allclose(bound(log_likelihood_fn, mean, log_var, rng, 1, 1), single, rtol=1e-5)
  totals = [float(bound(log_likelihood_fn, mean, log_var, rng, k, chunk).sum()) for k, chunk in ((1, 1), (64, 16))]
  assert totals[0] < totals[1], totals  # summed over 64 images: the expected gain is several nats


@pytest.mark.slow
def test_samples_and_image_grids(trained):
  config, method, _, parts, params, batch = trained
  samples = jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(0), 6)
  assert samples.shape == (6, 8, 8, 1) and samples.dtype == jnp.float32
  assert float(samples.min()) >= -1 and float(samples.max()) <= 1
  sampling = copy.deepcopy(config)
  sampling.sample.mode = "sample"
  drawn = jax.jit(methods.make(sampling).sample, static_argnums=2)
  first, again = drawn(params, jax.random.PRNGKey(0), 6), drawn(params, jax.random.PRNGKey(0), 6)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(lk.quantize(first), first)  # draws are 8-bit pixel values
  assert not np.array_equal(first, drawn(params, jax.random.PRNGKey(1), 6))

  grids = jax.jit(method.image_grids)(params, {"image": batch["image"][:8]}, jax.random.PRNGKey(0))
  # 8 images: m = 2, so 8 originals and their 8 reconstructions in alternating rows of 4.
  recon = np.asarray(grids["reconstructions"]).reshape(2, 2, 4, 8, 8, 1)
  np.testing.assert_array_equal(recon[:, 0].reshape(8, 8, 8, 1), batch["image"][:8])
  decoded_means = parts.likelihood.mean(parts.decode(params, parts.encode(params, batch["image"][:8])[0]))
  np.testing.assert_allclose(recon[:, 1].reshape(8, 8, 8, 1), decoded_means, atol=1e-5)
  # Interpolation row i runs from image 2i to image 2i + 1 (indices modulo 8).
  interp = np.asarray(grids["interpolations"]).reshape(8, 8, 8, 8, 1)
  assert interp.shape[:2] == (config.grids.interpolation_steps,) * 2
  np.testing.assert_allclose(interp[1, 0], decoded_means[2], atol=1e-5)
  np.testing.assert_allclose(interp[1, -1], decoded_means[3], atol=1e-5)
  assert not np.allclose(interp[1, 3], interp[1, 0], atol=1e-3)


def test_bernoulli_binarises_at_zero(data_dir):
  config = config_lib.load(CONFIGS["vae_digits"], tiny_args(data_dir, **{"likelihood.name": "bernoulli"}))
  values = lk.PIXEL_FLOATS[[0, 127, 128, 255]]
  np.testing.assert_array_equal(vae.build(config).targets(jnp.asarray(values)), [-1, -1, 1, 1])
  method = methods.make(config)
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  gray = jnp.asarray(lk.PIXEL_FLOATS[np.arange(32 * 64).reshape(32, 8, 8, 1) % 256])
  metrics = jax.jit(method.eval_step)(state.params, {"image": gray}, jax.random.PRNGKey(1))
  # Finite, so the gray pixels were binarised first (they have no Bernoulli probability).
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_load_and_validate(name):
  config = config_lib.load(CONFIGS[name], [])
  method = methods.make(config)
  assert config.method == "vae" and method.image_grids is not None
  assert method.image_shape == (config.data.image_size, config.data.image_size, config.data.channels)


@pytest.mark.parametrize("field,value", [
    ("model.latent_type", "'grid'"),
    ("model.latent_dim", 0),
    ("model.norm_groups", 5),
    ("data.image_size", 18),
    ("likelihood.name", "'gaussian'"),
    ("likelihood.num_mixtures", 0),
    ("kl.beta", -1.0),
    ("kl.free_bits", -0.1),
    ("sample.mode", "'mode'"),
    ("eval.iwae_samples", 0),
    ("eval.iwae_chunk_size", 300),
    ("grids.interpolation_steps", 1),
    ("ema.decay", 1.0),
])
def test_validation_errors_name_the_field(field, value):
  config = config_lib.load(CONFIGS["vae_digits"], [f"--config.{field}={str(value).strip(chr(39))}"])
  with pytest.raises(ConfigError) as e:
    methods.make(config)
  assert e.value.where == f"config.{field}"
  assert len(str(e.value).splitlines()) == 1
