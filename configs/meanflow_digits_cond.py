r"""Class-conditional MeanFlow on the offline digits at 16x16 with guidance folded into training: the
meanflow_digits UNet with a class embedding learns the average velocity of the guided field
v_g = 2 v(z | c) - u(z, t, t | null) (omega = 2, the strength of flow_digits_cond's w = 1) where t <= 0.5
(sigma = t / (1 - t) <= 1, flow_digits_cond's interval), labels dropped to the null class 10% of the time;
one network pass per jump samples the guided model (sample.guidance stays 0).

Command:
  genimg train --config configs/meanflow_digits_cond.py --workdir runs/meanflow_digits_cond
  then `genimg eval --workdir runs/meanflow_digits_cond --metrics fid,acc --num_samples 1000` (1 NFE)
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 8 min 34 s measured (1200 steps; a 2-core CPU with low-priority jobs beside it, load average 4-5.6,
  2026-12-07; 25 min 19 s on 2026-12-06 at load average 5-9). One more network pass per step than
  meanflow_digits (u(z, t, t | null), in eval mode).
Expected result: measured on that run (`genimg eval --metrics fid,acc,pr --num_samples 1000`, classifier
  features, seed 0, 1 NFE): the digit classifier agrees with the requested class on 98.2% of the samples
  (goal: >= 95%); FID 14.7, precision 0.78, recall 0.81 (the same numbers, to every digit, as the run of
  2026-12-06: the seed fixes the result).
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
