"""Methods: one per model family, each a bundle of pure functions the trainer calls.

config.method selects one of METHODS, or the user's own `make(config) -> Method` as `module:function`.
"""

import ml_collections

from genimg_jax.config import require
from genimg_jax.methods import autoencoder, autoregressive, autoregressive_tokens, diffusion, gan, latent, maskgit, vae
from genimg_jax.methods.base import Method
from genimg_jax.registry import Registry

METHODS = Registry("method", "method")


@METHODS.register("diffusion")
def _diffusion(config: ml_collections.ConfigDict) -> Method:
  """Diffusion on pixels, or on an autoencoder's latents when config.autoencoder.workdir names one."""
  return latent.make(config) if latent.is_latent(config) else diffusion.make(config)


@METHODS.register("autoregressive")
def _autoregressive(config: ml_collections.ConfigDict) -> Method:
  """The Transformer on pixels, or on a tokenizer's tokens when config.tokenizer.workdir names one."""
  return autoregressive_tokens.make(config) if latent.is_latent(config, "tokenizer") else autoregressive.make(config)


METHODS.register("autoencoder")(autoencoder.make)
METHODS.register("gan")(gan.make)
METHODS.register("maskgit")(maskgit.make)
METHODS.register("vae")(vae.make)


def make(config: ml_collections.ConfigDict) -> Method:
  """The method config.method selects, built from the config (validated on the way)."""
  build = METHODS.resolve(config.method)
  require(callable(build), "method", f"{config.method!r} is not a function")
  return build(config)
