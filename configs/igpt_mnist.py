r"""Autoregressive Transformer (ImageGPT-style) on MNIST, 28x28x1: 784 tokens.

Command:
  genimg train --config configs/igpt_mnist.py --workdir runs/igpt_mnist
Hardware: sized for one GPU (bfloat16 compute); batch 64.
Wall time: not measured yet.
Expected result: not measured yet by this codebase. The `mnist` catalog entry downloads the
  data set once (`genimg data prepare --config configs/igpt_mnist.py`); until it is prepared,
  `train` stops with an error naming config.data.name and how to prepare it.
Model: 6.5M parameters: 8 layers, width 256, 8 heads, MLP 1024, factorized position embeddings,
  dropout 0.1; Adam 3e-4 with 2000 warm-up steps, EMA 0.999.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import autoregressive


def get_config():
  config = base_config()
  config.method = "autoregressive"
  config.update(autoregressive.default_config())

  config.data.name = "mnist"
  config.data.image_size = 28
  config.data.channels = 1

  config.model.num_layers = 8
  config.model.width = 256
  config.model.num_heads = 8
  config.model.dropout = 0.1
  config.model.dtype = "bfloat16"

  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 2000
  config.ema.decay = 0.999

  config.train.steps = 100_000
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 5000
  config.train.sample_every = 20_000
  config.train.num_samples = 64
  return config
