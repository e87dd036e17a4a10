r"""Class-conditional rectified flow on the offline digits at 16x16 with classifier-free guidance: the
flow_digits UNet with a class embedding, labels dropped to the null class 10% of the time while
training, sampled by 50 Euler steps of the guided velocity v_c + w (v_c - v_u), w = 1.

Command:
  genimg train --config configs/flow_digits_cond.py --workdir runs/flow_digits_cond
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: MEASURE
Expected result: MEASURE
"""

import os

from genimg_jax.config import load_file


def get_config():
  # flow_digits' data, UNet, optimizer and training, conditioned on the digit's class.
  config = load_file(os.path.join(os.path.dirname(__file__), "flow_digits.py"))
  config.model.num_classes = 10
  config.diffusion.label_dropout = 0.1
  config.sample.guidance = 1.0
  config.train.num_samples = 100  # 10 x 10 grid: column j shows class j
  return config
