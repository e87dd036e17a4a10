r"""Shortcut model (Frans et al. 2024) on the offline digits at 16x16: the ddpm_digits UNet, conditioned on the
time t and the step size d, learns flow matching at d = 0 on 3/4 of each batch and self-consistency
(one step of 2d = two steps of d, d down to 1/128) on the other 1/4; sampled in ONE step (1 NFE).

Command:
  genimg train --config configs/shortcut_digits.py --workdir runs/shortcut_digits
  (4 steps: --config.sample.steps=4; the flow's Euler-128: --config.sample.steps=128)
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 7 min 31 s measured (1300 steps; a 2-core CPU with low-priority jobs beside it, load average 4.7-5.4,
  2026-12-07; 12 min 58 s on 2026-12-06 at load average 5-7).
Expected result: measured on that run (benchmarks/diffusion_quality.py, `genimg eval --metrics fid,is,pr
  --num_samples 1000`, classifier features, seed 0): FID 48.3 at 1 NFE, 27.8 at 2 NFE, 18.3 at 4 NFE (flow_digits'
  Euler-50: 10.0).
"""

import os

from genimg_jax.config import load_file


def get_config():
  # ddpm_digits' data, UNet, optimizer and training, as a shortcut model.
  config = load_file(os.path.join(os.path.dirname(__file__), "ddpm_digits.py"))
  config.diffusion.process = "shortcut"
  config.diffusion.time_schedule = "uniform"
  config.diffusion.shortcut_fraction = 0.25  # the paper's k = 1/4 self-consistency rows
  config.diffusion.shortcut_max_steps = 128  # M: step sizes 1, 1/2, ..., 1/128 (the finest is the flow, d = 0)
  config.diffusion.shortcut_clip = 4.0  # the official code's clip of the midpoint and the target
  config.sample.sampler = "shortcut"
  config.sample.steps = 1
  config.sample.preview_sampler = ""  # the grids every 500 steps are 1-step samples too (the same noise every time)
  config.train.steps = 1300
  return config
