"""The trainer: learning, determinism, exact resume and multi-device sharding."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from genimg_jax import methods, seeds
from genimg_jax.data import datasets, pipeline
from genimg_jax.parallel import functions
from genimg_jax.parallel import mesh as mesh_lib
from genimg_jax.train import steps, trainer
from helpers import REPO, flat_params, read_scalars, tiny_config


def test_training_lowers_the_loss(data_dir):
  config = tiny_config(data_dir)
  config.unlock()
  config.optimizer.learning_rate = 2e-3
  method = methods.make(config)
  mesh = mesh_lib.make_mesh()
  state = jax.jit(method.init)(jax.random.PRNGKey(0))
  step = steps.jit_train_step(method, mesh, mesh_lib.replicated(mesh))
  data = iter(pipeline.train_dataset(datasets.open_split(config.data, "train"), config.data, seed=0,
                                     local_batch_size=32, process_index=0, process_count=1))
  losses = []
  for _ in range(300):
    state, metrics = step(state, mesh_lib.to_global(next(data), mesh), jax.random.PRNGKey(1))
    losses.append(metrics["loss"])
  losses = np.asarray(jax.device_get(losses))
  start, end = losses[:10].mean(), losses[-50:].mean()
  assert end < 0.5 * start, (start, end)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """Tiny training runs shared by the tests below: {name: (workdir, final state)}."""
  root = tmp_path_factory.mktemp("runs")
  out = {}

  def run(name, steps=20, seed=0, workdir=None):
    workdir = workdir or str(root / name)
    out[name] = (workdir, trainer.train(tiny_config(data_dir, steps, seed), workdir, show_progress=False))
    return out[name]

  run("a")
  params_a = flat_params(out["a"][1])  # Kept before "a" is resumed in place below.
  run("b")
  run("seed1", seed=1)
  run("a40", steps=40, workdir=out["a"][0])
  run("straight40", steps=40)
  out["a"] = (out["a"][0], params_a)
  return out


def _assert_trees_equal(x, y):
  fx, fy = flat_params(x), flat_params(y)
  assert fx.keys() == fy.keys()
  for k in fx:
    np.testing.assert_array_equal(fx[k], fy[k], err_msg=k)


def test_same_seed_is_bitwise_identical(runs):
  a, b = runs["a"][1], flat_params(runs["b"][1])
  assert all(np.array_equal(a[k], b[k]) for k in a)


def test_different_seed_differs(runs):
  a, other = runs["a"][1], flat_params(runs["seed1"][1])
  assert not all(np.array_equal(a[k], other[k]) for k in a)


def test_resume_equals_training_straight_through(runs):
  """20 steps, stop, resume to 40 == 40 straight: parameters, optimizer, EMA, step."""
  resumed, straight = runs["a40"][1], runs["straight40"][1]
  assert int(resumed.step) == int(straight.step) == 40
  _assert_trees_equal(resumed, straight)


def test_workdir_contents(runs):
  workdir = runs["a40"][0]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["20", "30", "40"]
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert os.path.isfile(os.path.join(workdir, "samples", "step_0000040.png"))
  scalars = read_scalars(workdir)
  for tag in ("loss", "grad_norm", "learning_rate", "steps_per_sec", "images_per_sec"):
    assert tag in scalars, tag
  assert [s for s, _ in scalars["loss"]] == [5, 10, 15, 20, 25, 30, 35, 40]
  lr = dict(scalars["learning_rate"])
  # Warm-up over 10 steps; a logged value is the mean over its window (steps 0..4 here).
  assert lr[5] == pytest.approx(2e-4) and lr[40] == pytest.approx(1e-3)


@pytest.mark.slow
def test_eight_devices_match_one_device(runs, data_dir, tmp_path):
  """The same 20 steps over 8 (virtual CPU) devices, batch sharded, match 1 device to 1e-5.

  Compared: every leaf of the TrainState (step, params, Adam moments, EMA).
  """
  out = tmp_path / "params.npz"
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers.py"), data_dir,
                  str(tmp_path / "run8"), str(out), "20"], check=True, env=env, cwd=REPO)
  got = np.load(out)
  assert int(got["num_devices"]) == 8
  one = runs["a"][1]
  assert set(got.files) == set(one) | {"num_devices"}
  assert int(got[".step"]) == int(one[".step"]) == 20
  # Relative error of each part of the state as a whole. Single leaves can differ more:
  # the key bias of attention has an exactly-zero gradient, and Adam scales the
  # reduction-order noise in it up to a learning-rate-sized step.
  for part in (".params", ".ema_params", ".opt_state"):
    keys = [k for k in one if k.startswith(part)]
    diff = np.sqrt(sum(np.sum((got[k].astype(np.float64) - one[k]) ** 2) for k in keys))
    norm = np.sqrt(sum(np.sum(one[k].astype(np.float64) ** 2) for k in keys))
    assert diff <= 1e-5 * norm, (part, diff / norm)


def test_grids_preview_with_the_cheaper_sampler_and_end_with_the_configured_one(data_dir, tmp_path, monkeypatch):
  """ddpm_digits previews with DDIM every train.sample_every steps; the last grid uses sample.sampler."""
  built, calls = [], []
  real = functions.sampler

  def recording(method, mesh, batch_size, classes=None, sample_fn=None):
    name = "preview" if sample_fn is not None and sample_fn is method.preview_sample else "sample"
    built.append(name)
    draw = real(method, mesh, batch_size, classes, sample_fn)

    def call(params, key, start=0):
      calls.append((name, np.asarray(key).tolist()))
      return draw(params, key, start)

    return call

  monkeypatch.setattr(functions, "sampler", recording)
  config = tiny_config(data_dir, steps=5)
  config.unlock()
  config.train.sample_every, config.sample.preview_sampler, config.sample.preview_steps = 2, "ddim", 3
  trainer.train(config, str(tmp_path), show_progress=False)
  sample_key = np.asarray(seeds.root_keys(config.seed)["sample"]).tolist()
  assert sorted(built) == ["preview", "sample"]
  assert calls == [("preview", sample_key), ("preview", sample_key), ("sample", sample_key)]  # Steps 2, 4, 5.
  assert sorted(os.listdir(tmp_path / "samples")) == [f"step_{s:07d}.png" for s in (2, 4, 5)]
