r"""A small ImageGPT-like Transformer on CIFAR-10: 32x32x3 = 3072 tokens of 8-bit sub-pixels.

Command:
  genimg train --config configs/igpt_cifar10.py --workdir runs/igpt_cifar10
Hardware: sized for 8 GPUs (bfloat16 compute, cuDNN fused attention); batch 64 over all devices.
Wall time: not measured yet.
Expected result: not measured yet by this codebase. For scale: Sparse Transformer
  (Child et al. 2019) reaches 2.80 bits/dim on CIFAR-10 with 59M parameters and
  a 3072-token context; Image Transformer 2.90; PixelCNN++ 2.92.
Model: 25.5M parameters: 8 layers, width 512, 8 heads (head size 64), MLP 2048,
  pre-LayerNorm, factorized (row + column + channel) position embeddings,
  context 3072 (raw pixels, no colour clustering as in ImageGPT), dropout 0.1,
  unconditional; AdamW 3e-4 with 5000 warm-up steps, weight decay 0.01, gradients
  clipped at norm 1, EMA 0.9999.
"""

from genimg_jax.config import base_config
from genimg_jax.methods import autoregressive


def get_config():
  config = base_config()
  config.method = "autoregressive"
  config.update(autoregressive.default_config())

  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True

  config.model.num_layers = 8
  config.model.width = 512
  config.model.num_heads = 8
  config.model.dropout = 0.1
  config.model.dtype = "bfloat16"

  config.optimizer.learning_rate = 3e-4
  config.optimizer.warmup_steps = 5000
  config.optimizer.weight_decay = 0.01
  config.optimizer.grad_clip = 1.0
  config.ema.decay = 0.9999

  config.train.steps = 500_000
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.checkpoint_every = 10_000
  config.train.sample_every = 50_000
  config.train.num_samples = 16
  return config
