r"""Class-conditional rectified flow on CIFAR-10 with classifier-free guidance: flow_cifar10 with a class
embedding, labels dropped to the null class 10% of the time, sampled by Heun-25 (50 NFE) with guidance
w = 0.5 (v_c + w (v_c - v_u), the DiT paper's scale 1.5).

Command:
  genimg train --config configs/flow_cifar10_cond.py --workdir runs/flow_cifar10_cond
Hardware: sized for 8 GPUs, as flow_cifar10.
Wall time: as flow_cifar10. Not run here.
Expected result: no published number for exactly this setup; compare with EDM's conditional 1.79
  (edm_cifar10_cond). Sweep `genimg eval --guidance W` over a few weights, as guided models are tuned.
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "flow_cifar10.py"))
  config.model.num_classes = 10
  config.diffusion.label_dropout = 0.1
  config.sample.guidance = 0.5
  return config
