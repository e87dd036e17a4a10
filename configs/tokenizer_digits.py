r"""A discrete tokenizer on the offline digits: the autoencoder of configs/autoencoder_digits.py with an FSQ
bottleneck, 16x16x1 images to 4x4 grids of tokens from a 1000-code implicit codebook (levels 8, 5, 5, 5,
Mentzer et al. 2023). The first stage of configs/maskgit_digits.py.

Command:
  genimg train --config configs/tokenizer_digits.py --workdir runs/tokenizer_digits
  genimg eval --workdir runs/tokenizer_digits
Hardware: sized for a 2-core CPU (no accelerator).
Wall time: 2 min 44 s measured (1200 steps at batch 32, 8.7 steps/s between the grids, on a 2-core CPU running
  light work beside it, load average 2.5-2.8, 2026-12-07).
Expected result: measured on that run (`genimg eval --metrics rfid,bpd`, EMA parameters, seed 0): on the
  300-image test split rFID 4.93 (classifier features; autoencoder_digits' continuous latents: 1.44), PSNR
  27.1 dB, SSIM 0.928, L1 0.059; its 4608 tokens use 25% of the 1000 codes, perplexity 199. Training PSNR
  13.6 dB at step 50, 26.3 dB at 1200.
  `genimg eval` reports the held-out PSNR, SSIM and L1, the codebook usage and perplexity of the test split's
  tokens, and the rFID of its reconstructions (classifier features). samples/step_*.png decodes uniformly
  drawn tokens (a sanity picture); samples/reconstructions_*.png is what to look at. Use
  --config.autoencoder.quantizer=vq for the l2-normalised VQ variant (autoencoder.codebook_size codes of
  model.z_channels dimensions).
"""

import os

from genimg_jax.config import load_file


def get_config():
  config = load_file(os.path.join(os.path.dirname(__file__), "autoencoder_digits.py"))
  config.autoencoder.quantizer = "fsq"
  config.autoencoder.levels = (8, 5, 5, 5)  # 1000 tokens; the encoder outputs 4 channels
  config.autoencoder.codebook_size = 256  # vq only
  config.autoencoder.kl_weight = 0.0  # no KL term in a discrete autoencoder
  return config
