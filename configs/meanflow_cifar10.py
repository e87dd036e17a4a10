r"""MeanFlow on CIFAR-10, unconditional: the setup of py-meanflow (Gsunshine/py-meanflow, the authors'
PyTorch re-implementation of the paper's CIFAR-10 experiment; its README command, `--tr_sampler=v1`),
sampled in one jump (1 NFE).

Command:
  genimg train --config configs/meanflow_cifar10.py --workdir runs/meanflow_cifar10
Hardware: sized for 8 GPUs (py-meanflow: torchrun on 8 GPUs, 128 images each); batch 1024 over all devices.
Wall time: not measured here (CIFAR-10 needs downloading). 768k steps of 1024 = 786 Mimg; a user's estimate
  for py-meanflow is about 46.5 hours on 8 H100s (Gsunshine/py-meanflow issue #2). A step costs more than
  flow matching's (the jvp: a forward pass with its tangent, then the backward pass).
Expected result: the paper's FID 2.92 at 1 NFE (Geng et al. 2025, CIFAR-10 unconditional, U-Net, 50k
  samples); not yet reproduced by this codebase. Differences from py-meanflow that may cost FID: the
  network is this codebase's DDPM UNet at the same widths (py-meanflow: EDM's SongUNet, DDPM++-style with
  [1, 3, 3, 1] resampling; both embed the times (t, t - r) unscaled), and the data are flipped horizontally
  instead of EDM's augmentation pipeline (p = 0.12, augmentation labels as conditioning).
Model: UNet ch 128, ch_mult (2, 2, 2), 4 res blocks, attention at 16x16, dropout 0.2; (r, t): t ~
  logit-normal(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6), r = t for 25% of the images, then r = min(t, r);
  adaptive weight p = 0.75, c = 1e-3; Adam lr 6e-4 (betas 0.9/0.999, no weight decay) after 9,600 warm-up
  steps (200 epochs of 48), no gradient clipping; EMA 0.9999; 16,000 epochs of 48 steps.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "edm_cifar10.py"))  # data, UNet widths, logging
  config.diffusion.process = "meanflow"
  config.diffusion.meanflow_time_schedule = "logit_normal"
  config.diffusion.meanflow_t_mean, config.diffusion.meanflow_t_std = -0.6, 1.6
  config.diffusion.meanflow_r_mean, config.diffusion.meanflow_r_std = -4.0, 1.6
  config.diffusion.meanflow_time_pairs = "clip"  # py-meanflow's tr_sampler v1
  config.diffusion.meanflow_equal_fraction = 0.25  # py-meanflow's ratio 0.75 of r != t
  config.diffusion.meanflow_p, config.diffusion.meanflow_c = 0.75, 1e-3
  config.model.dropout = 0.2
  config.sample.sampler = "meanflow"
  config.sample.steps = 1  # 1 NFE
  config.optimizer.learning_rate = 6e-4
  config.optimizer.warmup_steps = 9_600
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip = 0.0
  config.ema.decay = 0.9999
  config.train.batch_size = 1024
  config.train.steps = 768_000
  return config
