r"""A KL-regularised autoencoder (LDM's first stage) on the offline digits: 16x16x1 images to 4x4x4 latents
(f = 4). The CPU demo of the autoencoder family.

Command:
  genimg train --config configs/autoencoder_digits.py --workdir runs/autoencoder_digits
  genimg eval --workdir runs/autoencoder_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: about 4 minutes, estimated from the step time (5.2 steps/s at batch 32 on a 2-core CPU shared
  with other jobs, 2026-12-06; 2.2 steps/s, so 9 minutes, when that CPU was busier); not yet run to the end.
Expected result: not yet measured to the end. In a 50-step run (same machine) the training loss
  (L1 + 1 - SSIM per pixel, means over 10 steps) fell from 1.60 at step 10 to 0.79 at step 50 and the
  training PSNR rose from 8.3 to 15.4 dB. `genimg eval` reports the held-out PSNR, SSIM, L1 and KL, the
  rFID of the test split's reconstructions (classifier features) and the latents' per-channel mean and
  std. The autoencoder is not a generator: samples/step_*.png shows decoded N(0, I) latents, a sanity
  picture only; samples/reconstructions_*.png is what to look at.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import autoencoder


def get_config():
  config = base_config()
  config.method = "autoencoder"
  config.update(autoencoder.default_config())

  config.data.name = "digits"
  config.data.image_size = 16
  config.data.channels = 1

  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)  # f = 4: 4x4 latents
  config.model.num_res_blocks = 1
  config.model.norm_groups = 8
  config.model.z_channels = 4

  config.autoencoder.kl_weight = 1e-6  # LDM's
  config.autoencoder.disc_weight = 0.0  # no discriminator: the pixel losses suffice at 16x16

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 100
  config.ema.decay = 0.999

  config.train.steps = 1200
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.checkpoint_every = 400
  config.train.sample_every = 400
  config.train.num_samples = 64
  config.eval.batch_size = 64
  return config
