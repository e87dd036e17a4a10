r"""DCGAN on the offline digits (scikit-learn's 8x8 digits upsampled to 16x16). The GAN demo.

Command:
  genimg train --config configs/dcgan_digits.py --workdir runs/dcgan_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: about 2-4 minutes on 2 cores (2 min 0 s measured on a 2-core CPU, 2026-11-23; 3000
  steps at 26-31 steps/s on one CPU device, see mesh.cpu_devices below).
Expected result: samples/step_0003000.png shows 64 varied, mostly recognisable digits. Frechet
  distance of the hidden features of a small MLP digit classifier (64 ReLU units, trained on the
  train split), 1000 EMA samples vs the 1497 training images: 548 at initialisation, 3.0 at step
  3000 (the 300 test images score 7.1 against the train split); the classifier puts at most 15%
  of the samples in one class. D(real) - D(fake) stays between 1.5 and 8 (logged every 100 steps).
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
  # On a CPU one device beats one per core here: batch norm reduces across devices at every layer,
  # which costs more than this small model's per-device work (batch 64 on 2 cores: 1780 vs 1600 img/s).
  config.mesh.cpu_devices = 1
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.train.num_samples = 64
  return config
