"""Latent diffusion (methods/latent.py, train/latent_cache.py): the encode cache, the identity first stage against
pixel diffusion, and the whole chain through the real `genimg` command."""

import os
import shutil
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genimg_jax import config as config_lib
from genimg_jax.data import datasets, pipeline
from genimg_jax.errors import ConfigError
from genimg_jax.methods import diffusion, latent
from genimg_jax.train import first_stage
from genimg_jax.train import latent_cache as latents
from helpers import REPO

FLOW = os.path.join(REPO, "configs", "flow_digits.py")
# The flow digits config shrunk: 8x8 images, a two-level UNet, three Euler steps.
SMALL = {"data.image_size": 8, "model.ch": 16, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
         "model.attn_resolutions": (4,), "model.norm_groups": 4, "train.batch_size": 8, "sample.steps": 3}


def small_config(data_dir: str, **extra):
  fields = dict(SMALL, **{"data.data_dir": data_dir}, **extra)
  return config_lib.load(FLOW, [f"--config.{k}={v}" for k, v in fields.items()])


def pooled_encoder(calls: list):
  """A stand-in encoder, images [B, 8, 8, 1] -> [B, 4, 4, 2]: 2x2 means times w, and their squares; appends to
  `calls` each time it is traced (so a cache hit, which encodes nothing, traces nothing)."""
  def encode(params, x):
    calls.append(x.shape)
    pooled = x.reshape(x.shape[0], 4, 2, 4, 2, 1).mean(axis=(2, 4)) * params["w"]
    return jnp.concatenate([pooled, pooled ** 2], axis=-1)

  return encode


