r"""Consistency training from scratch (iCT, Song & Dhariwal 2023) on the offline digits at 16x16: the
ddpm_digits UNet as a consistency function f(x, sigma) with f(x, sigma_min) = x, trained on pairs of
adjacent noise levels with the pseudo-Huber distance, sampled in one network evaluation.

Command:
  genimg train --config configs/consistency_digits.py --workdir runs/consistency_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 7 min 3 s measured (1200 steps; a 2-core CPU with low-priority jobs beside it, load average 5-5.8,
  2026-12-07; 15 min 35 s on 2026-12-06 at load average 5-7).
Expected result: measured on that run (benchmarks/diffusion_quality.py, `genimg eval --metrics fid,is,pr
  --num_samples 1000`, classifier features, seed 0): FID 51.5 at 1 NFE, 40.8 at 2 NFE, 43.8 at 4 NFE
  (flow_digits' Euler-50: 10.0). Two steps (2 NFE):
  `genimg sample --workdir runs/consistency_digits --out g.png --sampler multistep --steps 2`.
Differences from iCT: a short curriculum (the number of levels doubles from ct_s0 + 1 = 11 to ct_s1 + 1 = 41
  over the run); ddpm_digits' Adam at lr 1e-3 and EMA 0.999, no dropout.
"""

import os

from genimg_jax.config import load_file


def get_config():
  # ddpm_digits' data, UNet, optimizer and batch, as a consistency model.
  config = load_file(os.path.join(os.path.dirname(__file__), "ddpm_digits.py"))
  config.diffusion.process = "consistency"  # EDM's sigma_data 0.5, sigma in [0.002, 80], rho 7
  config.diffusion.ct_s0, config.diffusion.ct_s1 = 10, 40  # a short run: at most 41 levels
  config.sample.sampler = "onestep"
  config.sample.steps = 1
  config.sample.preview_sampler = ""  # the grids every 500 steps are one-step samples too (the same noise every time)
  config.train.steps = 1200
  return config
