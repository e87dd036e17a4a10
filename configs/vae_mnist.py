r"""A VAE on binarised MNIST with a Bernoulli decoder: the classic VAE setup.

Command:
  genimg train --config configs/vae_mnist.py --workdir runs/vae_mnist
  genimg eval --workdir runs/vae_mnist
Hardware: sized for one GPU (batch 128, 2.4M parameters); runs on a CPU, slowly.
Wall time: not yet measured.
Expected result: not yet measured by this codebase. Note that the images are binarised
  once by thresholding (pixel value >= 128 is 1), so the ELBO and the IWAE bound (K=1000)
  are of that fixed binarisation, in nats per image and bits/dim of binary pixels; they
  are not comparable with numbers on dynamically binarised MNIST or on 8-bit MNIST.
Needs MNIST prepared as a tfds data set named by data.name; the config loads and
validates without it.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import vae


def get_config():
  config = base_config()
  config.method = "vae"
  config.update(vae.default_config())

  config.data.name = "mnist"
  config.data.image_size = 28
  config.data.channels = 1

  config.model.ch = 32
  config.model.ch_mult = (1, 2, 4)  # 28 -> 14 -> 7
  config.model.num_res_blocks = 2
  config.model.norm_groups = 8
  config.model.latent_type = "vector"
  config.model.latent_dim = 32

  config.likelihood.name = "bernoulli"
  config.kl.warmup_steps = 5000

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 500
  config.ema.decay = 0.999

  config.eval.iwae_samples = 1000
  config.eval.iwae_chunk_size = 100

  config.train.steps = 100_000
  config.train.batch_size = 128
  config.train.log_every = 100
  config.train.checkpoint_every = 5000
  config.train.sample_every = 10_000
  config.train.num_samples = 64
  return config
