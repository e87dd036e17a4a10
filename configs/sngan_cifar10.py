r"""SNGAN (Miyato et al. 2018) on CIFAR-10: ResNet G/D, spectral norm in D, hinge loss.

The published setup: Adam lr 2e-4, betas (0, 0.9), n_dis = 5 discriminator updates of batch 64
per generator update (batch 64), 50k generator updates. Each step reads 5 x 64 = 320 real
images, one slice of 64 per discriminator update. The EMA generator (decay 0.9999) samples.

Command:
  genimg data prepare --config configs/sngan_cifar10.py     # once, downloads CIFAR-10
  genimg train --config configs/sngan_cifar10.py --workdir runs/sngan_cifar10
Hardware: sized for one GPU or TPU host.
Wall time: not measured on an accelerator. On a 2-core CPU one step of 5 discriminator updates
  of 32 takes about 24 s (benchmarks/run.py, benchmarks/README.md), so the full run is impractical there.
Expected result: the paper reports Inception score 8.22 and FID 21.7 (ResNet, hinge loss,
  Table 3); not reproduced here (CIFAR-10 could not be downloaded where this was written).
"""

from genimg_jax.config import base_config
from genimg_jax.methods import gan


def get_config():
  config = base_config()
  config.method = "gan"
  config.update(gan.default_config())

  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.train_split, config.data.eval_split = "train", "test"

  config.model.arch = "resnet"
  config.model.z_dim = 128
  config.model.g_ch = 256
  config.model.d_ch = 128
  config.model.g_norm = "batch"
  config.model.d_norm = "spectral"

  config.gan.loss = "hinge"
  config.gan.n_critic = 5
  for opt in (config.g_optimizer, config.d_optimizer):
    opt.learning_rate = 2e-4
    opt.b1, opt.b2 = 0.0, 0.9
  config.ema.decay = 0.9999

  config.train.steps = 50000
  config.train.batch_size = 5 * 64  # n_critic slices of 64
  config.train.log_every = 100
  config.train.checkpoint_every = 2500
  config.train.sample_every = 5000
  return config
