r"""Latent diffusion on the offline digits: a rectified flow on the 4x4x4 latents of configs/autoencoder_digits.py
(16x16x1 images, f = 4), sampled by 50 Euler steps and decoded (Rombach et al. 2022's recipe at CPU scale).

Command: train the autoencoder first, then this (`genimg sample` and `genimg eval` decode to pixels):
  genimg train --config configs/autoencoder_digits.py --workdir runs/autoencoder_digits
  genimg train --config configs/latent_flow_digits.py --workdir runs/latent_flow_digits \
    --config.autoencoder.workdir=runs/autoencoder_digits
  genimg eval --workdir runs/latent_flow_digits --metrics fid --num_samples 1000
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: about 4 minutes, estimated from the step time (not run to the end): the first start encodes the
  1497 training images once (seconds), then 1500 steps at batch 64 of 4x4x4 latents at 8.7 steps/s (steps 20
  to 60 of a 60-step run on a 2-core CPU shared with other jobs), and Euler-50 grids at steps 500, 1000, 1500.
Expected result: not measured (not run to the end). That 60-step run used the latents of a 2-step autoencoder
  run (for the timing only); its flow-matching loss fell from 1.99 (mean of steps 1-20) to 1.76 (steps 41-60).
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "flow_digits.py"))
  # The autoencoder run, given on the command line (--config.autoencoder.workdir=DIR): genimg train refuses to
  # start without it. Until it is set the config builds as pixel diffusion (config show, shape checks).
  config.autoencoder.workdir = ""
  config.autoencoder.required = True
  config.autoencoder.checkpoint = "latest"

  # A small UNet for 4x4 latents: two levels (4x4, 2x2), attention at 2x2.
  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (2,)
  config.model.norm_groups = 8
  config.model.dropout = 0.0

  config.sample.clip_x0 = False  # latents are not bounded to [-1, 1] (ddpm only; kept off for a switch of process)
  config.train.steps = 4000
  config.train.batch_size = 64
  config.train.sample_every = 2000
  return config
