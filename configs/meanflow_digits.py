r"""MeanFlow (Geng et al. 2025) on the offline digits at 16x16: flow_digits' UNet with a second time input
learns the average velocity u(z, r, t) of the same linear path x_t = (1 - t) x0 + t eps, with py-meanflow's
CIFAR-10 recipe (t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4.0, 1.6), r = t for 25% of the images,
adaptive loss weight 1 / (||delta||^2 + 1e-3)^0.75), sampled in one jump z_0 = z_1 - u(z_1, 0, 1) (1 NFE).

Command:
  genimg train --config configs/meanflow_digits.py --workdir runs/meanflow_digits
  (2 NFE: add --config.sample.steps=2; `genimg eval ... --metrics fid` reports the FID at the config's NFE)
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: not measured yet. Estimated about 8 minutes on 2 cores: a train step measured 1.3x flow_digits'
  (the jvp; 2026-12-06, jitted step alone, a shared 2-core CPU), 1200 steps against flow_digits' 1500 in 8 min
  23 s, and 1-NFE grids at steps 500, 1000 and 1200 in place of Euler-50 ones.
Expected result: not measured yet.
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
