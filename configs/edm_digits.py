r"""EDM (Karras et al. 2022) on the offline digits at 16x16: the ddpm_digits UNet, preconditioned,
trained at log-normal noise levels with the lambda weighting, sampled by Heun over 18 levels (35
network evaluations).

Command:
  genimg train --config configs/edm_digits.py --workdir runs/edm_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: WALL
Expected result: RESULT
"""

from genimg_jax.config import base_config
from genimg_jax.methods import diffusion


def get_config():
  config = base_config()
  config.method = "diffusion"
  config.update(diffusion.default_config())
  config.diffusion.process = "edm"  # sigma_data 0.5, P_mean -1.2, P_std 1.2, sigma in [0.002, 80], rho 7

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

  config.train.steps = 1500
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.train.sample_every = 500  # the same noise every time
  config.sample.sampler = "heun"
  config.sample.steps = 18  # 2 * 18 - 1 = 35 network evaluations
  config.train.num_samples = 64
  return config
