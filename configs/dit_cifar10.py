r"""DiT-S/2 on CIFAR-10, unconditional, trained as a rectified flow (SiT-S/2 at 32x32: Ma et al. 2024,
"SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant Transformers").

Command:
  genimg train --config configs/dit_cifar10.py --workdir runs/dit_cifar10
Hardware: sized for 8 GPUs; batch 256 over all devices.
Wall time: 256 tokens of width 384 through 12 blocks per image; expect about a day for 400k steps on
  8 A100/H100-class GPUs at bfloat16. Not run here (CIFAR-10 needs downloading).
Expected result: no published CIFAR-10 number for DiT-S/2; DiT-XL/2 reaches ImageNet-256 FID 2.27 (cfg
  1.5) and SiT-XL/2 2.06. A DiT on raw 32x32 pixels with patch 2 is expected to trail the UNet of
  flow_cifar10 at equal compute; this config is the backbone comparison.
Model: DiT-S/2: patch 2, hidden 384, depth 12, 6 heads, MLP ratio 4, adaLN-Zero (32.5M parameters);
  AdamW 1e-4 without weight decay, no warm-up, gradients clipped at norm 1, EMA 0.9999 (DiT's
  recipe); Heun 25 steps (50 NFE) on the flow ODE.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "flow_cifar10.py"))
  config.model.arch = "dit"
  config.model.patch_size = 2
  config.model.hidden_size = 384
  config.model.depth = 12
  config.model.num_heads = 6
  config.model.mlp_ratio = 4.0
  config.model.dropout = 0.0
  config.optimizer.warmup_steps = 0
  config.train.batch_size = 256
  return config
