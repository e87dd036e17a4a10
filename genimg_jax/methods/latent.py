"""Latent diffusion (Rombach et al. 2022): any diffusion process on the latents of a trained autoencoder.

A diffusion config with `autoencoder.workdir` naming an autoencoder run (method autoencoder) trains its
denoiser on that run's latents (checkpoint `autoencoder.checkpoint`: latest | best | a step):

- The training split is encoded once, with the encoder's posterior mean (LDM samples the posterior; the
  mean is deterministic, so it can be cached, and with LDM's KL weight of 1e-6 the posterior's spread is
  small), and cached next to the data set (data/latents.py). The latents are normalised per channel,
  z' = (z - mean) / std, with the mean and std over the training latents.
- `genimg train` pins the autoencoder in the run's workdir the first time (`pin`): WORKDIR/autoencoder/
  holds its config.json, its EMA parameters (params.npz), and pin.json with the source, step, parameter
  hash and the latent mean and std. Resuming, sampling and evaluating read the pin, never the source, so
  the run is unaffected when the autoencoder's workdir is moved or trained further.
- The train state is the diffusion method's, with ema_params {"denoiser": the EMA of the denoiser,
  "autoencoder": the frozen autoencoder, "latent": {"mean", "std"} [c]}: checkpointed with the run, not
  trained (params and the optimizer hold the denoiser alone).
- `sample` draws latents with the process's sampler, un-normalises and decodes them: images in [-1, 1],
  so `genimg sample` and `genimg eval` (FID, ...) work on pixels. The held-out metrics (`eval.metrics` bpd)
  are the process's loss on the encoded held-out images, named latent_<metric>; bits/dim are left out, as a
  density of latents is not one of images.
"""

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax import config as config_lib
from genimg_jax.config import require
from genimg_jax.data import latents as latents_lib
from genimg_jax.errors import CheckpointError, ConfigError
from genimg_jax.files import atomic_open
from genimg_jax.methods import autoencoder, diffusion
from genimg_jax.methods.base import Method, TrainState
from genimg_jax.parallel import distributed

PIN_DIR = "autoencoder"


def is_latent(config: ml_collections.ConfigDict) -> bool:
  """Whether a diffusion config trains on an autoencoder's latents (config.autoencoder.workdir is set)."""
  return "autoencoder" in config and "workdir" in config.autoencoder and bool(config.autoencoder.workdir)


@dataclasses.dataclass(frozen=True)
class FirstStage:
  """The frozen autoencoder of a latent run.

  encode(params, images [B, H, W, C] in [-1, 1]) -> latents [B, h, w, c] float32 (the posterior mean);
  decode(params, latents [B, h, w, c]) -> images [B, H, W, C] float32 (not clipped); params: numpy pytree;
  mean, std: float32 [c], the per-channel statistics of the training latents; params_hash: `params_hash`'s.
  """

  encode: Callable[[Any, jax.Array], jax.Array]
  decode: Callable[[Any, jax.Array], jax.Array]
  params: Any
  latent_shape: tuple[int, int, int]
  mean: np.ndarray
  std: np.ndarray
  params_hash: str
  description: str


