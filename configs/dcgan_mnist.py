r"""DCGAN (Radford et al. 2015) on MNIST, 28x28: 7x7 -> 14x14 -> 28x28.

Command:
  genimg data prepare --config configs/dcgan_mnist.py     # once, downloads MNIST
  genimg train --config configs/dcgan_mnist.py --workdir runs/dcgan_mnist
Hardware: sized for one GPU; runs on a CPU too.
Wall time: about 1.5 hours on a 2-core CPU (0.46 s per step at batch 128, measured with synthetic
  batches by benchmarks/run.py, 2026-11-23); not measured on a GPU.
Expected result: recognisable digits in samples/step_0012000.png. Not measured: MNIST could not be
  downloaded where this config was written; the same model family reaches clear digits on the
  offline digits data set (configs/dcgan_digits.py).
"""

from genimg_jax.config import base_config
from genimg_jax.methods import gan


def get_config():
  config = base_config()
  config.method = "gan"
  config.update(gan.default_config())

  config.data.name = "mnist"
  config.data.image_size = 28
  config.data.channels = 1
  config.data.train_split, config.data.eval_split = "train", "test"

  config.model.arch = "dcgan"
  config.model.z_dim = 100
  config.model.g_ch = 64
  config.model.d_ch = 64
  config.model.ch_mult = (1, 2)
  config.model.g_norm = "batch"
  config.model.d_norm = "batch"

  config.gan.loss = "non_saturating"
  config.g_optimizer.learning_rate = 2e-4  # Adam 2e-4, beta1 0.5, as in the paper
  config.d_optimizer.learning_rate = 2e-4
  config.ema.decay = 0.999

  config.train.steps = 12000  # 25 epochs of 60k images
  config.train.batch_size = 128
  config.train.log_every = 200
  config.train.checkpoint_every = 2000
  config.train.sample_every = 3000
  return config
