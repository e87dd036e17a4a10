r"""Rectified flow / conditional flow matching on CIFAR-10, unconditional, sized like
facebookresearch/flow_matching's CIFAR-10 example: x_t = (1 - t) x0 + t eps, the velocity target,
logit-normal training times, Heun on the ODE.

Command:
  genimg train --config configs/flow_cifar10.py --workdir runs/flow_cifar10
Hardware: sized for 8 GPUs; batch 512 over all devices.
Wall time: like edm_cifar10 per step (the same UNet); 400k steps of 512 = 200 Mimg, about 2 days on
  8 V100-class GPUs. Not run here (CIFAR-10 needs downloading).
Expected result: flow_matching's reported CIFAR-10 FID 2.07 at 50 NFE is the reference; not yet
  reproduced by this codebase. The UNet is edm_cifar10's (53.6M parameters), the optimizer
  flow_matching's Adam at 1e-4; their time skew is replaced by the logit-normal schedule of
  Esser et al. (2024).
Model: UNet ch 128, ch_mult (2, 2, 2), 4 res blocks, attention at 16x16, dropout 0.1; Adam 1e-4 with
  5000 warm-up steps, gradients clipped at norm 1, EMA 0.9999; Heun 25 steps (50 NFE).
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "edm_cifar10.py"))
  config.diffusion.process = "flow"
  config.diffusion.time_schedule = "logit_normal"
  config.model.dropout = 0.1
  config.sample.sampler = "heun"
  config.sample.steps = 25  # 50 NFE
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 5000
  config.optimizer.grad_clip = 1.0
  config.ema.decay = 0.9999
  config.train.steps = 400_000
  return config
