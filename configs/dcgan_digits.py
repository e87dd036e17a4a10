r"""DCGAN on the offline digits (scikit-learn's 8x8 digits upsampled to 16x16). The GAN demo.

Command:
  genimg train --config configs/dcgan_digits.py --workdir runs/dcgan_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: TBD
Expected result: TBD
"""

from genimg_jax.config import base_config
from genimg_jax.methods import gan


def get_config():
  config = base_config()
  config.method = "gan"
  config.update(gan.default_config())

  config.data.name = "digits"
  config.data.image_size = 16
  config.data.channels = 1
  config.data.train_split, config.data.eval_split = "train", "test"

  config.model.arch = "dcgan"
  config.model.z_dim = 64
  config.model.g_ch = 64
  config.model.d_ch = 64
  config.model.ch_mult = (1, 2)  # 4x4 -> 8x8 -> 16x16
  config.model.g_norm = "batch"
  config.model.d_norm = "batch"

  config.gan.loss = "non_saturating"
  config.gan.n_critic = 1
  config.g_optimizer.learning_rate = 2e-4
  config.d_optimizer.learning_rate = 2e-4
  config.ema.decay = 0.999

  config.train.steps = 3000
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.train.num_samples = 64
  return config