def params_hash(params, model_config: ml_collections.ConfigDict) -> str:
  """sha256 (hex) of an autoencoder: its model section and every parameter's path, dtype, shape and bytes."""
  digest = hashlib.sha256(config_lib.to_json(model_config).encode())
  for path, value in sorted(flax.traverse_util.flatten_dict(params, sep="/").items()):
    value = np.ascontiguousarray(value)
    digest.update(f"{path} {value.dtype} {value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _parts_stage(ae_config, params, mean, std, digest: str, description: str) -> FirstStage:
  parts = autoencoder.build(ae_config)
  return FirstStage(encode=lambda p, x: parts.encode(p, x)[0], decode=parts.decode, params=params,
                    latent_shape=parts.latent_shape, mean=np.asarray(mean, np.float32),
                    std=np.asarray(std, np.float32), params_hash=digest, description=description)


def _check_data(config: ml_collections.ConfigDict, ae_config: ml_collections.ConfigDict, where: str) -> None:
  """The latent run's images must be those the autoencoder was trained on: size and channels."""
  mine = (config.data.image_size, config.data.channels)
  theirs = (ae_config.data.image_size, ae_config.data.channels)
  require(mine == theirs, "data.image_size", f"the autoencoder in {where} encodes {theirs[0]}x{theirs[0]}x{theirs[1]} "
          f"images; this config gives {mine[0]}x{mine[0]}x{mine[1]} (data.image_size, data.channels)")
  require(not config.data.dequantize, "data.dequantize", "adds noise to pixels, which cached latents do not "
          "carry: set it False for a latent run")


def _from_source(config: ml_collections.ConfigDict) -> tuple[FirstStage, ml_collections.ConfigDict, dict]:
  """(FirstStage, the autoencoder's config, what pin.json records) read from config.autoencoder.workdir, the
  training split encoded (or its cache read) for the latent statistics."""
  from genimg_jax import methods  # The registry imports this module.
  from genimg_jax.train import workdir as workdir_lib

  source = os.path.abspath(os.path.expanduser(config.autoencoder.workdir))
  checkpoint = workdir_lib.parse_checkpoint(str(config.autoencoder.checkpoint), "config.autoencoder.checkpoint")
  if not os.path.isdir(source):
    raise ConfigError("config.autoencoder.workdir", f"no such directory: {source}")
  ae_config = workdir_lib.read_config(source)
  require(ae_config.method == "autoencoder", "autoencoder.workdir",
          f"{source} is a {ae_config.method!r} run, not an autoencoder run")
  _check_data(config, ae_config, source)
  _, state, step = workdir_lib.restore(source, ae_config, methods.make(ae_config), checkpoint)
  params = jax.tree.map(np.asarray, jax.device_get(state.ema_params))
  digest = params_hash(params, ae_config.model)
  stage = _parts_stage(ae_config, params, 0.0, 1.0, digest, "")
  cached = latents_lib.encoded(config.data, config.data.train_split, stage.encode, params, digest)
  record = {"source": source, "checkpoint": str(config.autoencoder.checkpoint), "step": int(step),
            "params_hash": digest, "encoding": "posterior mean", "latent_shape": list(stage.latent_shape),
            "mean": cached.mean.tolist(), "std": cached.std.tolist(), "cache": cached.directory}
  description = f"autoencoder {source} step {step} (params {digest[:12]})"
  return (dataclasses.replace(stage, mean=cached.mean, std=cached.std, description=description), ae_config,
          record)


def _from_pin(config: ml_collections.ConfigDict, directory: str) -> FirstStage:
  """The FirstStage pinned in `directory` (WORKDIR/autoencoder); CheckpointError if missing or altered."""
  try:
    with open(os.path.join(directory, "pin.json")) as f:
      record = json.load(f)
    with open(os.path.join(directory, "config.json")) as f:
      ae_config = config_lib.from_json(f.read())
    with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as saved:
      params = flax.traverse_util.unflatten_dict({k: saved[k] for k in saved.files}, sep="/")
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(directory, f"cannot read the pinned autoencoder ({type(e).__name__}: {e})") from None
  digest = params_hash(params, ae_config.model)
  if digest != record["params_hash"]:
    raise CheckpointError(directory, f"the pinned autoencoder's parameters hash to {digest[:12]}, not "
                          f"{record['params_hash'][:12]} as pin.json records: params.npz was altered")
  _check_data(config, ae_config, directory)
  description = (f"autoencoder pinned in {directory} (from {record['source']} step {record['step']}, "
                 f"params {digest[:12]})")
  return _parts_stage(ae_config, params, record["mean"], record["std"], digest, description)


def pin(config: ml_collections.ConfigDict, workdir: str, create: bool) -> None:
  """For a latent config: points config.autoencoder.pinned_dir at WORKDIR/autoencoder, first copying the
  autoencoder there from config.autoencoder.workdir if create (training) and it is not pinned yet.

  Without create (sample, eval) a missing pin is a CheckpointError. Does nothing for a pixel config; with
  autoencoder.required (a latent config) an empty autoencoder.workdir is a ConfigError when training.
  """
  if not is_latent(config):
    required = "autoencoder" in config and config.autoencoder.get("required", False)
    if create and required:
      raise ConfigError("config.autoencoder.workdir", "this config trains on an autoencoder's latents: name the "
                        "autoencoder run, --config.autoencoder.workdir=DIR (a `genimg train` workdir)")
    return
  directory = os.path.abspath(os.path.join(workdir, PIN_DIR))
  if not os.path.isfile(os.path.join(directory, "pin.json")):
    if not create:
      raise CheckpointError(directory, "no pinned autoencoder: this latent run was not started by genimg train")
    stage, ae_config, record = _from_source(config)
    if jax.process_index() == 0:
      with atomic_open(os.path.join(directory, "config.json")) as f:
        f.write(config_lib.to_json(ae_config))
      with atomic_open(os.path.join(directory, "params.npz"), "wb") as f:
        np.savez(f, **flax.traverse_util.flatten_dict(stage.params, sep="/"))
      with atomic_open(os.path.join(directory, "pin.json")) as f:  # Last: its presence means the pin is whole.
        json.dump(record, f, indent=2)
    distributed.barrier(f"pinned {directory}")
  config.autoencoder.pinned_dir = directory


def first_stage(config: ml_collections.ConfigDict) -> FirstStage:
  """The latent config's autoencoder: the pin (config.autoencoder.pinned_dir) or else its source workdir."""
  if config.autoencoder.pinned_dir:
    return _from_pin(config, config.autoencoder.pinned_dir)
  return _from_source(config)[0]


def make(config: ml_collections.ConfigDict) -> Method:
  """The latent diffusion method of a diffusion config with autoencoder.workdir set (validated on the way)."""
  stage = first_stage(config)
  if jax.process_index() == 0:
    print(f"latent diffusion on {stage.latent_shape} latents of the {stage.description}", file=sys.stderr)
  return wrap(config, stage)


def wrap(config: ml_collections.ConfigDict, stage: FirstStage) -> Method:
  """The diffusion method of `config` on the latents of `stage`, sampling and evaluating on pixels."""
  inner = diffusion.make(config, latent_shape=stage.latent_shape)
  frozen = {"autoencoder": stage.params, "latent": {"mean": stage.mean, "std": stage.std}}

  def normalise(first, images):
    z = stage.encode(first["autoencoder"], images)
    return (z - first["latent"]["mean"]) / first["latent"]["std"]

  def init(rng: jax.Array) -> TrainState:
    state = inner.init(rng)
    return state.replace(ema_params=dict(jax.tree.map(jnp.asarray, frozen), denoiser=state.ema_params))

  def train_step(state: TrainState, batch, rng: jax.Array):
    """batch["image"]: the cached latents [B, h, w, c], not normalised (see train_data)."""
    first = state.ema_params["latent"]
    z = (batch["image"] - first["mean"]) / first["std"]
    inner_state, metrics = inner.train_step(state.replace(ema_params=state.ema_params["denoiser"]),
                                            dict(batch, image=z), rng)
    return inner_state.replace(ema_params=dict(state.ema_params, denoiser=inner_state.ema_params)), metrics

  def decoded(sample_fn):
    def sample(params, rng, num, labels=None):
      z = sample_fn(params["denoiser"], rng, num, labels)
      z = z * params["latent"]["std"] + params["latent"]["mean"]
      return jnp.clip(stage.decode(params["autoencoder"], z), -1.0, 1.0)

    return sample

  def eval_step(params, batch, rng: jax.Array):
    """The process's held-out metrics on the normalised latents of batch["image"] (pixels), named latent_*."""
    metrics = inner.eval_step(params["denoiser"], dict(batch, image=normalise(params, batch["image"])), rng)
    return {f"latent_{name}": value for name, value in metrics.items()}

  def train_data(source, data, **stream):
    del source  # The cache is opened by split.
    cached = latents_lib.encoded(data, data.train_split, stage.encode, stage.params, stage.params_hash)
    return latents_lib.train_dataset(cached, data, **stream)

  pixels = (config.data.image_size, config.data.image_size, config.data.channels)
  return Method(init=init, train_step=train_step, sample=decoded(inner.sample), eval_step=eval_step,
                image_shape=pixels, preview_sample=decoded(inner.preview_sample) if inner.preview_sample else None,
                num_classes=inner.num_classes, sample_nfe=inner.sample_nfe,
                count_network_passes=inner.count_network_passes, train_data=train_data)
