r"""Class-conditional MeanFlow on the offline digits at 16x16 with guidance folded into training: the
meanflow_digits UNet with a class embedding learns the average velocity of the guided field
v_g = 2 v(z | c) - u(z, t, t | null) (omega = 2, the strength of flow_digits_cond's w = 1) where t <= 0.5
(sigma = t / (1 - t) <= 1, flow_digits_cond's interval), labels dropped to the null class 10% of the time;
one network pass per jump samples the guided model (sample.guidance stays 0).

Command:
  genimg train --config configs/meanflow_digits_cond.py --workdir runs/meanflow_digits_cond
  then `genimg eval --workdir runs/meanflow_digits_cond --metrics fid,acc --num_samples 1000` (1 NFE)
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: not measured yet (one more network pass per step than meanflow_digits, for u(z, t, t | null)).
Expected result: not measured yet. Goal: the digit classifier agrees with the requested class
  on >= 95% of 1-NFE samples.
"""

import os

from genimg_jax.config import load_file


def get_config():
  # meanflow_digits' data, UNet, optimizer and training, conditioned on the digit's class.
  config = load_file(os.path.join(os.path.dirname(__file__), "meanflow_digits.py"))
  config.model.num_classes = 10
  config.diffusion.label_dropout = 0.1
  config.diffusion.meanflow_guidance = 2.0  # omega
  config.diffusion.meanflow_guidance_kappa = 0.0
  config.diffusion.meanflow_guidance_interval = (0.0, 0.5)  # t
  config.sample.guidance = 0.0  # the guidance is in the learnt field
  config.train.num_samples = 100  # 10 x 10 grid: column j shows class j
  return config
