r"""EDM on CIFAR-10, unconditional: the setup of Karras et al. (2022), "Elucidating the Design Space of
Diffusion-Based Generative Models" (NVlabs/edm, `--arch=ddpmpp --precond=edm`).

Command:
  genimg train --config configs/edm_cifar10.py --workdir runs/edm_cifar10
Hardware: sized for 8 GPUs (the paper: 8 V100s, about 2 days); batch 512 over all devices.
Wall time: the paper's 200 Mimg (390,625 steps of 512) took about 2 days on 8 V100s; at bfloat16 on
  8 A100/H100-class GPUs expect a day or more. Not run here (CIFAR-10 needs downloading).
Expected result: the paper's FID 1.97 with 50k Heun-18 samples (35 NFE), best of three seeds; not
  yet reproduced by this codebase. Differences from NVlabs/edm that may cost FID: the network is
  this codebase's DDPM UNet at DDPM++'s widths (53.6M parameters against DDPM++'s 55.7M: no
  FIR resampling or skip rescaling), and the data are flipped horizontally instead of EDM's
  non-leaking augmentation (augment_p 0.12).
Model: UNet ch 128, ch_mult (2, 2, 2), 4 res blocks per level, self-attention at 16x16, dropout 0.13;
  EDM preconditioning (sigma_data 0.5), ln sigma ~ N(-1.2, 1.2^2); Adam lr 1e-3 (betas 0.9/0.999,
  eps 1e-8) ramped up over 10 Mimg, no gradient clipping; EMA half-life 0.5 Mimg (decay 0.99929 per
  step of 512).
"""

from genimg_jax.config import base_config
from genimg_jax.methods import diffusion


def get_config():
  config = base_config()
  config.method = "diffusion"
  config.update(diffusion.default_config())

  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.train_split, config.data.eval_split = "train", "test"
  config.data.random_flip = True

  config.model.ch = 128
  config.model.ch_mult = (2, 2, 2)
  config.model.num_res_blocks = 4
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.13

  config.diffusion.process = "edm"  # sigma_data 0.5, P_mean -1.2, P_std 1.2, sigma in [0.002, 80], rho 7
  config.sample.sampler = "heun"
  config.sample.steps = 18  # 35 NFE
  config.sample.preview_sampler = ""

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 19_531  # 10 Mimg / 512
  config.optimizer.grad_clip = 0.0
  config.ema.decay = 0.5 ** (512 / 500_000)  # half-life 0.5 Mimg

  config.train.steps = 390_625  # 200 Mimg
  config.train.batch_size = 512
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 50_000
  config.train.num_samples = 64
  return config