def test_cache_is_reused_and_rebuilt_for_another_autoencoder(data_dir, capsys):
  config = small_config(data_dir, **{"data.random_flip": True})
  calls = []
  params = {"w": np.float32(0.5)}
  first = latents.encoded(config.data, "train", pooled_encoder(calls), params, "a" * 64, batch_size=100)
  assert calls and "no cached latents yet" in capsys.readouterr().err
  # Against a float64 NumPy reference: each image and its mirror image, 2x2 means and their squares.
  source = datasets.open_split(config.data, "train")
  images = np.stack([pipeline.eval_dataset(source, config.data, local_batch_size=1, process_index=0,
                                           process_count=1)[i]["image"][0] for i in range(len(source))])
  views = np.stack([images, images[:, :, ::-1]], axis=1).astype(np.float64)
  pooled = views.reshape(len(source), 2, 4, 2, 4, 2, 1).mean(axis=(3, 5)) * 0.5
  expected = np.concatenate([pooled, pooled ** 2], axis=-1)
  np.testing.assert_allclose(first.latents, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(first.mean, expected.mean(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(first.std, expected.std(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6)
  assert first.labels.dtype == np.int32 and len(first.labels) == len(source)

  calls.clear()
  again = latents.encoded(config.data, "train", pooled_encoder(calls), params, "a" * 64, batch_size=100)
  assert calls == [] and capsys.readouterr().err == ""  # The encoder is not called.
  np.testing.assert_array_equal(again.latents, first.latents)

  changed = latents.encoded(config.data, "train", pooled_encoder(calls), {"w": np.float32(2.0)}, "b" * 64,
                            batch_size=100)
  err = capsys.readouterr().err
  assert calls and len(err.strip().splitlines()) == 1 and "encoded by another autoencoder" in err, err
  np.testing.assert_allclose(changed.latents[..., :1], 4 * first.latents[..., :1], rtol=1e-5, atol=1e-6)


def test_training_stream_of_latents_picks_views_and_resumes(data_dir):
  config = small_config(data_dir, **{"data.random_flip": True})
  cached = latents.encoded(config.data, "train", pooled_encoder([]), {"w": np.float32(0.5)}, "a" * 64, 100)
  stream = lambda start=0: iter(latents.train_dataset(cached, config.data, seed=3, local_batch_size=8,
                                                      process_index=0, process_count=1, start_batch=start))
  batches = [next(it) for it in [stream()] for _ in range(3)]
  assert batches[0]["image"].shape == (8, 4, 4, 2) and batches[0]["image"].dtype == np.float32
  flat = cached.latents.reshape(-1, 4 * 4 * 2)
  for batch in batches:  # Every element is one of the cached views.
    rows = batch["image"].reshape(8, -1)
    assert all(np.any(np.all(flat == row, axis=1)) for row in rows)
  np.testing.assert_array_equal(next(stream(2))["image"], batches[2]["image"])


def identity_stage(shape) -> latent.FirstStage:
  """encode = decode = identity, latents normalised by mean 0 and std 1: latent diffusion is pixel diffusion."""
  return latent.FirstStage(encode=lambda p, x: x, decode=lambda p, z: z, params={}, latent_shape=shape,
                           mean=np.zeros(shape[-1:], np.float32), std=np.ones(shape[-1:], np.float32),
                           params_hash="0" * 64, description="identity")


@pytest.mark.parametrize("process", ["flow", "ddpm"])
def test_identity_first_stage_samples_and_trains_as_pixel_diffusion(data_dir, process):
  extra = {"diffusion.process": process, "sample.clip_x0": False, "diffusion.num_timesteps": 20}
  if process == "ddpm":
    extra.update({"sample.sampler": "ddim", "sample.preview_steps": 3, "diffusion.beta_end": 0.2})
  config = small_config(data_dir, **extra)
  pixel, lat = diffusion.make(config), latent.wrap(config, identity_stage((8, 8, 1)))
  key = jax.random.PRNGKey(7)
  p_state, l_state = pixel.init(key), lat.init(key)
  assert_trees_equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  assert_trees_equal(p_state.params, l_state.params)
  batch = {"image": jax.random.uniform(key, (8, 8, 8, 1), minval=-1, maxval=1), "label": jnp.zeros(8, jnp.int32)}
  p_state, _ = jax.jit(pixel.train_step)(p_state, batch, key)
  l_state, _ = jax.jit(lat.train_step)(l_state, batch, key)
  assert_trees_equal(p_state.ema_params, l_state.ema_params["denoiser"])
  sample = lambda method, params: jax.jit(method.sample, static_argnums=2)(params, jax.random.PRNGKey(1), 4)
  expected = sample(pixel, p_state.ema_params)
  np.testing.assert_array_equal(sample(lat, l_state.ema_params), expected)
  assert float(jnp.std(expected)) > 0


def test_a_cache_read_by_two_threads_at_once_gives_both_their_example(tmp_path, monkeypatch):
  """Grain's read threads open the memory map together: one must not see the latents without the labels.
  The first thread is held inside its second np.load until the other has read its example."""
  np.save(tmp_path / "latents.npy", np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2, 1))
  np.save(tmp_path / "labels.npy", np.array([4, 5, 6], np.int32))
  source = latents.LatentSource(str(tmp_path), 3)
  real_load, calls, other_done = np.load, [], threading.Event()

  def held_load(*args, **kwargs):
    calls.append(threading.current_thread().name)
    if threading.current_thread().name == "first" and calls.count("first") == 2:
      other_done.wait(timeout=10)
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", held_load)
  results = {}

  def read(index):
    try:
      results[index] = source[index]
    finally:
      if threading.current_thread().name == "second":
        other_done.set()

  first = threading.Thread(target=read, args=(0,), name="first")
  first.start()
  while calls.count("first") < 2:  # The first thread is inside its second load.
    time.sleep(0.001)
  second = threading.Thread(target=read, args=(2,), name="second")
  second.start()
  second.join(timeout=10)
  first.join(timeout=10)
  assert sorted(results) == [0, 2]
  assert int(results[0]["label"]) == 4 and int(results[2]["label"]) == 6
  np.testing.assert_array_equal(results[2]["latent"], np.arange(8, 12, dtype=np.float32).reshape(1, 2, 2, 1))


def test_bad_autoencoder_settings_are_refused(data_dir, tmp_path):
  config = small_config(data_dir, **{"autoencoder.workdir": str(tmp_path / "missing")})
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.workdir: no such directory"):
    first_stage.pin(config, str(tmp_path / "run"), create=True)
  required = small_config(data_dir, **{"autoencoder.required": True})
  first_stage.pin(required, str(tmp_path / "run"), create=False)  # Sampling a pixel run: nothing to pin.
  with pytest.raises(ConfigError, match=r"config\.autoencoder\.workdir: this config trains on an autoencoder"):
    first_stage.pin(required, str(tmp_path / "run"), create=True)
  with pytest.raises(ConfigError, match=r"config\.sample\.clip_x0"):
    latent.wrap(small_config(data_dir, **{"diffusion.process": "ddpm"}), identity_stage((8, 8, 1)))


# ---- The chain through the real command line. ---------------------------------------------------------------

AE_ARGS = {"model.ch": 8, "model.ch_mult": (1, 2), "model.norm_groups": 4, "train.batch_size": 16}
LATENT_ARGS = {"model.ch": 16, "model.ch_mult": (1, 2), "model.num_res_blocks": 1, "model.attn_resolutions": (4,),
               "model.norm_groups": 4, "train.batch_size": 16, "sample.steps": 3, "train.eval_batches": 1,
               "train.sample_every": 0, "autoencoder.workdir": "ae"}
COMMON = {"train.log_every": 2, "train.checkpoint_every": 2, "train.num_samples": 4}


def genimg(cwd, *args) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, "-m", "genimg_jax.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True)
  assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
  return result


def train(cwd, config: str, workdir: str, steps: int, data_dir: str, fields: dict):
  fields = dict(COMMON, **fields, **{"train.steps": steps, "data.data_dir": data_dir})
  return genimg(cwd, "train", "--config", os.path.join(REPO, "configs", config), "--workdir", workdir,
                "--no_progress", *[f"--config.{k}={v}" for k, v in fields.items()])


@pytest.mark.slow
def test_latent_flow_through_the_command_line(data_dir, tmp_path):
  train(tmp_path, "autoencoder_digits.py", "ae", 2, data_dir, AE_ARGS)
  first = train(tmp_path, "latent_flow_digits.py", "lf", 2, data_dir, LATENT_ARGS)
  assert "encoding digits train" in first.stderr and os.path.isfile(tmp_path / "lf" / "autoencoder" / "pin.json")
  second = train(tmp_path, "latent_flow_digits.py", "lf", 4, data_dir, LATENT_ARGS)
  assert "resuming from step 2" in second.stdout and "encoding" not in second.stderr  # The cache is used.
  genimg(tmp_path, "sample", "--workdir", "lf", "--out", "x.npz", "--num", 6)
  samples = np.load(tmp_path / "x.npz", allow_pickle=False)["arr_0"]
  assert samples.shape == (6, 16, 16, 1) and samples.dtype == np.uint8  # Decoded pixels.
  report = genimg(tmp_path, "eval", "--workdir", "lf", "--metrics", "fid,bpd", "--num_samples", 20,
                  "--batch_size", 10).stdout
  assert "| fid |" in report and "| latent_loss |" in report and "bpd |" not in report

  shutil.move(tmp_path / "ae", tmp_path / "ae_moved")  # The run keeps its own copy of the autoencoder.
  genimg(tmp_path, "sample", "--workdir", "lf", "--out", "y.npz", "--num", 6)
  np.testing.assert_array_equal(np.load(tmp_path / "y.npz", allow_pickle=False)["arr_0"], samples)
  third = train(tmp_path, "latent_flow_digits.py", "lf", 6, data_dir, LATENT_ARGS)
  assert "resuming from step 4" in third.stdout
