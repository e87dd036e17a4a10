"""genimg_jax: image generative models (diffusion, GAN, VAE, autoregressive) in JAX/Flax."""

__version__ = "0.1.0"
