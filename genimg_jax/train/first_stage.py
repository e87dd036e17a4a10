"""Reading and pinning a latent run's first stage (methods/latent.py): the autoencoder's (or tokenizer's)
training run, its checkpoint restored and the training split encoded (train/latent_cache.py), copied into the
latent run's workdir once (`pin`) and read back from there (`load`). Importing this module installs it as
methods/latent.py's loader: a method may not read another run or the data set itself.
"""

import dataclasses
import json
import os
import sys

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from genimg_jax import config as config_lib
from genimg_jax import methods
from genimg_jax.errors import CheckpointError, ConfigError
from genimg_jax.files import atomic_open
from genimg_jax.methods import latent
from genimg_jax.methods.latent import SECTIONS, FirstStage, is_latent, params_hash
from genimg_jax.parallel import distributed
from genimg_jax.train import latent_cache
from genimg_jax.train import workdir as workdir_lib


def _from_source(config: ml_collections.ConfigDict,
                 section: str = "autoencoder") -> tuple[FirstStage, ml_collections.ConfigDict, dict]:
  """(FirstStage, the autoencoder's config, what pin.json records) read from config.<section>.workdir, the
  training split encoded (or its cache read) for the latent statistics."""
  settings = config[section]
  source = os.path.abspath(os.path.expanduser(settings.workdir))
  checkpoint = workdir_lib.parse_checkpoint(str(settings.checkpoint), f"config.{section}.checkpoint")
  if not os.path.isdir(source):
    raise ConfigError(f"config.{section}.workdir", f"no such directory: {source}")
  ae_config = workdir_lib.read_config(source)
  latent.check_stage(ae_config, section, source)
  latent.check_data(config, ae_config, source)
  _, state, step = workdir_lib.restore(source, ae_config, methods.make(ae_config), checkpoint)
  params = jax.tree.map(np.asarray, jax.device_get(state.ema_params))
  digest = params_hash(params, ae_config.model)
  stage = latent.parts_stage(ae_config, params, 0.0, 1.0, digest, "", section)
  encoding = "tokens" if stage.num_tokens else "posterior mean"
  cached = latent_cache.encoded(config.data, config.data.train_split, stage.encode, params, digest,
                               encoding=encoding)
  record = {"source": source, "checkpoint": str(settings.checkpoint), "step": int(step),
            "params_hash": digest, "encoding": encoding, "latent_shape": list(stage.latent_shape),
            "mean": cached.mean.tolist(), "std": cached.std.tolist(), "cache": cached.directory}
  description = f"{section} {source} step {step} (params {digest[:12]})"
  return (dataclasses.replace(stage, mean=cached.mean, std=cached.std, description=description), ae_config,
          record)


def _from_pin(config: ml_collections.ConfigDict, directory: str, section: str = "autoencoder") -> FirstStage:
  """The FirstStage pinned in `directory` (WORKDIR/<section>); CheckpointError if missing or altered."""
  try:
    with open(os.path.join(directory, "pin.json")) as f:
      record = json.load(f)
    with open(os.path.join(directory, "config.json")) as f:
      ae_config = config_lib.from_json(f.read())
    with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as saved:
      params = flax.traverse_util.unflatten_dict({k: saved[k] for k in saved.files}, sep="/")
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(directory, f"cannot read the pinned {section} ({type(e).__name__}: {e})") from None
  digest = params_hash(params, ae_config.model)
  if digest != record["params_hash"]:
    raise CheckpointError(directory, f"the pinned {section}'s parameters hash to {digest[:12]}, not "
                          f"{record['params_hash'][:12]} as pin.json records: params.npz was altered")
  latent.check_data(config, ae_config, directory)
  description = (f"{section} pinned in {directory} (from {record['source']} step {record['step']}, "
                 f"params {digest[:12]})")
  return latent.parts_stage(ae_config, params, record["mean"], record["std"], digest, description, section)


def pin(config: ml_collections.ConfigDict, workdir: str, create: bool) -> None:
  """For each first-stage section of the config (SECTIONS: autoencoder, tokenizer) whose workdir is set: points
  config.<section>.pinned_dir at WORKDIR/<section>, first copying the autoencoder there from
  config.<section>.workdir if create (training) and it is not pinned yet.

  Without create (sample, eval) a missing pin is a CheckpointError. Does nothing for a pixel config; with
  <section>.required (a latent config) an empty <section>.workdir is a ConfigError when training.
  """
  for section in SECTIONS:
    _pin(config, workdir, create, section)


def _pin(config: ml_collections.ConfigDict, workdir: str, create: bool, section: str) -> None:
  if not is_latent(config, section):
    required = section in config and config[section].get("required", False)
    if create and required:
      raise ConfigError(f"config.{section}.workdir", f"this config trains on an autoencoder's latents: name the "
                        f"{section} run, --config.{section}.workdir=DIR (a `genimg train` workdir)")
    return
  directory = os.path.abspath(os.path.join(workdir, section))
  if not os.path.isfile(os.path.join(directory, "pin.json")):
    if not create:
      raise CheckpointError(directory, f"no pinned {section}: this latent run was not started by genimg train")
    stage, ae_config, record = _from_source(config, section)
    if jax.process_index() == 0:
      with atomic_open(os.path.join(directory, "config.json")) as f:
        f.write(config_lib.to_json(ae_config))
      with atomic_open(os.path.join(directory, "params.npz"), "wb") as f:
        np.savez(f, **flax.traverse_util.flatten_dict(stage.params, sep="/"))
      with atomic_open(os.path.join(directory, "pin.json")) as f:  # Last: its presence means the pin is whole.
        json.dump(record, f, indent=2)
    distributed.barrier(f"pinned {directory}")
  config[section].pinned_dir = directory


def load(config: ml_collections.ConfigDict, section: str = "autoencoder") -> FirstStage:
  """The latent config's autoencoder (or tokenizer): the pin (config.<section>.pinned_dir) or else its source
  workdir."""
  if config[section].pinned_dir:
    return _from_pin(config, config[section].pinned_dir, section)
  return _from_source(config, section)[0]


def train_data(stage: FirstStage, source, data, **stream):
  """Method.train_data of a method on `stage`'s latents (or tokens): the cached encoding of data.train_split,
  encoded first if not cached (latent_cache.py)."""
  del source  # The cache is opened by split.
  cached = latent_cache.encoded(data, data.train_split, stage.encode, stage.params, stage.params_hash,
                                encoding="tokens" if stage.num_tokens else "posterior mean")
  return latent_cache.train_dataset(cached, data, **stream)


latent.install(sys.modules[__name__])
