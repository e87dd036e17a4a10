r"""Autoregressive Transformer (ImageGPT-style) on the offline digits at 16x16x1: the CPU demo.

Command:
  genimg train --config configs/igpt_digits.py --workdir runs/igpt_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: TBD
Expected result: TBD
Model: TBD
"""

from genimg_jax.config import base_config
from genimg_jax.methods import autoregressive


def get_config():
  config = base_config()
  config.method = "autoregressive"
  config.update(autoregressive.default_config())

  config.data.name = "digits"
  config.data.image_size = 16
  config.data.channels = 1

  config.model.num_layers = 4
  config.model.width = 64
  config.model.num_heads = 4
  config.model.dropout = 0.0
  config.model.position_embedding = "factorized"

  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 100
  config.ema.decay = 0.999

  config.train.steps = 600
  config.train.batch_size = 32
  config.train.log_every = 50
  config.train.checkpoint_every = 200
  config.train.num_samples = 64
  return config
