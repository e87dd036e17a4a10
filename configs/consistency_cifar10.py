r"""Consistency training from scratch on CIFAR-10, unconditional: the setup of improved consistency training
(iCT; Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", ICLR 2024).

Command:
  genimg train --config configs/consistency_cifar10.py --workdir runs/consistency_cifar10
Hardware: sized for 8 GPUs; batch 1024 over all devices (the paper: a cluster of A100s, time not stated).
Wall time: 400,000 steps of 1024 images (410 Mimg, twice EDM's 200 Mimg); a step is about 4/3 of a
  diffusion step (the student's forward and backward pass and the teacher's forward pass), so about 2.7x
  EDM's compute: scaling EDM's 2 days on 8 V100s for 200 Mimg, about 5-6 days on 8 V100s, roughly 2-3 days
  on 8 A100/H100-class GPUs (an estimate, not measured). Not run here (CIFAR-10 needs downloading).
Expected result: the paper's FID 2.83 at 1 NFE and 2.46 at 2 NFE (iCT, 50k samples, NCSN++ 56M parameters;
  iCT-deep, twice the depth: 2.51 and 2.24); not yet reproduced by this codebase. Two-step samples:
  `--config.sample.sampler=multistep --config.sample.steps=2` (the intermediate level sigma = 0.821 is set).
  Differences from iCT that may cost FID: the network is this codebase's DDPM UNet at NCSN++'s widths
  (53.6M parameters: no FIR resampling, skip rescaling or Fourier noise embedding; the noise label is
  ln(sigma) / 4 through the sinusoidal embedding); Adam instead of RAdam. The curriculum is iCT's: N - 1
  doubles from 10 to 1280, every 50,000 steps.
Model: UNet ch 128, ch_mult (2, 2, 2), 4 res blocks per level, self-attention at 16x16, dropout 0.3; iCT's
  parameterisation (sigma_data 0.5, sigma in [0.002, 80], rho 7), levels drawn from the discretised
  lognormal (P_mean -1.1, P_std 2.0), weight 1 / (sigma_{i+1} - sigma_i), pseudo-Huber c = 0.00054 sqrt(3072)
  = 0.03, the teacher the stop-gradient of the student (no EMA); lr 1e-4, betas 0.9/0.999, ramped up over
  10 Mimg as OpenAI's consistency-training configs do, no gradient clipping; EMA 0.99993 for sampling.
"""

import os

from genimg_jax.config import load_file


def get_config():
  # edm_cifar10's data, UNet widths (DDPM++'s, as NCSN++'s), logging and checkpoints, as iCT trains.
  config = load_file(os.path.join(os.path.dirname(__file__), "edm_cifar10.py"))
  config.model.dropout = 0.3

  config.diffusion.process = "consistency"  # sigma_data 0.5, sigma in [0.002, 80], rho 7
  config.diffusion.ct_s0, config.diffusion.ct_s1 = 10, 1280
  config.diffusion.ct_p_mean, config.diffusion.ct_p_std = -1.1, 2.0
  config.diffusion.ct_huber_scale = 0.00054
  config.diffusion.ct_sample_sigmas = (0.821,)  # iCT's two-step sampling
  config.sample.sampler = "onestep"
  config.sample.steps = 2  # multistep: sigma_max, then 0.821

  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.warmup_steps = 9_766  # 10 Mimg / 1024
  config.ema.decay = 0.99993

  config.train.steps = 400_000
  config.train.batch_size = 1024
  return config
