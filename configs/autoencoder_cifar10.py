r"""LDM's KL-f8 autoencoder (Rombach et al. 2022, configs/autoencoder/autoencoder_kl_32x32x4.yaml) on
CIFAR-10: 32x32x3 images to 4x4x4 latents.

Command:
  genimg train --config configs/autoencoder_cifar10.py --workdir runs/autoencoder_cifar10
  genimg eval --workdir runs/autoencoder_cifar10 --metrics rfid,bpd --feature_net inception
Hardware: sized for one to eight accelerators (batch 64 over all devices); 84M parameters
  (encoder and decoder, ch 128, ch_mult (1, 2, 4, 4), 2 residual blocks per level) plus a 0.14M-parameter
  PatchGAN from step 50001. LDM trained its KL-f8 for 246803 steps at 256x256 on ImageNet; at 32x32 a
  step costs 64x fewer pixels.
Wall time: not yet measured.
Expected result: not yet measured by this codebase. Published: LDM's KL-f8 reconstructs ImageNet
  validation images (256x256) at rFID 0.90 and PSNR 24.19 (the latent-diffusion model zoo table;
  the paper's Table 8 gives rFID 0.87). Those numbers come with LPIPS in the loss; here 1 - SSIM
  stands in for it, and at 32x32 an f8 autoencoder keeps far less (4x4x4 latents for 3072 values),
  so expect a much higher rFID on CIFAR-10.
Setup as LDM's: KL weight 1e-6, discriminator weight 0.5 with the adaptive weight, hinge loss,
  discriminator from step 50001, Adam (0.5, 0.9) at 4.5e-6 x batch size, no EMA in LDM (EMA 0.9999
  here, as the rest of the codebase evaluates EMA parameters). PatchGAN with 2 stride-2 layers
  (3 in LDM, for 256x256 images).
Needs CIFAR-10 prepared by tfds (`data.name=cifar10`); the config loads and validates without it.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import autoencoder


def get_config():
  config = base_config()
  config.method = "autoencoder"
  config.update(autoencoder.default_config())

  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True

  config.model.ch = 128
  config.model.ch_mult = (1, 2, 4, 4)  # f = 8: 32 -> 4
  config.model.num_res_blocks = 2
  config.model.norm_groups = 32
  config.model.z_channels = 4
  config.model.mid_attention = True
  config.model.dtype = "bfloat16"

  config.autoencoder.kl_weight = 1e-6
  config.autoencoder.ssim_weight = 1.0
  config.autoencoder.disc_weight = 0.5
  config.autoencoder.disc_start = 50001
  config.autoencoder.disc_loss = "hinge"
  config.autoencoder.disc_ch = 64
  config.autoencoder.disc_layers = 2

  batch_size = 64
  for optimizer in (config.optimizer, config.d_optimizer):
    optimizer.learning_rate = 4.5e-6 * batch_size  # LDM scales its base rate by the batch size
    optimizer.b1, optimizer.b2 = 0.5, 0.9
  config.ema.decay = 0.9999

  config.eval.metrics = "rfid,bpd"
  config.eval.batch_size = 500

  config.train.steps = 150000
  config.train.batch_size = batch_size
  config.train.log_every = 500
  config.train.checkpoint_every = 5000
  config.train.sample_every = 5000
  config.train.num_samples = 64
  return config
