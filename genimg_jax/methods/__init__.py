"""Methods: one per model family, each a bundle of pure functions the trainer calls."""

import ml_collections

from genimg_jax.methods import autoregressive, diffusion, gan, vae
from genimg_jax.methods.base import Method
from genimg_jax.registry import lookup

METHODS = {"autoregressive": autoregressive.make, "diffusion": diffusion.make, "gan": gan.make, "vae": vae.make}


def make(config: ml_collections.ConfigDict) -> Method:
  """The method named by config.method, built from the config (validated on the way)."""
  return lookup("config.method", config.method, METHODS)(config)
