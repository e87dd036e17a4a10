r"""DDPM on CIFAR-10: the published setup of Ho et al. (2020), "Denoising Diffusion Probabilistic Models".

Command:
  genimg train --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10
Hardware: sized for 8 accelerators (the paper used a TPU v3-8); batch 128 over all devices.
Wall time: the paper reports about 10.6 hours per 100k steps on a TPU v3-8; 800k steps in all.
Expected result: FID 3.17 and Inception Score 9.46 with 50k DDPM samples (the paper's
  Table 1, L_simple); not yet reproduced by this codebase.
Model: 35.7M-parameter UNet, ch 128, ch_mult (1, 2, 2, 2), 2 res blocks per level,
  self-attention at 16x16, dropout 0.1; linear betas 1e-4..0.02 over T=1000;
  Adam 2e-4 with 5000 warm-up steps, gradients clipped at norm 1, EMA 0.9999.
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
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1

  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 5000
  config.optimizer.grad_clip = 1.0
  config.ema.decay = 0.9999

  config.train.steps = 800_000
  config.train.batch_size = 128
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 50_000
  config.train.num_samples = 64
  return config
