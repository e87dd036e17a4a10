r"""DDPM on the offline digits (scikit-learn's 8x8 digits upsampled to 16x16). The main demo.

Command:
  genimg train --config configs/ddpm_digits.py --workdir runs/ddpm_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: about 12 minutes on 2 cores (11 min 48 s measured on a 2-core CPU from a clean clone,
  2026-12-01: 2000 steps at 3.3-3.8 steps/s on two CPU devices, DDIM-50 preview grids at steps 500,
  1000 and 1500, and the final 1000-step DDPM grid, about a minute).
Expected result: samples/step_0002000.png shows 64 recognisable digits (the previews at steps 500
  to 1500 show the same noise becoming digits); the logged loss (metrics.jsonl) is 0.52 at step 100
  and 0.026 at step 2000 (same run).
"""

from genimg_jax.config import base_config
from genimg_jax.methods import diffusion


def get_config():
  config = base_config()
  config.method = "diffusion"
  config.update(diffusion.default_config())

  config.data.name = "digits"
  config.data.image_size = 16
  config.data.channels = 1
  config.data.train_split, config.data.eval_split = "train", "test"

  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.norm_groups = 8

  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 200
  config.ema.decay = 0.999

  config.train.steps = 2000
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.sample_every = 500  # a DDIM-50 preview grid (same noise every time); DDPM-1000 at the end
  config.sample.preview_sampler = "ddim"
  config.sample.preview_steps = 50
  config.train.num_samples = 64
  return config
