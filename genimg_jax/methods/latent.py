"""Latent diffusion (Rombach et al. 2022): any diffusion process on the latents of a trained autoencoder.

A diffusion config with `autoencoder.workdir` naming an autoencoder run (method autoencoder) trains its
denoiser on that run's latents (checkpoint `autoencoder.checkpoint`: latest | best | a step):

- The training split is encoded once, with the encoder's posterior mean (LDM samples the posterior; the
  mean is deterministic, so it can be cached, and with LDM's KL weight of 1e-6 the posterior's spread is
  small), and cached next to the data set (train/latent_cache.py). The latents are normalised per channel,
  z' = (z - mean) / std, with the mean and std over the training latents.
- `genimg train` pins the autoencoder in the run's workdir the first time (train/first_stage.py's `pin`):
  WORKDIR/autoencoder/ holds its config.json, its EMA parameters (params.npz), and pin.json with the source,
  step, parameter hash and the latent mean and std. Resuming, sampling and evaluating read the pin, never the source, so
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
import functools
import hashlib
import sys
from typing import Any, Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genimg_jax import config as config_lib
from genimg_jax.config import require
from genimg_jax.methods import autoencoder, diffusion
from genimg_jax.methods.base import Method, TrainState, gradient_step, initial_state

# The config sections that name a first stage: an autoencoder (latent diffusion) or a tokenizer (MaskGIT,
# methods/maskgit.py, whose first stage is a discrete autoencoder and whose latents are its tokens). Each is
# pinned in WORKDIR/<section>.
SECTIONS = ("autoencoder", "tokenizer")


def is_latent(config: ml_collections.ConfigDict, section: str = "autoencoder") -> bool:
  """Whether a config trains on a first stage's latents (config.<section>.workdir is set)."""
  return section in config and "workdir" in config[section] and bool(config[section].workdir)


@dataclasses.dataclass(frozen=True)
class FirstStage:
  """The frozen autoencoder of a latent run.

  encode(params, images [B, H, W, C] in [-1, 1]) -> latents [B, h, w, c] float32 (the posterior mean);
  decode(params, latents [B, h, w, c]) -> images [B, H, W, C] float32 (not clipped); params: numpy pytree;
  mean, std: float32 [c], the per-channel statistics of the training latents; params_hash: `params_hash`'s.
  A tokenizer's (num_tokens > 0): encode -> tokens [B, h, w] int32, decode(tokens) -> images clipped to
  [-1, 1], latent_shape (h, w), mean and std empty.
  """

  encode: Callable[[Any, jax.Array], jax.Array]
  decode: Callable[[Any, jax.Array], jax.Array]
  params: Any
  latent_shape: tuple[int, int, int]
  mean: np.ndarray
  std: np.ndarray
  params_hash: str
  description: str
  num_tokens: int = 0


def params_hash(params, model_config: ml_collections.ConfigDict) -> str:
  """sha256 (hex) of an autoencoder: its model section and every parameter's path, dtype, shape and bytes."""
  digest = hashlib.sha256(config_lib.to_json(model_config).encode())
  for path, value in sorted(flax.traverse_util.flatten_dict(params, sep="/").items()):
    value = np.ascontiguousarray(value)
    digest.update(f"{path} {value.dtype} {value.shape}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def parts_stage(ae_config, params, mean, std, digest: str, description: str, section: str) -> FirstStage:
  parts = autoencoder.build(ae_config)
  stats = dict(mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32), params_hash=digest,
               description=description)
  if section == "tokenizer":
    return FirstStage(encode=parts.tokenize, decode=parts.detokenize, params=params, latent_shape=parts.token_shape,
                      num_tokens=parts.num_tokens, **stats)
  return FirstStage(encode=parts.latents, decode=parts.decode, params=params, latent_shape=parts.latent_shape,
                    **stats)


def check_stage(ae_config: ml_collections.ConfigDict, section: str, where: str) -> None:
  """A tokenizer must be a discrete autoencoder."""
  require(ae_config.method == "autoencoder", f"{section}.workdir",
          f"{where} is a {ae_config.method!r} run, not an autoencoder run")
  quantizer = autoencoder.quantizer_of(ae_config.autoencoder)
  require(section != "tokenizer" or quantizer != "kl", "tokenizer.workdir",
          f"{where} is a continuous (kl) autoencoder: a tokenizer has autoencoder.quantizer fsq or vq")


def check_data(config: ml_collections.ConfigDict, ae_config: ml_collections.ConfigDict, where: str) -> None:
  """The latent run's images must be those the autoencoder was trained on: size and channels."""
  mine = (config.data.image_size, config.data.channels)
  theirs = (ae_config.data.image_size, ae_config.data.channels)
  require(mine == theirs, "data.image_size", f"the autoencoder in {where} encodes {theirs[0]}x{theirs[0]}x{theirs[1]} "
          f"images; this config gives {mine[0]}x{mine[0]}x{mine[1]} (data.image_size, data.channels)")
  require(not config.data.dequantize, "data.dequantize", "adds noise to pixels, which cached latents do not "
          "carry: set it False for a latent run")


def first_stage(config: ml_collections.ConfigDict, section: str = "autoencoder") -> FirstStage:
  """The latent config's autoencoder (or tokenizer), read by the loader genimg_jax.train.first_stage installs
  (`install`): reading another run's checkpoint and encoding the data set are the train layer's."""
  return _loader().load(config, section)


def install(loader) -> None:
  """Sets what reads first stages: an object with load(config, section) -> FirstStage and
  train_data(stage, source, data, **stream) (genimg_jax.train.first_stage, on import)."""
  _LOADER[:] = [loader]


_LOADER = []


def _loader():
  if not _LOADER:
    raise RuntimeError("a latent config's first stage is read by genimg_jax.train.first_stage: import it first")
  return _LOADER[0]


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

  pixels = (config.data.image_size, config.data.image_size, config.data.channels)
  return Method(init=init, train_step=train_step, sample=decoded(inner.sample), eval_step=eval_step,
                image_shape=pixels, preview_sample=decoded(inner.preview_sample) if inner.preview_sample else None,
                num_classes=inner.num_classes, sample_nfe=inner.sample_nfe,
                count_network_passes=inner.count_network_passes, train_data=functools.partial(train_data, stage))


def train_data(stage: FirstStage, source, data, **stream):
  """Method.train_data of a method on `stage`'s latents (or tokens): the installed loader's (`install`)."""
  return _loader().train_data(stage, source, data, **stream)


def token_state(params, tx, stage: FirstStage) -> TrainState:
  """Step 0 of a Transformer on `stage`'s tokens: params and tx's state the Transformer's (float32), ema_params
  {"transformer": its EMA, equal to params, "tokenizer": the frozen tokenizer's parameters}."""
  state = initial_state(params, tx)
  return state.replace(ema_params={"transformer": params, "tokenizer": jax.tree.map(jnp.asarray, stage.params)})


def token_gradient_step(state: TrainState, grads, metrics, tx, learning_rate, ema_decay: float):
  """base.gradient_step of a `token_state`'s Transformer (grads like state.params); the tokenizer passes
  through unchanged. Returns (state one step on, metrics with grad_norm and learning_rate)."""
  inner = state.replace(ema_params=state.ema_params["transformer"])
  inner, metrics = gradient_step(inner, grads, metrics, tx, learning_rate, ema_decay)
  return inner.replace(ema_params=dict(state.ema_params, transformer=inner.ema_params)), metrics
