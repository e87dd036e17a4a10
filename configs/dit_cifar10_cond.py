r"""Class-conditional DiT-S/2 on CIFAR-10 with classifier-free guidance: dit_cifar10 with the class
embedding of DiT (labels dropped to the null class 10% of the time), guidance w = 0.5 (DiT's cfg
scale 1.5: eps_u + 1.5 (eps_c - eps_u) = eps_c + 0.5 (eps_c - eps_u)).

Command:
  genimg train --config configs/dit_cifar10_cond.py --workdir runs/dit_cifar10_cond
Hardware: sized for 8 GPUs, as dit_cifar10.
Wall time: as dit_cifar10. Not run here.
Expected result: no published CIFAR-10 number; DiT-XL/2's class-conditional ImageNet-256 FID is 2.27
  at cfg 1.5. Sweep `genimg eval --guidance W`.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "dit_cifar10.py"))
  config.model.num_classes = 10
  config.diffusion.label_dropout = 0.1
  config.sample.guidance = 0.5
  return config
