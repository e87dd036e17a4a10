"""The autoregressive method end to end: it learns, configs validate, and the CLI runs it."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax import images, methods
from genimg_jax.data import datasets, digits, pipeline
from genimg_jax.errors import ConfigError
from genimg_jax.evaluation import held_out
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.train import steps
from helpers import REPO, read_scalars

IGPT_DIGITS = os.path.join(REPO, "configs", "igpt_digits.py")

# igpt_digits shrunk for tests: 8x8 digits (64 tokens), 2 layers of width 32.
TINY_OVERRIDES = {
    "data.image_size": 8,
    "model.num_layers": 2,
    "model.width": 32,
    "model.num_heads": 2,
    "optimizer.learning_rate": 3e-3,
    "optimizer.warmup_steps": 10,
    "train.batch_size": 16,
    "train.log_every": 5,
    "train.checkpoint_every": 10,
    "train.num_samples": 8,
}


def tiny_args(data_dir: str, steps: int, **extra) -> list[str]:
  fields = dict(TINY_OVERRIDES, **{"data.data_dir": data_dir, "train.steps": steps}, **extra)
  return [f"--config.{k}={v}" for k, v in fields.items()]


def _train(method, config, batches, num_steps):
  mesh = mesh_lib.make_mesh()
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  step = steps.jit_train_step(method, mesh, mesh_lib.replicated(mesh))
  for _ in range(num_steps):
    state, metrics = step(state, mesh_lib.to_global(next(batches), mesh), jax.random.PRNGKey(1))
  return state, metrics


def test_training_on_digits_lowers_eval_bits_per_dim(data_dir):
  config = config_lib.load(IGPT_DIGITS, tiny_args(data_dir, 100, **{"train.eval_batches": 8}))
  method = methods.make(config)
  source = datasets.open_split(config.data, "train")
  batches = iter(pipeline.train_dataset(source, config.data, seed=0, local_batch_size=16, process_index=0,
                                        process_count=1))
  mesh = mesh_lib.make_mesh()
  key = jax.random.PRNGKey(2)
  before = held_out.evaluate(config, method, mesh, jax.jit(method.init)(jax.random.PRNGKey(0)).params, key)
  state, _ = _train(method, config, batches, 100)
  after = held_out.evaluate(config, method, mesh, state.params, key)
  assert before["num_examples"] == 128 and before["split"] == "test"
  assert before["bits_per_dim"] == pytest.approx(8.0, abs=1e-5)  # The zero-initialised head: uniform.
  assert after["bits_per_dim"] < 4.0, after
  assert after["nats_per_dim"] == pytest.approx(after["bits_per_dim"] * np.log(2), rel=1e-5)


def test_memorising_one_image_approaches_zero_bits_per_dim():
  """The same tiny model and step (compiled once) trained on 16 copies of one digit."""
  config = config_lib.load(IGPT_DIGITS, [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()])
  method = methods.make(config)
  image = images.uint8_to_float(digits.digits_uint8(8)[0][:1])  # One 8x8 digit.
  batch = {"image": np.repeat(image, 16, axis=0), "label": np.zeros((16,), np.int32)}
  _, metrics = _train(method, config, iter(lambda: batch, None), 125)
  assert float(metrics["bits_per_dim"]) < 0.05, metrics


@pytest.mark.parametrize("field,value,where", [
    ("model.num_heads", 3, "config.model.num_heads"),  # does not divide width 64
    ("model.num_layers", 0, "config.model.num_layers"),
    ("model.dropout", 1.0, "config.model.dropout"),
    ("model.position_embedding", "sinusoidal", "config.model.position_embedding"),
    ("model.num_classes", -1, "config.model.num_classes"),
    ("model.attention", "flash", "config.model.attention"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("sample.sampler", "beam", "config.sample.sampler"),
    ("sample.temperature", -0.5, "config.sample.temperature"),
    ("sample.top_k", 300, "config.sample.top_k"),
    ("ema.decay", 1.0, "config.ema.decay"),
    ("loss.name", "mse", "config.loss.name"),
])
def test_validation_errors_name_the_field(field, value, where):
  config = config_lib.load(IGPT_DIGITS, [f"--config.{field}={value}"])
  with pytest.raises(ConfigError) as e:
    methods.make(config)
  assert e.value.where == where


@pytest.mark.parametrize("name,shape", [("igpt_digits", (16, 16, 1)), ("igpt_mnist", (28, 28, 1)),
                                        ("igpt_cifar10", (32, 32, 3))])
def test_configs_load_and_validate(name, shape):
  config = config_lib.load(os.path.join(REPO, "configs", f"{name}.py"), [])
  config_lib.validate_common(config)
  assert methods.make(config).image_shape == shape


def genimg(*args):
  return subprocess.run([sys.executable, "-m", "genimg_jax.cli", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_train_sample_eval(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  result = genimg("train", "--config", IGPT_DIGITS, "--workdir", workdir, "--no_progress",
                  *tiny_args(data_dir, 10, **{"model.num_classes": 10}))
  assert result.returncode == 0, result.stderr
  assert [s for s, _ in read_scalars(workdir)["bits_per_dim"]] == [5, 10]
  assert os.path.isfile(os.path.join(workdir, "samples", "step_0000010.png"))

  out = str(tmp_path / "grid.png")
  result = genimg("sample", "--workdir", workdir, "--num", "10", "--out", out, "--sampler", "uncached")
  assert result.returncode == 0, result.stderr
  assert "10 samples from step 10 (sampler=uncached " in result.stdout and os.path.isfile(out)

  result = genimg("eval", "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  report = json.load(open(os.path.join(workdir, "eval", "eval_0000010.json")))
  metrics = report["metrics"]["bpd"]
  assert metrics["num_examples"] == 288 and report["step"] == 10
  assert 0 < metrics["bits_per_dim"] < 8.0


@pytest.mark.slow
def test_cli_bad_value_is_one_line_naming_the_field(tmp_path):
  result = genimg("train", "--config", IGPT_DIGITS, "--workdir", str(tmp_path / "run"),
                  "--config.model.num_heads=5")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      "genimg: error: config.model.num_heads: must divide model.width=64"]
  assert not (tmp_path / "run").exists()
