r"""Latent diffusion on the offline digits: a rectified flow on the 4x4x4 latents of configs/autoencoder_digits.py
(16x16x1 images, f = 4), sampled by 50 Euler steps and decoded (Rombach et al. 2022's recipe at CPU scale).

Command: train the autoencoder first, then this (`genimg sample` and `genimg eval` decode to pixels):
  genimg train --config configs/autoencoder_digits.py --workdir runs/autoencoder_digits
  genimg train --config configs/latent_flow_digits.py --workdir runs/latent_flow_digits \
    --config.autoencoder.workdir=runs/autoencoder_digits
  genimg eval --workdir runs/latent_flow_digits --metrics fid --num_samples 1000
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 6 min 52 s measured (the first start encodes the 1497 training images in seconds, then 4000 steps
  at batch 64 at 10.4-10.9 steps/s, Euler-50 grids at steps 2000 and 4000; 2-core CPU running light tests
  beside it, load average 3, 2026-12-07). With the autoencoder's 2 min 46 s: 9 min 38 s, against 8 min 23 s
  for configs/flow_digits.py on pixels.
Expected result: measured on that run (`genimg eval --metrics fid,is,pr --num_samples 1000 --feature_net
  classifier --seed 0`, Euler-50, EMA parameters): FID 8.95 (pixel flow_digits: 10.0), IS 9.02, precision
  0.79, recall 0.90; the flow-matching loss on the normalised latents 1.76 at step 100, 0.63 at step 4000;
  samples/step_0004000.png shows 64 recognisable digits. The table at 10000 samples:
  benchmarks/results/diffusion_quality_latent.md.
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
