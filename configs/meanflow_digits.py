r"""MeanFlow (Geng et al. 2025) on the offline digits at 16x16: flow_digits' UNet with a second time input
learns the average velocity u(z, r, t) of the same linear path x_t = (1 - t) x0 + t eps, with py-meanflow's
CIFAR-10 recipe (t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6), r = t for 25% of the images,
adaptive loss weight 1 / (||delta||^2 + 1e-3)^0.75), sampled in one jump z_0 = z_1 - u(z_1, 0, 1) (1 NFE).

Command:
  genimg train --config configs/meanflow_digits.py --workdir runs/meanflow_digits
  (2 NFE: add --config.sample.steps=2; `genimg eval ... --metrics fid` reports the FID at the config's NFE)
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 7 min 16 s measured on a clean clone, 2-core CPU, nothing else running (2026-12-06; the step's
  computation is the same since the times were unscaled).
Expected result: measured on a run of this config (benchmarks/diffusion_quality.py, `genimg eval --metrics fid,is,pr
  --num_samples 1000`, classifier features, seed 0): FID 25.9 at 1 NFE, 25.1 at 2 NFE, 19.0 at 4 NFE
  (precision 0.47-0.52, recall 0.95-0.96); flow_digits' Euler-50 in the same benchmark: FID 10.0. The grids
  show digits from the first 500 steps. The network's times enter unscaled, (t, t - r): at flow's 999 t
  the target's d/dt u grew without bound (FID 665).
"""

import os

from genimg_jax.config import load_file


def get_config():
  # flow_digits' data, UNet, optimizer and training, learning the average velocity.
  config = load_file(os.path.join(os.path.dirname(__file__), "flow_digits.py"))
  config.diffusion.process = "meanflow"  # the (r, t) sampler, p and c: py-meanflow's CIFAR-10 defaults
  config.sample.sampler = "meanflow"
  config.sample.steps = 1  # 1 NFE; the grids every 500 steps too (the same noise every time)
  config.train.steps = 1200  # about flow_digits' wall time
  return config
